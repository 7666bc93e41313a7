"""Count a model's work per unit by tracing it at the dispatch level.

Every aten op a forward pass runs is seen by a ``TorchDispatchMode`` (so functional calls count as well as
modules) and charged to the innermost module running at the time, the *unit*. Per op we record dense
multiply-accumulates, weight and activation density, the weight sparsity pattern, precisions, bytes moved
and synaptic events. MAC formulas come from ``torch.utils.flop_counter`` where torch has one.

Counts are per inference: with a batch of example inputs, each input is traced on its own (batch 1), so a
model whose path depends on its input gets one count per input (``count_each`` takes whole batches as given).

Models on the meta device are counted from shapes alone: every density is then 1 (dense assumed), and
attention is charged as one fused kernel whichever kernel torch would pick. A KV cache that calls
``kv_cache_update`` has its reads and writes counted as KV-cache bytes, apart from activations.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field, fields
from typing import Any

import torch
from torch import nn
from torch.nn.utils.parametrize import ParametrizationList
from torch.overrides import TorchFunctionMode
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils.flop_counter import flop_registry

from wattless.energy.precision import Precision, dtype_precision, mac_precision, parse_precision
from wattless.errors import InputError

__all__ = [
    "OpCount", "UnitCount", "Counts", "count", "count_each", "split_inputs", "run_model", "uncounted", "kv_cache_update",
]

aten = torch.ops.aten
_LOCAL = threading.local()


@contextmanager
def uncounted() -> Iterator[None]:
    """Work inside this block is bookkeeping, not inference: fake quantization that simulates integer
    kernels, statistics hooks, routing counters. The counter does not charge it."""
    _LOCAL.depth = getattr(_LOCAL, "depth", 0) + 1
    try:
        yield
    finally:
        _LOCAL.depth -= 1


def counting() -> bool:
    """Whether a count (wattless.count, a profile, the energy objective's re-costing) is tracing this thread."""
    return getattr(_LOCAL, "tracer", None) is not None


def kv_cache_update(written: Sequence[torch.Tensor], cached: Sequence[torch.Tensor]) -> None:
    """Called by a KV cache inside a counted forward: it stored ``written`` (the new keys and values) and
    now holds ``cached``. The write is charged to the running unit as KV-cache bytes, and later reads of
    ``cached`` are counted as KV-cache reads. Outside a count this does nothing."""
    tracer = getattr(_LOCAL, "tracer", None)
    if tracer is not None and tracer.stack:
        tracer.kv_update(written, cached)


@dataclass
class OpCount:
    """The work of one op (or of several merged ops of one unit with the same precisions and pattern)."""

    macs: float = 0.0
    macs_kept: float = 0.0  # MACs left once all-zero weight rows and columns (structured pruning) are removed
    macs_nz_weight: float = 0.0  # MACs whose weight is non-zero
    macs_nz_act: float = 0.0  # MACs whose input activation is non-zero
    macs_nz_both: float = 0.0
    weight_pattern: str = "dense"  # "dense", "2:4" (at most 2 non-zeros in every group of 4) or "unstructured"
    weight_precision: str = "fp32"
    act_precision: str = "fp32"
    ops: float = 0.0  # non-MAC element operations
    weight_bytes: float = 0.0  # weight bytes read, dense storage of the kept rows/columns at the weight precision
    weight_nz_bytes: float = 0.0  # the same for the non-zero weights only
    bias_bytes: float = 0.0
    act_read_bytes: float = 0.0
    act_write_bytes: float = 0.0
    kv_read_bytes: float = 0.0  # KV-cache bytes read (attention over the cache)
    kv_write_bytes: float = 0.0  # KV-cache bytes written (the new tokens' keys and values)
    events: float = 0.0  # non-zero input activations x fan-out (synaptic events)
    outputs: float = 0.0  # output elements of MAC ops (neuron updates on event-driven targets)

    def merge_key(self) -> tuple[str, str, str]:
        return (self.weight_pattern, self.weight_precision, self.act_precision)

    def add(self, other: "OpCount") -> None:
        for f in fields(self):
            if isinstance(getattr(self, f.name), float):
                setattr(self, f.name, getattr(self, f.name) + getattr(other, f.name))

    @property
    def mac_precision(self) -> Precision:
        return mac_precision(parse_precision(self.weight_precision), parse_precision(self.act_precision))


@dataclass
class UnitCount:
    """One unit's work for one inference: its ops merged by (pattern, precisions)."""

    name: str
    type: str
    params: int
    ops: list[OpCount] = field(default_factory=list)
    calls: int = 0

    def _sum(self, attr: str) -> float:
        return sum(getattr(o, attr) for o in self.ops)

    @property
    def macs(self) -> float:
        return self._sum("macs")

    @property
    def kept_macs(self) -> float:
        """MACs left once all-zero weight rows and columns (structured pruning) are removed."""
        return self._sum("macs_kept")

    @property
    def effective_macs(self) -> float:
        """MACs with both a non-zero weight and a non-zero input activation."""
        return self._sum("macs_nz_both")

    def record(self) -> dict[str, Any]:
        macs = self.macs
        dominant = max(self.ops, key=lambda o: (o.macs, o.weight_bytes), default=OpCount())
        return {
            "name": self.name,
            "type": self.type,
            "calls": self.calls,
            "params": self.params,
            "macs": macs,
            "kept_macs": self.kept_macs,
            "effective_macs": self.effective_macs,
            "weight_density": self._sum("macs_nz_weight") / macs if macs else 1.0,
            "act_density": self._sum("macs_nz_act") / self._sum("macs_kept") if macs else 1.0,
            "weight_pattern": dominant.weight_pattern,
            "weight_precision": dominant.weight_precision,
            "act_precision": dominant.act_precision,
            "ops": self._sum("ops"),
            "weight_bytes": self._sum("weight_bytes") + self._sum("bias_bytes"),
            "act_read_bytes": self._sum("act_read_bytes"),
            "act_write_bytes": self._sum("act_write_bytes"),
            "kv_read_bytes": self._sum("kv_read_bytes"),
            "kv_write_bytes": self._sum("kv_write_bytes"),
            "events": self._sum("events"),
        }


@dataclass
class Counts:
    """Per-input unit counts. ``samples[i]`` maps unit name -> UnitCount for input i."""

    samples: list[dict[str, UnitCount]]
    params: int
    unit_order: list[str]
    dense_assumed: bool = False  # counted from shapes (meta tensors): densities taken as 1

    @property
    def n(self) -> int:
        return len(self.samples)

    def total(self, attr: str) -> list[float]:
        """Per-input totals of a UnitCount property, e.g. total('macs')."""
        return [sum(getattr(u, attr) for u in s.values()) for s in self.samples]

    def mean_records(self) -> list[dict[str, Any]]:
        """Per-unit records averaged over the inputs (a unit absent for an input counts zero there)."""
        names = [n for n in self.unit_order if any(n in s for s in self.samples)]
        out = []
        for name in names:
            present = [s[name].record() for s in self.samples if name in s]
            rec = dict(present[0])
            for key, value in rec.items():
                if isinstance(value, float) and not key.endswith("density"):
                    rec[key] = sum(p[key] for p in present) / self.n
                elif key.endswith("density"):
                    rec[key] = sum(p[key] for p in present) / len(present)
            rec["run_fraction"] = len(present) / self.n
            out.append(rec)
        return out


# --- what an op does ------------------------------------------------------------------------------

# Ops that only change views, metadata or allocate: no work, no traffic.
_FREE = {
    aten.detach, aten.t, aten.lift_fresh, aten.empty, aten.empty_like, aten.empty_strided, aten.zeros,
    aten.zeros_like, aten.ones, aten.ones_like, aten.full, aten.full_like, aten.arange, aten.scalar_tensor,
    aten.new_empty, aten.new_zeros, aten.new_ones, aten.new_full, aten._local_scalar_dense, aten.sym_size,
    aten.sym_stride, aten.sym_numel, aten.is_same_size, aten.alias, aten.set_, aten.resize_, aten.item,
    aten.equal, aten._assert_async, aten._assert_tensor_metadata,
}
# Element operations per output (or input, for reductions) element, for ops costlier than one.
_OPS_PER_ELEMENT = {
    aten.native_layer_norm: 5, aten.native_group_norm: 5, aten._native_batch_norm_legit_no_training: 2,
    aten._native_batch_norm_legit: 4, aten.native_batch_norm: 2, aten._softmax: 5, aten._log_softmax: 5,
    aten.gelu: 8, aten.silu: 4, aten.sigmoid: 4, aten.tanh: 4, aten.erf: 4, aten.exp: 2, aten.log: 2,
    aten.rsqrt: 2, aten.sqrt: 2, aten.pow: 2, aten.hardswish: 3, aten.mish: 6, aten.softplus: 4,
    aten.rms_norm: 4, aten._fused_rms_norm: 4, aten.linalg_vector_norm: 2,
}
_COPIES = {aten.clone, aten.copy_, aten._to_copy, aten.cat, aten.stack, aten.index, aten.gather,
           aten.index_select, aten.constant_pad_nd, aten.repeat, aten.contiguous, aten.slice_scatter}
_SDPA = [getattr(aten, n) for n in (
    "_scaled_dot_product_flash_attention_for_cpu", "_scaled_dot_product_attention_math",
    "_scaled_dot_product_flash_attention", "_scaled_dot_product_efficient_attention",
    "_scaled_dot_product_cudnn_attention", "_scaled_dot_product_fused_attention_overrideable",
) if hasattr(aten, n)]
# (activation arg index, weight arg index) of the matrix ops
_MATRIX = {aten.mm: (0, 1), aten.addmm: (1, 2), aten.bmm: (0, 1), aten.baddbmm: (1, 2),
           aten.convolution: (0, 1), aten._convolution: (0, 1)}


def _packet(func) -> Any:
    return getattr(func, "overloadpacket", func)


def _tensors(obj) -> list[torch.Tensor]:
    if isinstance(obj, torch.Tensor):
        return [obj]
    if isinstance(obj, (list, tuple)):
        return [t for o in obj for t in _tensors(o)]
    if isinstance(obj, Mapping):
        return [t for o in obj.values() for t in _tensors(o)]
    return []


def _storage_key(t: torch.Tensor) -> int:
    try:
        if t.is_meta:  # meta storages have no address; the storage object's handle is unique while it lives
            return t.untyped_storage()._cdata
        return t.untyped_storage().data_ptr()
    except (RuntimeError, NotImplementedError):
        return -1


def _dense_numel(t: torch.Tensor) -> int:
    """Elements actually stored: a broadcast (stride-0) dimension holds one copy."""
    n = 1
    for size, stride in zip(t.shape, t.stride()):
        n *= 1 if stride == 0 else size
    return n


def _density(t: torch.Tensor) -> float:
    """Fraction of non-zero elements. Counting on a strided view is slow, so count on its storage order."""
    if t.numel() == 0 or t.is_meta:
        return 1.0  # no values to look at: dense assumed
    if not t.is_contiguous():
        order = sorted(range(t.dim()), key=lambda d: t.stride(d), reverse=True)
        permuted = t.permute(order)
        t = permuted if permuted.is_contiguous() else t.contiguous()
    return float(torch.count_nonzero(t)) / t.numel()


def _is_2_4(rows: torch.Tensor) -> bool:
    """rows: (R, K) with the reduction axis last; True if each group of 4 along K has <= 2 non-zeros."""
    if rows.shape[-1] % 4:
        return False
    groups = (rows.reshape(rows.shape[0], -1, 4) != 0).sum(-1)
    return bool((groups <= 2).all())


@dataclass(frozen=True)
class _WeightStats:
    density: float  # non-zero weights / all weights
    pattern: str
    kept_rows: float = 1.0  # fraction of outputs with a non-zero weight (the rest are removed channels)
    kept_in: float = 1.0  # fraction of inputs that any output still uses
    kept_cols: torch.Tensor | None = None  # bool (K,): which inputs, when some are unused

    @property
    def kept(self) -> float:
        return self.kept_rows * self.kept_in


def _structure(w: torch.Tensor, conv: bool) -> tuple[float, float, torch.Tensor | None]:
    """Rows (outputs) and columns (inputs) whose weights are all zero are work a deployment removes.

    Matrix weights arrive as (K, N) = (in, out); conv weights as (O, I/g, kh, kw).
    """
    nz = w != 0
    if conv:
        rows = nz.flatten(1).any(1)  # (O,)
        cols = nz.transpose(0, 1).flatten(1).any(1)  # (I/g,)
    else:
        nz = nz.reshape(-1, *nz.shape[-2:]).any(0)  # (K, N), batched weights folded
        rows, cols = nz.any(0), nz.any(1)
    return float(rows.float().mean()), float(cols.float().mean()), (cols if not bool(cols.all()) else None)


class CounterBug(RuntimeError):
    """The counter itself failed on an op: a wattless bug, not the user's input."""


class _Tracer(TorchDispatchMode):
    """Charges each aten op's work to the innermost module on the stack."""

    def __init__(self, stack: list[nn.Module], names: dict[int, str], param_storages: set[int],
                 weight_cache: dict[tuple, _WeightStats] | None = None) -> None:
        super().__init__()
        self.stack, self.names, self.param_storages = stack, names, param_storages
        self.units: dict[str, UnitCount] = {}
        self._wcache: dict[tuple, _WeightStats] = {} if weight_cache is None else weight_cache
        self.flow: str | None = None  # activation precision of the last matrix op, carried to element ops
        self.live: dict[int, tuple[float, torch.Tensor]] = {}  # storage -> live channel fraction
        self.kv: dict[int, torch.Tensor] = {}  # storages of KV-cache tensors (held so they are not reused)

    # -- KV cache --------------------------------------------------------------------------------------
    def _kv_bits(self, t: torch.Tensor) -> float:
        for module in reversed(self.stack):
            declared = getattr(module, "wattless_kv_precision", None)
            if declared is not None:
                return parse_precision(declared).bits
        return dtype_precision(t.dtype).bits

    def kv_update(self, written: Sequence[torch.Tensor], cached: Sequence[torch.Tensor]) -> None:
        nbytes = sum(t.numel() * self._kv_bits(t) / 8 for t in written)
        _, ap = self._precisions(None, written[0])
        self._add(OpCount(weight_precision=ap, act_precision=ap, kv_write_bytes=nbytes))
        for t in cached:
            self.kv[_storage_key(t)] = t

    def _reads(self, tensors: Sequence[torch.Tensor], a_bytes: float) -> tuple[float, float]:
        """(activation bytes, KV-cache bytes) read from ``tensors``; cache tensors at the cache's precision."""
        act = kv = 0.0
        for t in tensors:
            if self.kv and _storage_key(t) in self.kv:
                kv += t.numel() * self._kv_bits(t) / 8
            else:
                act += t.numel() * a_bytes
        return act, kv

    # -- attribution ---------------------------------------------------------------------------------
    def _unit(self) -> UnitCount:
        module = self.stack[-1]
        name = self.names[id(module)]
        unit = self.units.get(name)
        if unit is None:
            params = sum(p.numel() for p in module.parameters(recurse=False))
            unit = self.units[name] = UnitCount(name=name, type=type(module).__name__, params=params)
        return unit

    def _precisions(self, weight: torch.Tensor | None, act: torch.Tensor | None) -> tuple[str, str]:
        wp = dtype_precision(weight.dtype).name if weight is not None else None
        ap = dtype_precision(act.dtype).name if act is not None else "fp32"
        if weight is None and self.flow is not None and act is not None and act.dtype == torch.float32:
            ap = self.flow  # element ops between quantized layers run on the quantized activations
        for module in reversed(self.stack):
            w_attr = getattr(module, "wattless_weight_precision", None)
            a_attr = getattr(module, "wattless_act_precision", None)
            if w_attr is not None or a_attr is not None:
                wp = w_attr or wp
                ap = a_attr or ap
                break
        return (wp or ap), ap

    def _group_bits(self) -> float:
        """Bits per weight of the group scales and zero points a grouped layer reads beside its codes
        (``wattless_weight_group_bits``, e.g. an fp16 scale and minimum per 32 weights: 1.0)."""
        for module in reversed(self.stack):
            bits = getattr(module, "wattless_weight_group_bits", None)
            if bits is not None:
                return float(bits)
            if getattr(module, "wattless_weight_precision", None) is not None:
                return 0.0
        return 0.0

    def _is_weight(self, t: torch.Tensor, func) -> bool:
        if _storage_key(t) in self.param_storages:
            return True
        # A weight computed in forward (fake-quantized, masked) inside a module that owns a weight.
        module = self.stack[-1]
        return _packet(func) in _MATRIX and isinstance(getattr(module, "weight", None), torch.Tensor)

    def _weight_stats(self, w: torch.Tensor, conv: bool) -> _WeightStats:
        # Only parameters are cached: a weight computed in forward (fake-quantized, masked) is a new tensor
        # each call, and the allocator may hand its address to another layer's weight.
        cacheable = _storage_key(w) in self.param_storages
        key = (w.data_ptr(), w._version, tuple(w.shape), tuple(w.stride()), conv)
        hit = self._wcache.get(key) if cacheable else None
        if hit is not None:
            return hit
        density = _density(w)
        pattern, kept_rows, kept_in, cols = "dense", 1.0, 1.0, None
        if density < 1.0:
            pattern = "unstructured"
            kept_rows, kept_in, cols = _structure(w, conv)
            if density <= 0.5:
                # groups of 4 run along the input dimension: (O, I, *k) -> (O, *k, I); (K, N) -> (N, K)
                rows = w.movedim(1, -1).reshape(-1, w.shape[1]) if conv else w.transpose(-2, -1).reshape(-1, w.shape[-2])
                if _is_2_4(rows):
                    pattern = "2:4"
        stats = _WeightStats(density, pattern, kept_rows, kept_in, cols)
        if cacheable:
            self._wcache[key] = stats
        return stats

    @staticmethod
    def _kept_act_density(act: torch.Tensor, stats: _WeightStats, conv: bool, groups: int) -> float:
        """Activation density over the input features the weights still use."""
        cols = stats.kept_cols
        if cols is None or (conv and groups != 1):
            return _density(act)
        if not cols.any():
            return 0.0
        return _density(act[:, cols] if conv else act[..., cols])

    # -- dispatch ------------------------------------------------------------------------------------
    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        packet = _packet(func)
        if packet in _FREE or getattr(func, "is_view", False) or not self.stack or getattr(_LOCAL, "depth", 0):
            return out
        if any(isinstance(m, ParametrizationList) for m in self.stack):
            return out  # a parametrization (a pruning mask) prepares weights; deployment bakes it in
        try:
            if packet in _MATRIX:
                self._matrix(func, packet, args, kwargs, out)
            elif packet in _SDPA:
                self._attention(args, out)
            elif packet is aten.embedding:
                self._embedding(args, out)
            else:
                self._elementwise(packet, args, out)
        except Exception as exc:
            raise CounterBug(f"wattless's counter failed on {func}: {type(exc).__name__}: {exc}") from exc
        return out

    def _add(self, op: OpCount) -> None:
        unit = self._unit()
        for existing in unit.ops:
            if existing.merge_key() == op.merge_key():
                existing.add(op)
                return
        unit.ops.append(op)

    def _matrix(self, func, packet, args, kwargs, out) -> None:
        ai, wi = _MATRIX[packet]
        act, other = args[ai], args[wi]
        macs = flop_registry[packet](*args, **kwargs, out_val=out) / 2
        is_w = self._is_weight(other, func)
        conv = packet in (aten.convolution, aten._convolution)
        wp, ap = self._precisions(other if is_w else None, act)
        if not is_w:
            wp = ap
        self.flow = ap
        a_density = _density(act)
        stats = self._weight_stats(other, conv) if is_w else _WeightStats(1.0, "dense")
        groups = int(args[8]) if conv and len(args) > 8 else 1
        a_density = self._kept_act_density(act, stats, conv, groups) if stats.kept < 1.0 else a_density
        kept = macs * stats.kept
        self._mark_live(out, stats.kept_rows)
        a_bytes = parse_precision(ap).bits / 8
        bias = args[0] if packet in (aten.addmm, aten.baddbmm) else args[2] if conv else None
        b_bits = dtype_precision(bias.dtype).bits if isinstance(bias, torch.Tensor) else 0
        if b_bits and not parse_precision(wp).is_float:
            b_bits = 32  # integer kernels keep int32 biases
        b_bytes = _dense_numel(bias) * b_bits / 8 if b_bits else 0.0
        w_bytes = _dense_numel(other) * (parse_precision(wp).bits + (self._group_bits() if is_w else 0.0)) / 8
        other_act, other_kv = (0.0, 0.0) if is_w else self._reads([other], a_bytes)
        self._add(OpCount(
            macs=macs, macs_kept=kept, macs_nz_weight=macs * stats.density, macs_nz_act=kept * a_density,
            macs_nz_both=macs * stats.density * a_density, weight_pattern=stats.pattern,
            weight_precision=wp, act_precision=ap,
            ops=float(out.numel()) * stats.kept_rows
            if packet in (aten.addmm, aten.baddbmm) or (conv and args[2] is not None) else 0.0,
            weight_bytes=w_bytes * stats.kept if is_w else 0.0,
            weight_nz_bytes=w_bytes * stats.density if is_w else 0.0, bias_bytes=b_bytes,
            # removed input channels are not read, removed output channels not written
            act_read_bytes=a_bytes * act.numel() * stats.kept_in + other_act, kv_read_bytes=other_kv,
            act_write_bytes=a_bytes * out.numel() * stats.kept_rows,
            events=self._events(packet, args, act, other, macs * a_density * stats.density, is_w),
            outputs=float(out.numel()) * stats.kept_rows,
        ))

    def _events(self, packet, args, act, weight, estimate: float, is_w: bool) -> float:
        """Synaptic events: non-zero inputs x their fan-out. From densities (exact for a Linear with dense
        weights), or, where a module sets ``wattless_exact_events`` (spiking layers), counted pair by pair:
        a convolution's border inputs reach fewer outputs, and a pruned weight is no synapse."""
        if not is_w or not getattr(self.stack[-1], "wattless_exact_events", False) or act.is_meta:
            return estimate
        nz_act, nz_w = (act != 0).to(act.dtype), (weight != 0).to(weight.dtype)
        if packet in (aten.convolution, aten._convolution):
            return float(aten.convolution(nz_act, nz_w, None, *args[3:9]).sum())
        if packet in (aten.mm, aten.addmm):
            return float((nz_act @ nz_w).sum())
        return estimate

    def _attention(self, args, out) -> None:
        q, k, v = args[:3]
        # (B, H, L, E) x (B, H, S, E): scores L*S*E, weighted values L*S*Ev
        lead = q.shape[:-2].numel()
        macs = float(lead * q.shape[-2] * k.shape[-2] * (q.shape[-1] + v.shape[-1]))
        _, ap = self._precisions(None, q)
        density = _density(q)
        a_bytes = parse_precision(ap).bits / 8
        o = out[0] if isinstance(out, (tuple, list)) else out
        scores = float(lead * q.shape[-2] * k.shape[-2])
        act_read, kv_read = self._reads([q, k, v], a_bytes)
        self._add(OpCount(
            macs=macs, macs_kept=macs, macs_nz_weight=macs, macs_nz_act=macs * density, macs_nz_both=macs * density,
            weight_precision=ap, act_precision=ap, ops=scores * 5,  # softmax over the scores
            act_read_bytes=act_read, kv_read_bytes=kv_read, act_write_bytes=a_bytes * o.numel(),
            events=macs * density, outputs=float(o.numel()),
        ))

    def _embedding(self, args, out) -> None:
        weight = args[0]
        wp, ap = self._precisions(weight, None)
        self._add(OpCount(
            weight_precision=wp, act_precision=ap,
            weight_bytes=out.numel() * parse_precision(wp).bits / 8,  # only the rows gathered
            weight_nz_bytes=out.numel() * parse_precision(wp).bits / 8,
            act_write_bytes=out.numel() * parse_precision(ap).bits / 8,
        ))

    def _mark_live(self, out: Any, fraction: float) -> None:
        """Remember that only ``fraction`` of this tensor's channels carry anything (the rest were removed
        by structured pruning), so element ops on it are charged for the live part only."""
        for t in _tensors(out):
            if fraction < 1.0:
                self.live[_storage_key(t)] = (fraction, t)  # holding t keeps its storage from being reused
            else:
                self.live.pop(_storage_key(t), None)

    def _live(self, t: torch.Tensor) -> float:
        entry = self.live.get(_storage_key(t))
        return entry[0] if entry is not None else 1.0

    def _elementwise(self, packet, args, out) -> None:
        ins = [t for t in _tensors(args) if t.is_floating_point() or t.dtype in (torch.int8, torch.uint8)]
        outs = [t for t in _tensors(out) if t.is_floating_point()]
        if not outs and not ins:
            return
        act = max(ins, key=torch.Tensor.numel) if ins else outs[0]
        _, ap = self._precisions(None, act)
        a_bytes = parse_precision(ap).bits / 8
        acts = [t for t in ins if _storage_key(t) not in self.param_storages]
        live = max((self._live(t) for t in acts), default=1.0)  # an op is live where any input is
        kv_in = [t for t in acts if self.kv and _storage_key(t) in self.kv]
        acts = [t for t in acts if not (self.kv and _storage_key(t) in self.kv)]
        n_in = sum(_dense_numel(t) * self._live(t) for t in acts)
        n_param = sum(_dense_numel(t) for t in ins if _storage_key(t) in self.param_storages)
        n_out = sum(t.numel() for t in outs) * live
        per = 0.0 if packet in _COPIES else float(_OPS_PER_ELEMENT.get(packet, 1))
        self._mark_live(out, live)
        self._add(OpCount(
            weight_precision=ap, act_precision=ap, ops=per * max(n_in, n_out),
            weight_bytes=n_param * a_bytes, weight_nz_bytes=n_param * a_bytes,
            act_read_bytes=n_in * a_bytes, act_write_bytes=n_out * a_bytes,
            kv_read_bytes=self._reads(kv_in, a_bytes)[1],
        ))


class _FusedMetaAttention(TorchFunctionMode):
    """On meta tensors torch picks the math kernel for scaled_dot_product_attention, whose decomposition
    (GQA key copies, separate softmax) is not what a real device runs; route it to the fused CPU kernel,
    which has meta shapes, so a meta model is charged what a real one is."""

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func is torch.nn.functional.scaled_dot_product_attention and args and args[0].is_meta:
            q, k, v = args[:3]
            mask = kwargs.get("attn_mask", args[3] if len(args) > 3 else None)
            if kwargs.get("enable_gqa", False) or k.shape[-3] == q.shape[-3]:
                return aten._scaled_dot_product_flash_attention_for_cpu(
                    q, k, v, kwargs.get("dropout_p", 0.0), kwargs.get("is_causal", False),
                    attn_mask=mask, scale=kwargs.get("scale"),
                )[0]
        return func(*args, **kwargs)


# --- running a model on inputs ----------------------------------------------------------------------

def split_inputs(inputs: Any) -> list[Any]:
    """Split a batch (tensor, tuple/list of tensors, or dict of tensors) into single-input batches."""
    tensors = _tensors(inputs)
    if not tensors or tensors[0].dim() == 0:
        return [inputs]
    n = tensors[0].shape[0]
    if n <= 1 or any(t.dim() == 0 or t.shape[0] != n for t in tensors):
        return [inputs]

    def take(obj, i):
        if isinstance(obj, torch.Tensor):
            return obj[i : i + 1]
        if isinstance(obj, (list, tuple)):
            return type(obj)(take(o, i) for o in obj)
        if isinstance(obj, Mapping):
            return {k: take(v, i) for k, v in obj.items()}
        return obj

    return [take(inputs, i) for i in range(n)]


def run_model(model: nn.Module, inputs: Any) -> Any:
    """Call the model the way its inputs ask: a dict as keywords, a tuple/list as positional args."""
    if isinstance(inputs, Mapping):
        return model(**inputs)
    if isinstance(inputs, (list, tuple)):
        return model(*inputs)
    return model(inputs)


def _describe(inputs: Any) -> str:
    if isinstance(inputs, torch.Tensor):
        return f"shape {tuple(inputs.shape)}"
    if isinstance(inputs, Mapping):
        return ", ".join(f"{k}: {_describe(v)}" for k, v in inputs.items())
    if isinstance(inputs, Sequence):
        return "(" + ", ".join(_describe(v) for v in inputs) + ")"
    return type(inputs).__name__


def count(model: nn.Module, inputs: Any, *, max_inputs: int = 64) -> Counts:
    """Trace ``model`` on each of (at most ``max_inputs``) example inputs and count its work per unit."""
    return count_each(model, split_inputs(inputs)[:max_inputs])


def count_each(model: nn.Module, samples: list[Any], *, weight_cache: dict | None = None) -> Counts:
    """Trace ``model`` once per element of ``samples`` (each a complete model input, as given).

    ``weight_cache``: a dict kept across calls on the same, unchanged model, so that its weights' density
    and sparsity pattern are computed once (keyed by each parameter's address and version)."""
    names = {id(m): (n or "(root)") for n, m in model.named_modules()}
    param_storages = {_storage_key(t) for t in [*model.parameters(), *model.buffers()]}
    stack: list[nn.Module] = []

    calls: dict[str, int] = {}

    def push(module, _args):
        if id(module) in names:
            stack.append(module)
            calls[names[id(module)]] = calls.get(names[id(module)], 0) + 1

    def pop(module, _args, _out):
        if stack and stack[-1] is module:
            stack.pop()

    was_training = model.training
    model.eval()
    results: list[dict[str, UnitCount]] = []
    order: dict[str, None] = {}
    # nn.MultiheadAttention / TransformerEncoderLayer fast paths run fused kernels that hide their matmuls
    fastpath = torch.backends.mha.get_fastpath_enabled()
    torch.backends.mha.set_fastpath_enabled(False)
    dense_assumed = any(p.is_meta for p in [*model.parameters(), *model.buffers()])
    pre = nn.modules.module.register_module_forward_pre_hook(push)
    post = nn.modules.module.register_module_forward_hook(pop, always_call=True)
    try:
        for sample in samples:
            stack.clear()
            calls.clear()
            tracer = _LOCAL.tracer = _Tracer(stack, names, param_storages, weight_cache)
            with torch.no_grad(), _FusedMetaAttention(), tracer:
                try:
                    run_model(model, sample)
                except CounterBug:
                    raise
                except Exception as exc:  # the model's own error, reported with the input it got
                    raise InputError(
                        f"the model rejected its example input ({_describe(sample)}): "
                        f"{type(exc).__name__}: {exc}"
                    ) from exc
            for unit in tracer.units.values():
                unit.calls = calls.get(unit.name, 0)
            results.append(tracer.units)
            order.update(dict.fromkeys(tracer.units))
    finally:
        _LOCAL.tracer = None
        torch.backends.mha.set_fastpath_enabled(fastpath)
        pre.remove()
        post.remove()
        model.train(was_training)
    params = sum(p.numel() for p in model.parameters())
    return Counts(samples=results, params=params, unit_order=list(order), dense_assumed=dense_assumed)
