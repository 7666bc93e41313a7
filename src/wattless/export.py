"""`wattless export`: an optimized model as one ONNX file that ONNX Runtime runs with integer kernels.

    report = export_run("runs/m1", "m1.onnx")          # or export_model(model, workload, "m1.onnx")
    report.parity.passed, report.size_bytes, report.layers

What the file holds (docs/EXPORT.md has the whole story):

- Quantized layers run on integers: the input is quantized with the step the QAT learned (QuantizeLinear,
  uint8; signed codes ride on zero point 128, which is exact), the weight is stored as its int8 codes with
  one scale per output channel, and the product runs in ``MatMulIntegerToFloat`` (com.microsoft) or
  ``ConvInteger``; bits below 8 are the same codes in int8 containers (exact), with a Clip for activations.
  A conv feeding only the next quantizer can become one ``QLinearConv`` (requantize; see export_model).
  A layer with 4-bit weights and float activations runs ONNX Runtime's ``MatMulNBits``. A Linear quantized
  per token computes each row's grid in the graph and runs ``MatMulInteger``; a smoothed one divides its
  input by its SmoothQuant factor first (see _quantize_tokens, _smooth).
- Structurally pruned channels, neurons and heads are cut out of the tensors (smaller shapes, fewer MACs);
  unstructured and 2:4 zeros stay as zeros in dense tensors (ONNX Runtime has no sparse CPU kernel).
- Early exits are ONNX ``If`` nodes: the rows that stop at an exit are never fed to the blocks behind it,
  and a batch where every row stopped runs nothing more. Mixture-of-experts blocks route each token with
  ``TopK`` and run every expert only on its own tokens (``NonZero`` + ``Gather`` + ``ScatterND`` add).
  Extra outputs ``exit`` and ``route.*`` say which path each input took.
- Sentence encoders (BERT, e.g. the ``minilm`` workload) take ``input_ids`` of one length per batch, with no
  padding and no mask, and return the mean-pooled, L2-normalised sentence embedding; attention runs ONNX
  Runtime's fused ``MultiHeadAttention``, the word table is int8 rows (``GatherBlockQuantized``).

Every export ends with a parity check against the PyTorch model (outputs and the workload's metric on its
eval split); the file appears at ``out`` only when it passes, written atomically.
"""

from __future__ import annotations

import copy
import json
import math
import operator
import os
import tempfile
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import fx, nn
from torch.nn.utils import parametrize

from wattless.errors import ExportError, ParityError
from wattless.kernels import INT8_KERNELS, integer_products, to_portable

__all__ = ["export_run", "export_model", "ExportReport", "Parity", "Tolerance", "FORMAT", "OPSET"]

FORMAT = "1"
OPSET = 18
MS = "com.microsoft"
_F32, _I64, _U8, _I8 = np.float32, np.int64, np.uint8, np.int8


# --- tolerances and reports -----------------------------------------------------------------------------

@dataclass(frozen=True)
class Tolerance:
    """What the parity check accepts. Integer kernels round exactly as the fake-quantized PyTorch model, but
    a value on a rounding boundary can land either side: ONNX Runtime's float kernels (attention, norms,
    GELU) differ from PyTorch's in the last bits, and the next quantizer turns a few of those into a code one
    step off, which later layers carry on. Deep encoders see many such flips (hence a cosine bound per
    sentence), a flip can move an early-exit decision, so a small share of inputs may differ.

    A requantized classifier (fused QLinearConv, int32 bias) is held to its answers, not its logits: the
    same class on ``min_agree`` of the inputs and the same metric; how many logits still match is reported."""

    atol: float = 1e-4  # classifiers: |onnx - torch| <= atol + rtol * max|torch| per input
    rtol: float = 1e-3
    min_cosine: float = 0.99  # encoders: cosine(onnx, torch) of each sentence's embedding
    min_within: float = 0.99  # share of eval inputs that must be within the bounds above
    min_agree: float = 0.99  # classifiers: share of eval inputs given the same class (argmax)
    metric_atol: float = 0.005  # |metric(onnx) - metric(torch)| on the eval split


@dataclass(frozen=True)
class Parity:
    passed: bool
    inputs: int
    within: float  # share of inputs within the output tolerance
    worst: float  # largest per-input |difference| (classifier) or 1 - cosine (encoder)
    metric_name: str
    metric_torch: float
    metric_onnx: float
    tolerance: Tolerance
    paths_agree: float | None = None  # share of inputs taking the same exit in both
    agree: float | None = None  # classifiers: share of inputs given the same class
    requantized: bool = False  # held to the same classes and metric, not to the logits

    def describe(self) -> str:
        t = self.tolerance
        need = "reported only: requantized" if self.requantized else f"need {100 * t.min_within:.0f}%"
        same = (f"; the same class for {100 * self.agree:.2f}% (need {100 * t.min_agree:.0f}%)"
                if self.agree is not None else "")
        return (f"{100 * self.within:.2f}% of {self.inputs} eval inputs within the output tolerance ({need}; worst "
                f"{self.worst:.3g}){same}; {self.metric_name} {self.metric_onnx:.4f} (ONNX) vs {self.metric_torch:.4f} "
                f"(PyTorch), allowed difference {t.metric_atol}")

    def to_json(self) -> dict[str, Any]:
        return {**asdict(self), "tolerance": asdict(self.tolerance)}


@dataclass
class ExportReport:
    path: Path
    kind: str  # "classifier" or "sentence-encoder"
    workload: str
    size_bytes: int
    parity: Parity | None
    layers: dict[str, str] = field(default_factory=dict)  # layer -> kernel it runs on
    removed: dict[str, dict[str, int]] = field(default_factory=dict)  # group -> {kept, total}
    exits: list[dict[str, Any]] = field(default_factory=list)
    routes: dict[str, int] = field(default_factory=dict)  # MoE block -> experts
    notes: list[str] = field(default_factory=list)
    int8_kernel: str = "portable"  # the form of the integer products (wattless.kernels)
    integer_products: dict[str, int] = field(default_factory=dict)  # weight form ("s8", "u8") -> products

    def to_json(self) -> dict[str, Any]:
        out = {k: v for k, v in asdict(self).items() if k != "parity"}
        out.update(path=str(self.path), parity=self.parity.to_json() if self.parity else None)
        return out


# --- an ONNX graph under construction -------------------------------------------------------------------

class _Graph:
    """Nodes of one (sub)graph; initializers and unique names are shared with the root graph."""

    def __init__(self, root: "_Graph | None" = None) -> None:
        self.root = root or self
        self.nodes: list[Any] = []
        # values computed once per (sub)graph and shared by the layers reading them (Q, K, V's smoothed and
        # quantized input); per graph, as a subgraph's values are invisible to its parent and siblings
        self.memo: dict[tuple, Any] = {}
        if root is None:
            self.inits: list[Any] = []
            self._used: dict[str, int] = {}
            self._consts: dict[tuple, str] = {}
            self.qconv: dict[str, dict[str, Any]] = {}  # float output of an integer conv -> its parts
            self.fused: list[str] = []  # layers that became QLinearConv

    def name(self, hint: str) -> str:
        hint = hint.replace("/", ".") or "v"
        used = self.root._used
        n = used.get(hint, 0)
        used[hint] = n + 1
        return hint if n == 0 else f"{hint}_{n}"

    def const(self, value: Any, hint: str, dtype: Any = _F32) -> str:
        from onnx import numpy_helper

        array = np.array(value, dtype=dtype, order="C")  # (ascontiguousarray would make scalars 1-D)
        key = (array.dtype.str, array.shape, array.tobytes()) if array.size <= 16 else None
        if key is not None and key in self.root._consts:
            return self.root._consts[key]
        name = self.name(hint)
        self.root.inits.append(numpy_helper.from_array(array, name))
        if key is not None:
            self.root._consts[key] = name
        return name

    def op(self, op_type: str, inputs: list[str], hint: str, *, outputs: int = 1, domain: str = "",
           **attrs: Any) -> Any:
        from onnx import helper

        names = [self.name(f"{hint}.{op_type}" if outputs == 1 else f"{hint}.{op_type}.{i}")
                 for i in range(outputs)]
        self.nodes.append(helper.make_node(op_type, inputs, names, name=names[0], domain=domain, **attrs))
        return names[0] if outputs == 1 else names

    def sub(self) -> "_Graph":
        return _Graph(self.root)


def _value(name: str, elem: int, shape: list[Any] | None = None) -> Any:
    from onnx import helper

    return helper.make_tensor_value_info(name, elem, shape)


def _np(t: torch.Tensor) -> np.ndarray:
    return t.detach().cpu().float().numpy() if t.is_floating_point() else t.detach().cpu().numpy()


# --- structurally removed units -------------------------------------------------------------------------

class _Keep:
    """Indices kept along each (module, tensor, axis) touched by a structured pruning group."""

    def __init__(self) -> None:
        self.index: dict[tuple[int, str, int], np.ndarray] = {}
        self.removed: dict[str, dict[str, int]] = {}

    def take(self, module: nn.Module, tensor: str, array: np.ndarray) -> np.ndarray:
        for (mid, name, axis), idx in self.index.items():
            if mid == id(module) and name == tensor:
                array = np.take(array, idx, axis=axis)
        return array

    def take_rows(self, module: nn.Module, array: np.ndarray) -> np.ndarray:
        """A per-output-channel vector (scales, norm statistics) cut like the weight's rows."""
        idx = self.index.get((id(module), "weight", 0))
        return array if idx is None else np.take(array, idx, axis=0)


def _find_removable(model: nn.Module) -> _Keep:
    """Units whose every consumer column is zero carry nothing: cut them from producers, norms and consumers.

    The groups are the pruning technique's own (torch.fx pairs), so a unit is cut only where all its readers
    are known; a unit some reader still uses stays whole."""
    from wattless.techniques.prune import _axes, _channel_groups, _is_depthwise, _is_mac

    keep = _Keep()
    try:
        groups, _ = _channel_groups(model)
    except Exception:  # a model torch.fx cannot trace has no known pairs: nothing is cut
        return keep
    for g in groups:
        readers = [s for s in g.followers if s.tensor == "weight" and _is_mac(s.module)
                   and not _is_depthwise(s.module) and s.axis == _axes(s.module)[1]]
        if not readers:
            continue
        dead = np.ones(g.units, dtype=bool)
        for s in readers:
            w = s.module.weight.detach().movedim(s.axis, 0).reshape(g.units, -1)
            dead &= (w == 0).all(1).cpu().numpy()
        if not dead.any():
            continue
        if dead.all():
            dead[0] = False  # an empty tensor helps no runtime; keep one unit
        units = np.flatnonzero(~dead)
        for s in (*g.producers, *g.followers):
            idx = (units[:, None] * s.block + np.arange(s.block)[None, :]).reshape(-1)
            keep.index[(id(s.module), s.tensor, s.axis)] = idx
        keep.removed[g.name] = {"kept": int(len(units)), "total": int(g.units)}
    return keep


# --- layers ---------------------------------------------------------------------------------------------

class _Ctx:
    """What every emitter shares: the graph root, the cut units, and what each layer became."""

    def __init__(self, keep: _Keep, fuse: bool = False) -> None:
        self.keep, self.fuse = keep, fuse
        self.layers: dict[str, str] = {}
        self.names: dict[int, str] = {}
        self.routes: dict[str, tuple[str, int]] = {}  # MoE block -> (output name, experts)
        self.ranks: dict[int, int] = {}  # module -> rank of its input


def _quantize_input(g: _Graph, x: str, m: nn.Module, hint: str) -> tuple[str, str, str]:
    """x (float) -> (uint8 codes, scale, zero point) exactly as the layer's fake quantizer rounds it."""
    from wattless.techniques.quantize import act_scale

    step, _, signed = act_scale(m)
    return _quantize(g, x, step, m.act_bits, signed, hint)


def _quantize(g: _Graph, x: str, step: float, bits: int, signed: bool, hint: str) -> tuple[str, str, str]:
    lo, hi = (-(2 ** (bits - 1)), 2 ** (bits - 1) - 1) if signed else (0, 2**bits - 1)
    scale = g.const(step, f"{hint}.act_scale")
    zero = g.const(128 if signed else 0, f"{hint}.act_zero", _U8)  # signed codes ride on 128: exact
    if bits < 8:  # clip to the k-bit range first: round(clip(x)) = clip(round(x)) at these bounds
        x = g.op("Clip", [x, g.const(lo * step, f"{hint}.lo"), g.const(hi * step, f"{hint}.hi")], hint)
    return g.op("QuantizeLinear", [x, scale, zero], hint), scale, zero


def _weights(ctx: _Ctx, m: nn.Module) -> tuple[np.ndarray, np.ndarray | None, np.ndarray | None]:
    """(weight, per-channel scale or None, bias or None), cut to the kept units. For a quantized layer the
    weight is its integer codes and ``scale`` the step of each output channel."""
    from wattless.techniques.quantize import _QuantMixin, integer_weights

    if isinstance(m, _QuantMixin):
        codes, scale = integer_weights(m)
        w, s = ctx.keep.take(m, "weight", codes.numpy()), ctx.keep.take_rows(m, _np(scale))
    else:
        w, s = ctx.keep.take(m, "weight", _np(m.weight)), None
    b = ctx.keep.take(m, "bias", _np(m.bias)) if getattr(m, "bias", None) is not None else None
    return w, s, b


def _linear(g: _Graph, ctx: _Ctx, m: nn.Linear, x: str, hint: str) -> str:
    from wattless.techniques.quantize import _QuantMixin

    w, s, b = _weights(ctx, m)  # w: (out, in)
    bias = g.const(b, f"{hint}.bias") if b is not None else ""
    if not isinstance(m, _QuantMixin):
        ctx.layers[hint] = "fp32 MatMul"
        y = g.op("MatMul", [x, g.const(w.T, f"{hint}.weight")], hint)
        return g.op("Add", [y, bias], hint) if bias else y
    if m.smooth_factor is not None:  # w is already the smoothed weight's codes (integer_weights)
        x = _smooth(g, ctx, m, x, hint)
    if m.act_bits is not None and m.per_token:
        y = _per_token_matmul(g, m, x, w, s, hint)
        ctx.layers[hint] = (f"int8 MatMulInteger, per-token dynamic activations (w{m.weight_bits}a{m.act_bits}, "
                            f"per-channel){_smoothed_note(m)}")
        return g.op("Add", [y, bias], hint) if bias else y
    if m.act_bits is not None:
        xq, a_scale, a_zero = _quantize_input(g, x, m, hint)
        ctx.layers[hint] = f"int8 MatMulIntegerToFloat (w{m.weight_bits}a{m.act_bits}, per-channel){_smoothed_note(m)}"
        return g.op("MatMulIntegerToFloat", [xq, g.const(w.T, f"{hint}.weight", _I8), a_scale,
                                             g.const(s, f"{hint}.weight_scale"), a_zero, "", bias],
                    hint, domain=MS)
    if m.weight_bits <= 4:
        ctx.layers[hint] = f"MatMulNBits (w{m.weight_bits}, float activations){_smoothed_note(m)}"
        y = _matmul_nbits(g, w, s, x, hint)
    else:
        ctx.layers[hint] = (f"int8 weights, DequantizeLinear + MatMul (w{m.weight_bits}, float activations)"
                            f"{_smoothed_note(m)}")
        wt = g.op("DequantizeLinear", [g.const(w.T, f"{hint}.weight", _I8), g.const(s, f"{hint}.weight_scale")],
                  hint, axis=1)
        y = g.op("MatMul", [x, wt], hint)
    return g.op("Add", [y, bias], hint) if bias else y


def _smoothed_note(m: nn.Module) -> str:
    return ", SmoothQuant (input / s in-graph)" if m.smooth_factor is not None else ""


def _smooth(g: _Graph, ctx: _Ctx, m: nn.Module, x: str, hint: str) -> str:
    """x / s, the layer's SmoothQuant factor cut to its kept input columns. A Div, not a Mul by 1 / s: it is
    PyTorch's op, so every value (and every rounding the quantizer makes of it) is the same; layers reading
    one tensor with one factor (Q, K, V) share the node."""
    factor = _np(m.smooth_factor)
    idx = ctx.keep.index.get((id(m), "weight", 1))
    if idx is not None:
        factor = factor[idx]
    key = ("smooth", x, factor.tobytes())
    if key not in g.memo:
        g.memo[key] = g.op("Div", [x, g.const(factor, f"{hint}.smooth_factor")], hint)
    return g.memo[key]


def _quantize_tokens(g: _Graph, x: str, bits: int, hint: str) -> tuple[str, str, str]:
    """x (float, channels last) -> (uint8 codes, row scale, int32 row zero point), each row on its own
    asymmetric grid: the float ops of the layer's _quantize_tokens in its order (Round is half-to-even in
    both), so the codes are PyTorch's bit for bit. Not QuantizeLinear: it rounds x / s and then adds z,
    which differs from round(x / s + z) where adding z rounds away the fraction's last bits."""
    key = ("tokens", x, bits)
    if key in g.memo:
        return g.memo[key]
    levels = 2**bits - 1
    axis = g.const([-1], "minus1", _I64)
    zero = g.const(0.0, "zero_f")
    lo = g.op("Min", [g.op("ReduceMin", [x, axis], hint, keepdims=1), zero], hint)
    hi = g.op("Max", [g.op("ReduceMax", [x, axis], hint, keepdims=1), zero], hint)
    step = g.op("Div", [g.op("Sub", [hi, lo], hint), g.const(float(levels), f"levels{bits}")], hint)
    step = g.op("Max", [step, g.const(np.finfo(_F32).tiny, "tiny")], hint)
    z = g.op("Round", [g.op("Div", [g.op("Neg", [lo], hint), step], hint)], hint)
    v = g.op("Round", [g.op("Add", [g.op("Div", [x, step], hint), z], hint)], hint)
    v = g.op("Clip", [v, zero, g.const(float(levels), f"levels{bits}")], hint)
    g.memo[key] = (g.op("Cast", [v], hint, to=2), step, g.op("Cast", [z], hint, to=6))  # uint8, int32
    return g.memo[key]


def _per_token_matmul(g: _Graph, m: nn.Module, x: str, codes: np.ndarray, scale: np.ndarray, hint: str) -> str:
    """x @ (codes * scale).T on integers, x quantized per token. ONNX Runtime's MatMulInteger takes only a
    scalar zero point for A (1.32 rejects per-row ones), so the product runs on the raw codes and each
    row's zero point comes off in int32, exactly: sum_k (q_k - z) c_k = sum_k q_k c_k - z sum_k c_k."""
    q, step, z = _quantize_tokens(g, x, m.act_bits, hint)
    acc = g.op("MatMulInteger", [q, g.const(codes.T, f"{hint}.weight", _I8)], hint)
    col_sums = g.const(codes.astype(np.int32).sum(1), f"{hint}.weight_col_sums", np.int32)  # (out,)
    acc = g.op("Sub", [acc, g.op("Mul", [z, col_sums], hint)], hint)
    y = g.op("Mul", [g.op("Cast", [acc], hint, to=1), g.const(scale, f"{hint}.weight_scale")], hint)
    return g.op("Mul", [y, step], hint)


def _matmul_nbits(g: _Graph, codes: np.ndarray, scale: np.ndarray, x: str, hint: str) -> str:
    """4-bit weights packed two per byte, one block per column (block = K rounded up to a power of 2, at
    least 16), so the block scale is the channel scale; code c is stored as c + 8 (the default zero point)."""
    n, k = codes.shape
    block = max(16, 1 << (k - 1).bit_length())
    u = np.full((n, block), 8, dtype=np.uint8)
    u[:, :k] = (codes.astype(np.int16) + 8).astype(np.uint8)
    packed = (u[:, 0::2] | (u[:, 1::2] << 4)).reshape(n, 1, block // 2)
    return g.op("MatMulNBits", [x, g.const(packed, f"{hint}.weight", _U8), g.const(scale, f"{hint}.weight_scale")],
                hint, domain=MS, K=k, N=n, bits=4, block_size=block, accuracy_level=0)


def _conv_attrs(m: nn.modules.conv._ConvNd, groups: int) -> dict[str, Any]:
    if m.padding_mode != "zeros":
        raise ExportError(f"export supports zero-padded convolutions; {type(m).__name__} has padding_mode "
                          f"{m.padding_mode!r}")
    nd = len(m.kernel_size)
    if isinstance(m.padding, str):
        if m.padding == "valid":
            pads = [0] * (2 * nd)
        else:  # "same" (stride 1): torch puts the odd extra pad on the right, as SAME_UPPER does
            total = [d * (k - 1) for d, k in zip(m.dilation, m.kernel_size)]
            pads = [t // 2 for t in total] + [t - t // 2 for t in total]
    else:
        pads = list(m.padding) * 2
    return {"kernel_shape": list(m.kernel_size), "strides": list(m.stride), "dilations": list(m.dilation),
            "pads": pads, "group": groups}


def _conv(g: _Graph, ctx: _Ctx, m: nn.modules.conv._ConvNd, x: str, hint: str) -> str:
    from wattless.techniques.prune import _is_depthwise
    from wattless.techniques.quantize import _QuantMixin

    if m.transposed:
        raise ExportError(f"export does not support transposed convolutions ({hint})")
    w, s, b = _weights(ctx, m)
    groups = w.shape[0] if _is_depthwise(m) else m.groups
    attrs = _conv_attrs(m, groups)
    shape = [1, w.shape[0]] + [1] * len(m.kernel_size)  # broadcasts over (B, C, *spatial)
    if not isinstance(m, _QuantMixin) or m.act_bits is None:
        if isinstance(m, _QuantMixin):
            ctx.layers[hint] = f"int8 weights, DequantizeLinear + Conv (w{m.weight_bits}, float activations)"
            wf = g.op("DequantizeLinear", [g.const(w, f"{hint}.weight", _I8), g.const(s, f"{hint}.weight_scale")],
                      hint, axis=0)
        else:
            ctx.layers[hint] = "fp32 Conv"
            wf = g.const(w, f"{hint}.weight")
        inputs = [x, wf] + ([g.const(b, f"{hint}.bias")] if b is not None else [])
        return g.op("Conv", inputs, hint, **attrs)
    xq, a_scale, a_zero = _quantize_input(g, x, m, hint)
    ctx.layers[hint] = f"int8 ConvInteger (w{m.weight_bits}a{m.act_bits}, per-channel)"
    weight = g.const(w, f"{hint}.weight", _I8)
    acc = g.op("ConvInteger", [xq, weight, a_zero], hint, **attrs)
    step = float(np.asarray(_act_step(m)))
    y = g.op("Mul", [g.op("Cast", [acc], hint, to=1), g.const((step * s).reshape(shape), f"{hint}.scale")], hint)
    if b is not None:
        y = g.op("Add", [y, g.const(b.reshape(shape), f"{hint}.bias")], hint)
    g.root.qconv[y] = {"inputs": [xq, a_scale, a_zero, weight], "attrs": attrs, "step": step, "w_scale": s,
                       "bias": b, "hint": hint, "parts": g.nodes[-(4 if b is not None else 3):], "codes": w,
                       "weight_bits": m.weight_bits}
    return y


def _act_step(m: nn.Module) -> float:
    from wattless.techniques.quantize import act_scale

    return act_scale(m)[0]


def _batchnorm(g: _Graph, ctx: _Ctx, m: nn.modules.batchnorm._BatchNorm, x: str, hint: str) -> str:
    if m.running_mean is None:
        raise ExportError(f"export needs BatchNorm running statistics ({hint} has track_running_stats=False)")
    params = [ctx.keep.take_rows(m, _np(getattr(m, t)) if getattr(m, t) is not None else default)
              for t, default in (("weight", np.ones(m.num_features, _F32)), ("bias", np.zeros(m.num_features, _F32)),
                                 ("running_mean", None), ("running_var", None))]
    names = [g.const(p, f"{hint}.{t}") for p, t in zip(params, ("scale", "bias", "mean", "var"))]
    ctx.layers[hint] = "fp32 BatchNormalization"
    return g.op("BatchNormalization", [x, *names], hint, epsilon=float(m.eps))


def _pool(kind: str) -> Callable[..., str]:
    def emit(g: _Graph, ctx: _Ctx, m: nn.Module, x: str, hint: str) -> str:
        def tup(v: Any) -> list[int]:
            nd = int(type(m).__name__[-2])
            return list(v) if isinstance(v, (tuple, list)) else [v] * nd

        if getattr(m, "ceil_mode", False) or getattr(m, "return_indices", False):
            raise ExportError(f"export does not support ceil_mode or return_indices on {hint}")
        kernel = tup(m.kernel_size)
        stride = tup(m.stride if m.stride is not None else m.kernel_size)
        pad = tup(m.padding)
        attrs = {"kernel_shape": kernel, "strides": stride, "pads": pad * 2}
        if kind == "MaxPool":
            attrs["dilations"] = tup(m.dilation)
        else:
            attrs["count_include_pad"] = int(m.count_include_pad)
        return g.op(kind, [x], hint, **attrs)

    return emit


def _adaptive_pool(kind: str) -> Callable[..., str]:
    def emit(g: _Graph, ctx: _Ctx, m: nn.Module, x: str, hint: str) -> str:
        size = m.output_size if isinstance(m.output_size, (tuple, list)) else [m.output_size]
        if any(s != 1 for s in size):
            raise ExportError(f"export supports adaptive pooling to size 1 only; {hint} pools to {m.output_size}")
        return g.op(kind, [x], hint)

    return emit


def _flatten_module(g: _Graph, ctx: _Ctx, m: nn.Flatten, x: str, hint: str) -> str:
    if m.start_dim != 1 or m.end_dim != -1:
        raise ExportError(f"export supports Flatten(start_dim=1, end_dim=-1); {hint} has ({m.start_dim}, {m.end_dim})")
    return g.op("Flatten", [x], hint, axis=1)


def _gelu(g: _Graph, x: str, hint: str, approximate: str = "none") -> str:
    return g.op("FastGelu" if approximate == "tanh" else "Gelu", [x], hint, domain=MS)


def _elementwise(op_type: str, **attrs: Any) -> Callable[..., str]:
    def emit(g: _Graph, ctx: _Ctx, m: nn.Module, x: str, hint: str) -> str:
        return g.op(op_type, [x], hint, **attrs)

    return emit


def _identity(g: _Graph, ctx: _Ctx, m: nn.Module, x: str, hint: str) -> str:
    return x


def _clip(lo: float, hi: float) -> Callable[..., str]:
    def emit(g: _Graph, ctx: _Ctx, m: nn.Module, x: str, hint: str) -> str:
        return g.op("Clip", [x, g.const(lo, "clip.lo"), g.const(hi, "clip.hi")], hint)

    return emit


def _exit_head(g: _Graph, ctx: _Ctx, m: nn.Module, x: str, hint: str, rank: int) -> str:
    if rank > 2:  # global average pool over the dims after the channels
        x = g.op("ReduceMean", [x, g.const(list(range(2, rank)), "axes", _I64)], hint, keepdims=0)
    return _emit(g, ctx, m.classifier, x, f"{hint}.classifier", rank=2)


def _module_table() -> dict[type, Callable[..., str]]:
    return {
        nn.Linear: _linear, nn.Conv1d: _conv, nn.Conv2d: _conv, nn.Conv3d: _conv,
        nn.BatchNorm1d: _batchnorm, nn.BatchNorm2d: _batchnorm, nn.BatchNorm3d: _batchnorm,
        nn.ReLU: _elementwise("Relu"), nn.Sigmoid: _elementwise("Sigmoid"), nn.Tanh: _elementwise("Tanh"),
        nn.GELU: lambda g, c, m, x, h: _gelu(g, x, h, m.approximate),
        nn.SiLU: lambda g, c, m, x, h: g.op("Mul", [x, g.op("Sigmoid", [x], h)], h),
        nn.LeakyReLU: lambda g, c, m, x, h: g.op("LeakyRelu", [x], h, alpha=float(m.negative_slope)),
        nn.ELU: lambda g, c, m, x, h: g.op("Elu", [x], h, alpha=float(m.alpha)),
        nn.ReLU6: _clip(0.0, 6.0),
        nn.Hardtanh: lambda g, c, m, x, h: _clip(float(m.min_val), float(m.max_val))(g, c, m, x, h),
        nn.Softmax: lambda g, c, m, x, h: g.op("Softmax", [x], h, axis=int(m.dim if m.dim is not None else -1)),
        nn.Identity: _identity, nn.Dropout: _identity, nn.Dropout1d: _identity, nn.Dropout2d: _identity,
        nn.Flatten: _flatten_module,
        nn.MaxPool1d: _pool("MaxPool"), nn.MaxPool2d: _pool("MaxPool"),
        nn.AvgPool1d: _pool("AveragePool"), nn.AvgPool2d: _pool("AveragePool"),
        nn.AdaptiveAvgPool1d: _adaptive_pool("GlobalAveragePool"),
        nn.AdaptiveAvgPool2d: _adaptive_pool("GlobalAveragePool"),
        nn.AdaptiveMaxPool1d: _adaptive_pool("GlobalMaxPool"),
        nn.AdaptiveMaxPool2d: _adaptive_pool("GlobalMaxPool"),
    }


_MODULES = _module_table()


# transformers' activation modules, by class name (no import of transformers needed)
_NAMED = {"GELUActivation": lambda g, c, m, x, h: _gelu(g, x, h),
          "NewGELUActivation": lambda g, c, m, x, h: _gelu(g, x, h, "tanh"),
          "GELUTanh": lambda g, c, m, x, h: _gelu(g, x, h, "tanh"),
          "FastGELUActivation": lambda g, c, m, x, h: _gelu(g, x, h, "tanh")}


def _handler(m: nn.Module) -> Callable[..., str] | None:
    for cls in type(m).__mro__:  # Quant* and parametrized subclasses find their float base class
        if cls in _MODULES:
            return _MODULES[cls]
    return _NAMED.get(type(m).__name__)


# --- requantization: an integer conv whose output only feeds the next layer's quantizer -------------------

_THROUGH = ("Relu", "MaxPool", "Flatten", "Reshape")  # commute with a monotone per-tensor quantizer


def _inputs_deep(node: Any) -> list[str]:
    """A node's inputs, and the outer values its subgraphs (If branches) read."""
    names = list(node.input)
    for attr in node.attribute:
        if attr.g is not None and attr.g.node:
            names += [i for n in attr.g.node for i in _inputs_deep(n)]
    return names


def _fuse_requantize(g: _Graph, outputs: set[str]) -> None:
    """ConvInteger -> Cast -> Mul -> [Add] -> [Relu, MaxPool, Flatten] -> [Clip] -> QuantizeLinear becomes
    QLinearConv (integers in, the next layer's codes out) -> [Clip on codes] -> [MaxPool, Flatten].

    The bias becomes int32 in units of the accumulator (rounded: at most half an accumulator step off), the
    rest is the same rounding of the same values; ReLU is the clip at the zero point."""
    producer = {o: n for n in g.nodes for o in n.output}
    readers = {}
    for n in g.nodes:
        for i in _inputs_deep(n):
            readers[i] = readers.get(i, 0) + 1
    for name in outputs:
        readers[name] = readers.get(name, 0) + 1
    doomed, placed, here = set(), {}, {id(n) for n in g.nodes}
    for q in [n for n in g.nodes if n.op_type == "QuantizeLinear"]:
        chain, value, relu, clip = [], q.input[0], False, None
        node = producer.get(value)
        if node is not None and node.op_type == "Clip":
            clip, value = node, node.input[0]
            node = producer.get(value)
        while node is not None and node.op_type in _THROUGH and readers.get(value) == 1:
            relu |= node.op_type == "Relu"
            chain.append(node)
            value = node.input[0]
            node = producer.get(value)
        conv = g.root.qconv.get(value)
        if conv is None or readers.get(value) != 1 or any(readers.get(n.output[0]) != 1 for n in chain):
            continue
        parts = conv["parts"]
        if any(id(n) in doomed or id(n) not in here for n in parts):
            continue
        codes = _requantized_conv(g, conv, q, clip, relu, chain)
        g.root.fused.append(conv["hint"])
        doomed.update(id(n) for n in (*parts, *chain, q, *( [clip] if clip is not None else [])))
        placed[id(parts[0])] = codes
    if placed:
        g.nodes = [m for n in g.nodes for m in (placed.get(id(n)) or ([] if id(n) in doomed else [n]))]


def _requantized_conv(g: _Graph, conv: dict[str, Any], q: Any, clip: Any, relu: bool,
                      chain: list[Any]) -> list[Any]:
    from onnx import helper, numpy_helper

    inits = {t.name: t for t in g.root.inits}
    out_scale = float(numpy_helper.to_array(inits[q.input[1]]))
    out_zero = int(numpy_helper.to_array(inits[q.input[2]]))
    lo, hi = 0, 255
    if clip is not None:  # the next layer's k-bit range, in codes
        lo = max(lo, int(round(float(numpy_helper.to_array(inits[clip.input[1]])) / out_scale)) + out_zero)
        hi = min(hi, int(round(float(numpy_helper.to_array(inits[clip.input[2]])) / out_scale)) + out_zero)
    if relu:
        lo = max(lo, out_zero)
    hint, w_scale = conv["hint"], np.asarray(conv["w_scale"], _F32)
    xq, a_scale, a_zero, weight = conv["inputs"]
    spread = 2 ** (8 - conv["weight_bits"])  # k-bit codes times 2^(8-k) still fit int8
    spread = min(spread, 128 // max(1, int(np.abs(conv["codes"]).max())))
    if spread > 1:  # a finer accumulator unit: the int32 bias rounds 1/spread as far
        weight = g.const(conv["codes"].astype(np.int32) * spread, f"{hint}.weight_spread", _I8)
        w_scale = w_scale / spread
    inputs = [xq, a_scale, a_zero, weight, g.const(w_scale, f"{hint}.weight_scale"),
              g.const(np.zeros(len(w_scale), _I8), f"{hint}.weight_zero", _I8), q.input[1], q.input[2]]
    if conv["bias"] is not None:
        inputs.append(g.const(np.round(conv["bias"] / (conv["step"] * w_scale)), f"{hint}.bias_int32", np.int32))
    y = g.name(f"{hint}.QLinearConv")
    nodes = [helper.make_node("QLinearConv", inputs, [y], name=y, **conv["attrs"])]
    if (lo, hi) != (0, 255):
        c = g.name(f"{hint}.Clip")
        nodes.append(helper.make_node("Clip", [y, g.const(lo, "code_lo", _U8), g.const(hi, "code_hi", _U8)], [c],
                                      name=c))
        y = c
    for n in reversed(chain):  # MaxPool and Flatten on the codes, in their order
        if n.op_type == "Relu":
            continue
        out = g.name(f"{n.name}.codes")
        nodes.append(helper.make_node(n.op_type, [y, *n.input[1:]], [out], name=out,
                                      **{a.name: helper.get_attribute_value(a) for a in n.attribute}))
        y = out
    nodes.append(helper.make_node("Identity", [y], [q.output[0]], name=g.name(f"{hint}.requantized")))
    return nodes


# --- mixture of experts ---------------------------------------------------------------------------------

def _moe(g: _Graph, ctx: _Ctx, m: nn.Module, x: str, hint: str, rank: int) -> str:
    """Route every token with TopK, run each expert on its own tokens only, add them up."""
    xt = g.op("Transpose", [x], hint, perm=[0, *range(2, rank), 1]) if m.channels_first else x
    shape = g.op("Shape", [xt], hint)
    tokens = g.op("Reshape", [xt, g.const([-1, m.d_in], "shape", _I64)], hint)  # (N, d)
    probs = g.op("Softmax", [_emit(g, ctx, m.router, tokens, f"{hint}.router", rank=2)], hint, axis=-1)
    _, chosen = g.op("TopK", [probs, g.const([m.top_k], "k", _I64)], hint, outputs=2, axis=-1)  # (N, k)
    d_out = m.experts[0].fc2.out_features
    n = g.op("Slice", [g.op("Shape", [tokens], hint), g.const([0], "zero1", _I64), g.const([1], "one1", _I64)], hint)
    out = g.op("ConstantOfShape", [g.op("Concat", [n, g.const([d_out], "dout", _I64)], hint, axis=0)], hint,
               value=_tensor_attr(0.0))
    for e, expert in enumerate(m.experts):
        eh = f"{hint}.experts.{e}"
        mine = g.op("ReduceMax", [g.op("Cast", [g.op("Equal", [chosen, g.const(e, "e", _I64)], eh)], eh, to=6),
                                   g.const([1], "axis1", _I64)], eh, keepdims=0)  # (N,) 1 where routed here
        rows = g.op("NonZero", [mine], eh)  # (1, n_e)
        picked = g.op("Gather", [tokens, g.op("Squeeze", [rows, g.const([0], "axis0", _I64)], eh)], eh, axis=0)
        y = _emit(g, ctx, expert, picked, eh, rank=2)  # (n_e, d_out)
        out = g.op("ScatterND", [out, g.op("Transpose", [rows], eh, perm=[1, 0]), y], eh, reduction="add")
    if m.bias is not None:
        out = g.op("Add", [out, g.const(_np(m.bias), f"{hint}.bias")], hint)
    lead = g.op("Slice", [shape, g.const([0], "zero1", _I64), g.const([-1], "minus1", _I64)], hint)
    y = g.op("Reshape", [out, g.op("Concat", [lead, g.const([d_out], "dout", _I64)], hint, axis=0)], hint)
    route = g.op("Reshape", [chosen, g.op("Concat", [lead, g.const([m.top_k], "k", _I64)], hint, axis=0)], hint)
    ctx.routes[hint] = (route, len(m.experts))
    ctx.layers[f"{hint}.router"] = f"TopK-{m.top_k} of {len(m.experts)} experts; each runs only on its tokens"
    return g.op("Transpose", [y], hint, perm=[0, rank - 1, *range(1, rank - 1)]) if m.channels_first else y


def _tensor_attr(value: float) -> Any:
    from onnx import helper

    return helper.make_tensor("value", 1, [1], [value])


# --- walking a model: leaf modules, torch.fx graphs for the rest ----------------------------------------

class _LeafTracer(fx.Tracer):
    def is_leaf_module(self, m: nn.Module, qualname: str) -> bool:
        from wattless.techniques.early_exit import ExitHead
        from wattless.techniques.moe import MoEMLP

        return _handler(m) is not None or isinstance(m, (MoEMLP, ExitHead)) or super().is_leaf_module(m, qualname)


def _emit(g: _Graph, ctx: _Ctx, m: nn.Module, x: str, hint: str, rank: int) -> str:
    """Emit module ``m`` applied to value ``x`` (a tensor of ``rank`` dims); returns the output value."""
    from wattless.techniques.early_exit import ExitHead
    from wattless.techniques.moe import MoEMLP

    hint = ctx.names.get(id(m), hint)
    handler = _handler(m)
    if handler is not None:
        return handler(g, ctx, m, x, hint)
    if isinstance(m, MoEMLP):
        return _moe(g, ctx, m, x, hint, rank)
    if isinstance(m, ExitHead):
        return _exit_head(g, ctx, m, x, hint, rank)
    if isinstance(m, nn.Sequential):
        for child in m:
            x = _emit(g, ctx, child, x, hint, rank=ctx.ranks.get(id(child), rank))
        return x
    try:
        graph = _LeafTracer().trace(m)
    except Exception as exc:
        raise ExportError(f"export cannot trace {type(m).__name__} ({hint or 'the model'}) with torch.fx: "
                          f"{type(exc).__name__}: {exc}; give it a forward without control flow on values") from None
    return _emit_fx(g, ctx, m, graph, x, hint)


_BINARY = {operator.add: "Add", torch.add: "Add", operator.mul: "Mul", torch.mul: "Mul", operator.sub: "Sub",
           torch.sub: "Sub", operator.truediv: "Div", torch.div: "Div", "add": "Add", "mul": "Mul", "sub": "Sub",
           "div": "Div"}
_UNARY = {torch.relu: "Relu", F.relu: "Relu", "relu": "Relu", torch.sigmoid: "Sigmoid", "sigmoid": "Sigmoid",
          torch.tanh: "Tanh", "tanh": "Tanh", F.sigmoid: "Sigmoid", F.tanh: "Tanh"}
_PASS = {"contiguous", "clone", F.dropout, "float"}


def _emit_fx(g: _Graph, ctx: _Ctx, root: nn.Module, graph: fx.Graph, x: str, hint: str) -> str:
    modules = dict(root.named_modules())
    env: dict[fx.Node, Any] = {}
    placeholders = [n for n in graph.nodes if n.op == "placeholder"]
    if len(placeholders) != 1:
        raise ExportError(f"export supports modules whose forward takes one tensor; {type(root).__name__} takes "
                          f"{len(placeholders)} arguments")
    for node in graph.nodes:
        if node.op == "placeholder":
            env[node] = x
        elif node.op == "output":
            return env[node.args[0]]
        elif node.op == "call_module":
            sub = modules[node.target]
            name = f"{hint}.{node.target}" if hint else node.target
            env[node] = _emit(g, ctx, sub, env[node.args[0]], name, rank=ctx.ranks.get(id(sub), 2))
        elif node.op in ("call_function", "call_method"):
            env[node] = _emit_call(g, node, env, hint or "f")
        else:
            raise ExportError(f"export does not support {node.op} nodes ({node.target}) in {type(root).__name__}")
    raise ExportError(f"{type(root).__name__}'s traced graph has no output")


_BATCH = object()  # x.size(0) / x.shape[0]: the batch dimension, which a Reshape copies with 0


def _emit_call(g: _Graph, node: fx.Node, env: dict[fx.Node, Any], hint: str) -> Any:
    t, args = node.target, [env[a] if isinstance(a, fx.Node) else a for a in node.args]
    if t in _PASS:
        return args[0]
    if t in _UNARY:
        return g.op(_UNARY[t], [args[0]], hint)
    if t in _BINARY and len(args) == 2:
        a, b = (v if isinstance(v, str) else g.const(float(v), "scalar") for v in args)
        return g.op(_BINARY[t], [a, b], hint)
    if t in (torch.flatten, "flatten"):
        start = args[1] if len(args) > 1 else node.kwargs.get("start_dim", 0)
        end = args[2] if len(args) > 2 else node.kwargs.get("end_dim", -1)
        if (start, end) == (1, -1):
            return g.op("Flatten", [args[0]], hint, axis=1)
    if t == "size" and args[1:] == [0]:
        return _BATCH
    if t is getattr and args[1] == "shape":
        return ("shape", args[0])
    if t is operator.getitem and isinstance(args[0], tuple) and args[0][0] == "shape" and args[1] == 0:
        return _BATCH
    if t in ("view", "reshape", torch.reshape):
        dims = args[1] if len(args) == 2 and isinstance(args[1], (tuple, list)) else args[1:]
        if all(d is _BATCH or isinstance(d, int) for d in dims):
            shape = [0 if d is _BATCH else d for d in dims]
            return g.op("Reshape", [args[0], g.const(shape, "shape", _I64)], hint)
    if t in (torch.cat, torch.concat):
        dim = args[1] if len(args) > 1 else node.kwargs.get("dim", 0)
        return g.op("Concat", list(args[0]), hint, axis=int(dim))
    if t in (F.softmax, torch.softmax, "softmax"):
        dim = args[1] if len(args) > 1 else node.kwargs.get("dim", -1)
        return g.op("Softmax", [args[0]], hint, axis=int(dim))
    if t in (F.gelu,):
        return _gelu(g, args[0], hint, node.kwargs.get("approximate", "none"))
    if t in (torch.mean, "mean") and len(args) >= 2:
        dims = args[1] if isinstance(args[1], (tuple, list)) else [args[1]]
        keep = bool(args[2]) if len(args) > 2 else bool(node.kwargs.get("keepdim", False))
        return g.op("ReduceMean", [args[0], g.const(list(dims), "axes", _I64)], hint, keepdims=int(keep))
    name = getattr(t, "__name__", str(t))
    raise ExportError(f"export does not support the call {name}({', '.join(map(str, node.args))}) in the model's "
                      "forward; supported: activations, +-*/, flatten, view/reshape to (batch, ...), cat, softmax, "
                      "mean, and the layers listed in docs/EXPORT.md")


def _ranks(model: nn.Module, example: torch.Tensor) -> dict[int, int]:
    """The rank of each module's first input on an example forward (pooling and routing need it)."""
    ranks: dict[int, int] = {}

    def hook(module, args):
        if args and isinstance(args[0], torch.Tensor):
            ranks.setdefault(id(module), args[0].dim())

    handles = [m.register_forward_pre_hook(hook) for m in model.modules()]
    try:
        with torch.no_grad():
            _run_full(model, example)
    finally:
        for h in handles:
            h.remove()
    return ranks


def _run_full(model: nn.Module, x: torch.Tensor) -> Any:
    from wattless.techniques.base import full_path

    with full_path(model):  # every exit and expert runs, so every module's rank is seen
        return model(x)


# --- early exits: If nodes --------------------------------------------------------------------------------

def _segments(model: nn.Module) -> list[tuple[list[tuple[str, nn.Module]], nn.Module | None]]:
    """The chain cut at each exit: [(blocks up to and including the exit's block, its head)], the last head
    None (the rest runs the tail)."""
    segments, current = [], []
    for name, block in model.blocks.named_children():
        current.append((name, block))
        if name in model.exits:
            segments.append((current, model.exits[name]))
            current = []
    segments.append((current, None))
    return segments


def _emit_exits(g: _Graph, ctx: _Ctx, model: nn.Module, x: str, classes: int) -> tuple[str, str]:
    """Outputs (logits (B, classes), exit index (B,)) of an EarlyExitModel; rows stop at their first
    confident exit, and the blocks after it see only the rows still going."""
    from onnx import TensorProto, helper

    segments, thresholds = _segments(model), model.thresholds.detach().cpu().numpy()
    prefix = model.prefix

    def run(graph: _Graph, h: str, k: int) -> tuple[str, str]:
        blocks, head = segments[k]
        for name, block in blocks:
            h = _emit(graph, ctx, block, h, f"{prefix}{name}", rank=ctx.ranks.get(id(block), 2))
        if head is None:
            logits = h if model.tail is None else _emit(graph, ctx, model.tail, h, "tail",
                                                        rank=ctx.ranks.get(id(model.tail), 2))
            batch = graph.op("Slice", [graph.op("Shape", [logits], "tail"), graph.const([0], "zero1", _I64),
                                        graph.const([1], "one1", _I64)], "tail")
            taken = graph.op("Expand", [graph.const(k, "k", _I64), batch], "tail")
            return logits, taken
        hh = f"exits.{prefix}{blocks[-1][0]}"
        logits = _emit(graph, ctx, head, h, hh, rank=ctx.ranks.get(id(head), 2))
        conf = graph.op("ReduceMax", [graph.op("Softmax", [logits], hh, axis=-1), graph.const([-1], "minus1", _I64)],
                        hh, keepdims=0)
        going = graph.op("Less", [conf, graph.const(thresholds[k], f"{hh}.threshold")], hh)  # (B,)
        rows = graph.op("NonZero", [going], hh)  # (1, n)
        index = graph.op("Squeeze", [rows, graph.const([0], "axis0", _I64)], hh)
        any_going = graph.op("Greater", [graph.op("Size", [index], hh), graph.const(0, "zero", _I64)], hh)
        then = graph.sub()
        rest_logits, rest_taken = run(then, then.op("Gather", [h, index], hh, axis=0), k + 1)
        then_out = [then.op("Identity", [rest_logits], hh), then.op("Identity", [rest_taken], hh)]
        other = graph.sub()
        empty = [other.op("Identity", [other.const(np.zeros((0, classes), _F32), "no_rows")], hh),
                 other.op("Identity", [other.const(np.zeros((0,), _I64), "no_exits", _I64)], hh)]
        shapes = [["n", classes], ["n"]]
        branches = {}
        for key, body, outs in (("then_branch", then, then_out), ("else_branch", other, empty)):
            if ctx.fuse:
                _fuse_requantize(body, set(outs))
            values = [_value(o, TensorProto.FLOAT if i == 0 else TensorProto.INT64, shapes[i])
                      for i, o in enumerate(outs)]
            branches[key] = helper.make_graph(body.nodes, graph.name(f"{hh}.{key}"), [], values)
        later_logits, later_taken = graph.op("If", [any_going], hh, outputs=2, **branches)
        where = graph.op("Transpose", [rows], hh, perm=[1, 0])  # (n, 1)
        taken_here = graph.op("Expand", [graph.const(k, "k", _I64), graph.op("Shape", [conf], hh)], hh)
        return (graph.op("ScatterND", [logits, where, later_logits], hh),
                graph.op("ScatterND", [taken_here, where, later_taken], hh))

    return run(g, x, 0)


# --- classifiers -----------------------------------------------------------------------------------------

def _is_graph_tensor(v: Any) -> bool:
    if isinstance(v, (list, tuple)):
        return any(_is_graph_tensor(t) for t in v)
    return isinstance(v, torch.Tensor) and v.grad_fn is not None


def _prepare(model: nn.Module) -> nn.Module:
    """A baked eval copy. Tensors the last training forward left on modules (soft probabilities, exit logits)
    belong to an autograd graph, which neither export nor copy needs: they are dropped first."""
    from wattless.techniques.prune import bake_masks

    for m in model.modules():
        for key in [k for k, v in vars(m).items() if not k.startswith("_") and _is_graph_tensor(v)]:
            setattr(m, key, None)
    model = copy.deepcopy(model).eval()
    for m in model.modules():  # a copy shares its parametrized class with the original; baking edits the class
        if parametrize.is_parametrized(m):
            body = {k: v for k, v in vars(type(m)).items() if k not in ("__dict__", "__weakref__")}
            m.__class__ = type(type(m).__name__, type(m).__bases__, body)
    bake_masks(model)
    return model


def _build_classifier(model: nn.Module, example: torch.Tensor, workload: str,
                      fuse: bool) -> tuple[Any, _Ctx, dict[str, Any]]:
    from onnx import TensorProto, helper

    from wattless.techniques.early_exit import EarlyExitModel

    exits = isinstance(model, EarlyExitModel)
    keep = _Keep() if exits else _find_removable(model)
    ctx = _Ctx(keep, fuse)
    ctx.names = {id(m): n for n, m in model.named_modules()}
    ctx.ranks = _ranks(model, example[:2])
    with torch.no_grad():
        classes = int(_run_full(model, example[:2]).shape[-1])
    g = _Graph()
    outputs = [_value("logits", TensorProto.FLOAT, ["batch", classes])]
    if exits:
        logits, taken = _emit_exits(g, ctx, model, "x", classes)
        g.nodes.append(helper.make_node("Identity", [taken], ["exit"], name="exit"))
        outputs.append(_value("exit", TensorProto.INT64, ["batch"]))
    else:
        logits = _emit(g, ctx, model, "x", "", rank=example.dim())
    g.nodes.append(helper.make_node("Identity", [logits], ["logits"], name="logits"))
    routes = {}
    for block, (value, experts) in ctx.routes.items():
        name = f"route.{block}"
        g.nodes.append(helper.make_node("Identity", [value], [name], name=name))
        outputs.append(_value(name, TensorProto.INT64, None))
        routes[block] = {"output": name, "experts": experts}
    shape = list(example.shape[1:])
    if fuse:
        _fuse_requantize(g, {o.name for o in outputs})
    for hint in g.fused:
        ctx.layers[hint] = ctx.layers[hint].replace("ConvInteger", "QLinearConv, requantized to the next layer's codes")
    graph = helper.make_graph(g.nodes, f"wattless-{workload}", [_value("x", TensorProto.FLOAT, ["batch", *shape])],
                              outputs, g.inits)
    meta = {"kind": "classifier", "input": {"name": "x", "dtype": "float32", "shape": shape}, "classes": classes,
            "outputs": {"output": "logits", "exit": "exit" if exits else None, "routes": routes},
            "exits": [{"after": n, "threshold": float(t) if math.isfinite(t) else None}
                      for n, t in zip(model.exit_names, model.thresholds.tolist())] if exits else []}
    return graph, ctx, meta


# --- BERT sentence encoders --------------------------------------------------------------------------------

def _is_bert(model: nn.Module) -> bool:
    enc = getattr(model, "encoder", None)
    return hasattr(model, "embeddings") and hasattr(getattr(enc, "layer", None), "__len__") and hasattr(model, "config")


def _bert_check(model: nn.Module) -> None:
    cfg = model.config
    act = getattr(cfg, "hidden_act", "gelu")
    if getattr(cfg, "position_embedding_type", "absolute") != "absolute" or act not in ("gelu", "gelu_new"):
        raise ExportError(f"export supports BERT encoders with absolute positions and GELU; this one has "
                          f"position_embedding_type={getattr(cfg, 'position_embedding_type', None)!r}, "
                          f"hidden_act={act!r}")
    if getattr(cfg, "is_decoder", False):
        raise ExportError("export supports BERT encoders, not decoders")


def _kept_heads(att: nn.Module, out_dense: nn.Module, heads: int) -> np.ndarray:
    """Heads whose columns of the output projection are not all zero (pruned heads are zeroed whole)."""
    size = out_dense.weight.shape[1] // heads
    cols = out_dense.weight.detach().reshape(out_dense.weight.shape[0], heads, size)
    alive = (cols != 0).any(0).any(-1).cpu().numpy()  # (heads,)
    if not alive.any():
        alive[0] = True
    return np.flatnonzero(alive)


def _kept_neurons(fc2: nn.Module) -> np.ndarray:
    alive = (fc2.weight.detach() != 0).any(0).cpu().numpy()
    if not alive.any():
        alive[0] = True
    return np.flatnonzero(alive)


def _bert_layer(g: _Graph, ctx: _Ctx, layer: nn.Module, x: str, i: int, eps: float, heads: int) -> str:
    from wattless.techniques.moe import MoEMLP

    p = f"encoder.layer.{i}"
    att, out = layer.attention.self, layer.attention.output
    size = att.query.weight.shape[0] // heads
    kept = _kept_heads(att, out.dense, heads)
    rows = (kept[:, None] * size + np.arange(size)[None, :]).reshape(-1)
    for proj in (att.query, att.key, att.value):
        ctx.keep.index[(id(proj), "weight", 0)] = ctx.keep.index[(id(proj), "bias", 0)] = rows
    ctx.keep.index[(id(out.dense), "weight", 1)] = rows
    if len(kept) < heads:
        ctx.keep.removed[f"{p}.attention"] = {"kept": int(len(kept)), "total": heads}
    q, k, v = (_linear(g, ctx, proj, x, f"{p}.attention.self.{n}")
               for proj, n in ((att.query, "query"), (att.key, "key"), (att.value, "value")))
    a = g.op("MultiHeadAttention", [q, k, v], f"{p}.attention", domain=MS, num_heads=int(len(kept)),
             scale=1.0 / math.sqrt(size))
    o = _linear(g, ctx, out.dense, a, f"{p}.attention.output.dense")
    x1 = _skip_norm(g, o, x, out.LayerNorm, f"{p}.attention.output.LayerNorm", eps)
    if isinstance(layer.intermediate, MoEMLP):
        y = _moe(g, ctx, layer.intermediate, x1, f"{p}.intermediate", rank=3)
    else:
        fc1, fc2 = layer.intermediate.dense, layer.output.dense
        neurons = _kept_neurons(fc2)
        ctx.keep.index[(id(fc1), "weight", 0)] = ctx.keep.index[(id(fc1), "bias", 0)] = neurons
        ctx.keep.index[(id(fc2), "weight", 1)] = neurons
        if len(neurons) < fc2.weight.shape[1]:
            ctx.keep.removed[f"{p}.intermediate"] = {"kept": int(len(neurons)), "total": int(fc2.weight.shape[1])}
        h = _gelu(g, _linear(g, ctx, fc1, x1, f"{p}.intermediate.dense"), f"{p}.intermediate")
        y = _linear(g, ctx, fc2, h, f"{p}.output.dense")
    return _skip_norm(g, y, x1, layer.output.LayerNorm, f"{p}.output.LayerNorm", eps)


def _skip_norm(g: _Graph, y: str, skip: str, norm: nn.LayerNorm, hint: str, eps: float) -> str:
    """LayerNorm(y + skip). Add + LayerNormalization, not com.microsoft SkipLayerNormalization: in onnxruntime
    1.32 on CPU the fused kernel takes about 6 times as long (155 against 26 us on 64 x 384)."""
    return g.op("LayerNormalization", [g.op("Add", [y, skip], hint), g.const(_np(norm.weight), f"{hint}.weight"),
                                       g.const(_np(norm.bias), f"{hint}.bias")], hint, axis=-1,
                epsilon=float(norm.eps if norm.eps is not None else eps))


def _word_embeddings(g: _Graph, ctx: _Ctx, table: np.ndarray, ids: str) -> str:
    """The word table (most of a small encoder's file) as int8 codes, one scale per 32 values of a row,
    read by GatherBlockQuantized: only the gathered rows are dequantized. The QAT never saw this rounding
    (at most half a step, a 254th of the largest of 32 values); the parity check covers it."""
    name = "embeddings.word_embeddings"
    vocab, dim = table.shape
    block = next((b for b in (32, 16) if dim % b == 0), None)
    if block is None:
        ctx.layers[name] = "fp32 Gather"
        return g.op("Gather", [g.const(table, name), ids], "embeddings", axis=0)
    blocks = table.reshape(vocab, dim // block, block)
    scale = np.maximum(np.abs(blocks).max(-1) / 127, np.finfo(np.float32).tiny).astype(_F32)  # (vocab, dim/block)
    codes = np.clip(np.round(blocks / scale[..., None]), -127, 127).reshape(vocab, dim) + 128
    ctx.layers[name] = f"int8 rows, a scale per {block} values (GatherBlockQuantized)"
    return g.op("GatherBlockQuantized", [g.const(codes, name, _U8), ids, g.const(scale, f"{name}.scale"),
                                         g.const(np.full(scale.shape, 128), f"{name}.zero", _U8)],
                "embeddings", domain=MS, gather_axis=0, quantize_axis=1, block_size=block, bits=8)


def _build_bert(model: nn.Module, workload: str) -> tuple[Any, _Ctx, dict[str, Any]]:
    from onnx import TensorProto, helper

    _bert_check(model)
    cfg = model.config
    ctx = _Ctx(_Keep())
    g = _Graph()
    emb = model.embeddings
    ids = "input_ids"
    length = g.op("Gather", [g.op("Shape", [ids], "embeddings"), g.const(1, "one", _I64)], "embeddings")
    positions = g.op("Range", [g.const(0, "zero", _I64), length, g.const(1, "one", _I64)], "embeddings")
    words = _word_embeddings(g, ctx, _np(emb.word_embeddings.weight), ids)
    pos = g.op("Gather", [g.const(_np(emb.position_embeddings.weight), "embeddings.position_embeddings"),
                          positions], "embeddings", axis=0)
    token_type = _np(emb.token_type_embeddings.weight)[0]  # token_type_ids are all 0 (one sentence)
    e = g.op("Add", [g.op("Add", [words, pos], "embeddings"), g.const(token_type, "embeddings.token_type")],
             "embeddings")
    x = g.op("LayerNormalization", [e, g.const(_np(emb.LayerNorm.weight), "embeddings.LayerNorm.weight"),
                                    g.const(_np(emb.LayerNorm.bias), "embeddings.LayerNorm.bias")],
             "embeddings", axis=-1, epsilon=float(emb.LayerNorm.eps))
    for i, layer in enumerate(model.encoder.layer):
        x = _bert_layer(g, ctx, layer, x, i, cfg.layer_norm_eps, cfg.num_attention_heads)
    pooled = g.op("ReduceMean", [x, g.const([1], "axis1", _I64)], "pool", keepdims=0)  # no padding: a plain mean
    g.nodes.append(helper.make_node("LpNormalization", [pooled], ["embedding"], name="embedding", axis=-1, p=2))
    outputs = [_value("embedding", TensorProto.FLOAT, ["batch", cfg.hidden_size])]
    routes = {}
    for block, (value, experts) in ctx.routes.items():
        name = f"route.{block}"
        g.nodes.append(helper.make_node("Identity", [value], [name], name=name))
        outputs.append(_value(name, TensorProto.INT64, None))
        routes[block] = {"output": name, "experts": experts}
    graph = helper.make_graph(g.nodes, f"wattless-{workload}", [_value(ids, TensorProto.INT64, ["batch", "tokens"])],
                              outputs, g.inits)
    meta = {"kind": "sentence-encoder", "input": {"name": ids, "dtype": "int64", "vocab_size": int(cfg.vocab_size),
                                                  "max_tokens": int(cfg.max_position_embeddings)},
            "embedding_dim": int(cfg.hidden_size), "tokenizer": workload if workload == "minilm" else None,
            "outputs": {"output": "embedding", "exit": None, "routes": routes}, "exits": []}
    return graph, ctx, meta


# --- parity ----------------------------------------------------------------------------------------------

class _Session(nn.Module):
    """An exported classifier behind a module forward, for the workload's evaluate."""

    def __init__(self, path: Path) -> None:
        super().__init__()
        from wattless.runtime import load

        self.runtime = load(path)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.from_numpy(self.runtime.run(x.detach().cpu().numpy()).outputs)


def _check_classifier(model: nn.Module, path: Path, workload: Any, tol: Tolerance,
                      requantized: bool = False) -> Parity:
    from wattless.runtime import load

    runtime = load(path)
    x = workload.test.inputs
    ref, got, agree = [], [], []
    with torch.no_grad():
        for i in range(0, len(x), 256):
            batch = x[i : i + 256]
            ref.append(model(batch).float().numpy())
            result = runtime.run(batch.numpy())
            got.append(result.outputs)
            if getattr(model, "last_exits", None) is not None and result.paths and result.paths[0].exit is not None:
                agree.append(model.last_exits.cpu().numpy() == np.array([p.exit for p in result.paths]))
    ref_a, got_a = np.concatenate(ref), np.concatenate(got)
    diff = np.abs(ref_a - got_a).reshape(len(ref_a), -1).max(1)
    bound = tol.atol + tol.rtol * np.abs(ref_a).reshape(len(ref_a), -1).max(1)
    name = workload.metric_name
    metric_torch = workload.evaluate(model, workload.test)[name]
    metric_onnx = workload.evaluate(_Session(path), workload.test)[name]
    within = float((diff <= bound).mean())
    same = float((ref_a.argmax(-1) == got_a.argmax(-1)).mean())
    passed = ((within >= tol.min_within or requantized) and same >= tol.min_agree
              and abs(metric_onnx - metric_torch) <= tol.metric_atol)
    return Parity(passed, len(ref_a), within, float(diff.max()), name, float(metric_torch), float(metric_onnx),
                  tol, float(np.concatenate(agree).mean()) if agree else None, same, requantized)


def _check_encoder(model: nn.Module, path: Path, workload: Any, tol: Tolerance,
                   requantized: bool = False) -> Parity:
    from wattless.runtime import load
    from wattless.workloads.minilm import embed, load_tokenizer

    sentences = list(workload.test.inputs)
    runtime = load(path)
    got = runtime.embed(sentences)
    ref = embed(model, load_tokenizer(), sentences).numpy()
    cos = (got * ref).sum(1) / np.maximum(np.linalg.norm(ref, axis=1) * np.linalg.norm(got, axis=1), 1e-12)
    name = workload.metric_name
    metric_torch = workload.evaluate(model, workload.test)[name]
    metric_onnx = _encoder_metrics(runtime, workload)[name]
    within = float((cos >= tol.min_cosine).mean())
    passed = within >= tol.min_within and abs(metric_onnx - metric_torch) <= tol.metric_atol
    return Parity(passed, len(cos), within, float(1 - cos.min()), name, float(metric_torch), float(metric_onnx), tol)


def _check_forms(path: Path, workload: Any, kind: str) -> None:
    """Where the runtime turned the file's u8 weights to s8 for this CPU, both forms must give the same
    outputs bit for bit (their int32 accumulators are equal), so the file as written is checked too."""
    from wattless.runtime import load

    fast = load(path)
    if not fast.kernels or not fast.kernels.converted:
        return
    written = load(path, kernels="as-written")
    if kind == "sentence-encoder":
        sentences = list(workload.test.inputs)[:16]
        a, b = fast.embed(sentences), written.embed(sentences)
    else:
        x = workload.test.inputs[:64].numpy()
        a, b = fast(x), written(x)
    if not np.array_equal(a, b):
        raise ParityError(f"the export's portable form (u8 weights) and this CPU's u8 x s8 form differ (largest "
                          f"difference {float(np.abs(a - b).max()):.3g}); nothing was written. Please report this: "
                          "both are exact integer products")


def _encoder_metrics(runtime: Any, workload: Any) -> dict[str, float]:
    from wattless.workloads.minilm import fidelity, reference_embeddings

    sentences = list(workload.test.inputs)
    return fidelity(torch.from_numpy(runtime.embed(sentences)), reference_embeddings(sentences))


# --- the entry points ------------------------------------------------------------------------------------

def _save(graph: Any, meta: dict[str, Any], path: Path) -> None:
    import onnx
    from onnx import helper

    used = {i for n in graph.node for i in _inputs_deep(n)}
    kept = [t for t in graph.initializer if t.name in used]  # fusion leaves some constants unread
    del graph.initializer[:]
    graph.initializer.extend(kept)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET), helper.make_opsetid(MS, 1)],
                              producer_name="wattless")
    model.ir_version = min(model.ir_version, 10)  # what onnxruntime 1.18+ reads
    if meta.get("int8_kernel", "portable") == "portable":
        to_portable(model)
    forms: dict[str, int] = {}
    for product in integer_products(model):
        forms[product.weight_form] = forms.get(product.weight_form, 0) + 1
    meta["integer_products"] = forms
    for key, value in {"format": FORMAT, **meta}.items():
        entry = model.metadata_props.add()
        entry.key, entry.value = f"wattless.{key}", json.dumps(value)
    onnx.save(model, str(path))


def _set_meta(path: Path, updates: dict[str, Any]) -> None:
    import onnx

    model = onnx.load(str(path))
    for key, value in updates.items():
        entry = model.metadata_props.add()
        entry.key, entry.value = f"wattless.{key}", json.dumps(value)
    onnx.save(model, str(path))


def export_model(model: nn.Module, workload: Any, out: str | Path, *, tolerance: Tolerance | None = None,
                 check: bool = True, requantize: bool | None = None, int8_kernel: str = "portable") -> ExportReport:
    """Export ``model`` (a wattless-optimized module of ``workload``) to the ONNX file ``out``.

    ``int8_kernel``: "portable" (exact on every CPU: u8 weights where u8 x s8 pair sums could saturate) or
    "vnni" (s8 weights everywhere: exact only on CPUs with VNNI or AMX); see wattless.kernels.

    ``requantize``: fuse each integer conv with the next layer's quantizer (QLinearConv, integers in and out).
    Its int32 bias rounds the float bias the QAT trained to the accumulator's grid, which can flip codes;
    None (default) tries it and keeps it only if the parity check passes, else exports the exact path.
    The parity check runs on the workload's test split; a failure raises ParityError and leaves nothing at
    ``out`` (an existing file there is kept unchanged)."""
    from wattless.workloads import get_workload

    if int8_kernel not in INT8_KERNELS:
        raise ExportError(f"int8_kernel {int8_kernel!r}: choose one of {', '.join(INT8_KERNELS)}")
    wl = get_workload(workload) if isinstance(workload, str) else workload
    out = Path(out)
    if out.exists() and out.is_dir():
        raise ExportError(f"--out {out} is a directory; give a file path such as {out / 'model.onnx'}")
    out.parent.mkdir(parents=True, exist_ok=True)
    tol = tolerance or Tolerance()
    model = _prepare(model)
    bert = _is_bert(model)
    example = None if bert else wl.example_input(2)
    if not bert and not isinstance(example, torch.Tensor):
        raise ExportError(f"export supports classifiers taking one tensor and BERT sentence encoders; "
                          f"workload {wl.name!r} feeds {type(example).__name__}")
    modes = [False] if bert or requantize is False else [True] if requantize else [True, False]
    notes: list[str] = []
    for fuse in modes:
        graph, ctx, meta = (_build_bert(model, wl.name) if bert
                            else _build_classifier(model, example.float(), wl.name, fuse))
        if fuse and not any(n.op_type == "QLinearConv" for n in _all_nodes(graph)):
            modes = [fuse]  # nothing was fused: the exact path is this one
        meta.update(workload=wl.name, layers=ctx.layers, removed=ctx.keep.removed, int8_kernel=int8_kernel)
        fused = any(n.op_type == "QLinearConv" for n in _all_nodes(graph))
        parity = _write_checked(graph, meta, model, wl, out, tol if check else None, last=fuse == modes[-1],
                                requantized=fused)
        if parity is None or parity.passed:
            if fused and parity is not None:
                notes.append(f"fused integer requantization (QLinearConv): its int32 biases round the trained float "
                             f"biases, so {100 * parity.within:.1f}% of the logits match PyTorch within the output "
                             f"tolerance and {100 * parity.agree:.2f}% of the classes agree; --exact exports the "
                             "exact path")
            break
        notes.append(f"fused integer requantization (QLinearConv, int32 bias) was rejected: {parity.describe()}; "
                     "the exact path (ConvInteger + float scale and bias) is exported instead")
    return ExportReport(path=out, kind=meta["kind"], workload=wl.name, size_bytes=out.stat().st_size,
                        parity=parity if check else None, layers=ctx.layers, removed=ctx.keep.removed,
                        exits=meta["exits"], routes={k: v["experts"] for k, v in meta["outputs"]["routes"].items()},
                        notes=notes + _notes(model, ctx) + _kernel_notes(meta), int8_kernel=int8_kernel,
                        integer_products=meta["integer_products"])


def _kernel_notes(meta: dict[str, Any]) -> list[str]:
    forms = meta["integer_products"]
    if meta["int8_kernel"] == "vnni" and forms.get("s8"):
        return ["--int8-kernel vnni: s8 weights everywhere; exact only on CPUs with AVX-512 VNNI, AVX-VNNI or AMX "
                "(ONNX Runtime's u8 x s8 kernel saturates on AVX2 without VNNI; wattless.runtime refuses it there)"]
    if forms.get("u8"):
        return [f"{forms['u8']} integer products hold u8 weights (code + 128, zero point 128): exact on every CPU; "
                "wattless.runtime runs them as u8 x s8 where the CPU sums those exactly (VNNI, AMX)"]
    return []


def _all_nodes(graph: Any) -> list[Any]:
    return [m for n in graph.node for m in [n, *(k for a in n.attribute if a.g is not None for k in a.g.node)]]


def _write_checked(graph: Any, meta: dict[str, Any], model: nn.Module, wl: Any, out: Path, tol: Tolerance | None,
                   last: bool, requantized: bool = False) -> Parity | None:
    """Write to a temporary file beside ``out``, check parity, then move it into place (atomic). A failed
    check raises ParityError if ``last``, else returns the failed Parity; nothing is left behind either way."""
    fd, tmp_name = tempfile.mkstemp(prefix=f".{out.name}.", suffix=".tmp", dir=out.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        _save(graph, meta, tmp)
        parity = None
        if tol is not None:
            checker = _check_encoder if meta["kind"] == "sentence-encoder" else _check_classifier
            parity = checker(model, tmp, wl, tol, requantized)
            if not parity.passed:
                if not last:
                    return parity
                raise ParityError(f"export parity check failed: {parity.describe()}; nothing was written to {out}. "
                                  "Compare the run's metrics.json with the model, or loosen the Tolerance if the "
                                  "difference is expected")
            _check_forms(tmp, wl, meta["kind"])
            _set_meta(tmp, {"parity": parity.to_json()})
        os.replace(tmp, out)
        return parity
    finally:
        tmp.unlink(missing_ok=True)


def _notes(model: nn.Module, ctx: _Ctx) -> list[str]:
    from wattless.techniques.early_exit import EarlyExitModel

    notes = []
    from wattless.techniques.prune import _is_mac

    kept = [ctx.keep.take(m, "weight", _np(m.weight)) for m in model.modules() if _is_mac(m)]  # after the cut
    zeros = sum(int((w == 0).sum()) for w in kept) / max(1, sum(w.size for w in kept))
    if zeros > 0.05:
        notes.append("zero weights (unstructured or 2:4) are stored dense: ONNX Runtime has no sparse CPU kernel")
    dead_rows = any(bool((w.reshape(w.shape[0], -1) == 0).all(1).any()) for w in kept if w.ndim > 1)
    if isinstance(model, EarlyExitModel) and dead_rows:
        notes.append("structurally pruned units stay as zeros in early-exit models (exit heads read the blocks' "
                     "channels, so no unit is cut)")
    return notes


def export_run(run_dir: str | Path, out: str | Path, *, tolerance: Tolerance | None = None,
               check: bool = True, requantize: bool | None = None, workload: Any = None,
               int8_kernel: str = "portable") -> ExportReport:
    """Export the optimized model of a `wattless optimize` run directory (see export_model). ``workload``: the
    run's workload (a name, spec or Workload) where run.json's name alone cannot rebuild it (user workloads)."""
    from wattless.optimize import load_run

    run_dir = Path(run_dir)
    missing = [f for f in ("run.json", "recipe.toml", "model.safetensors") if not (run_dir / f).is_file()]
    if missing:
        raise ExportError(f"{run_dir} is not a finished `wattless optimize` run: it lacks {', '.join(missing)}")
    model, _, workload = load_run(run_dir, workload)
    return export_model(model, workload, out, tolerance=tolerance, check=check, requantize=requantize,
                        int8_kernel=int8_kernel)
