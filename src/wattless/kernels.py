"""Integer products that ONNX Runtime computes exactly on every CPU, and the two forms an export can hold.

ONNX Runtime's u8 x s8 integer GEMM on x86 CPUs with AVX2 but without VNNI (AMD Zen 2/3, Intel before
Cascade Lake) adds pairs of products in int16 with saturation (``vpmaddubsw``): a pair of 255 x 127 products
is 64,770, beyond 32,767, and the sum comes out wrong. With AVX-512 VNNI, AVX-VNNI or AMX (``vpdpbusd``,
``tdpbusd``) the products go straight to int32 and every sum is exact. Its u8 x u8 kernels widen both sides
to int16 and multiply-add in int32 (``vpmaddwd``): exact on every x86 CPU. On ARM64 both kernels widen or use
dot-product instructions that accumulate in int32 (exact by construction; not measured here, no ARM machine).

The forms (``INT8_KERNELS``):

- ``portable`` (the default export): every integer product whose pair sums could pass int16 holds its
  weights as u8 (code + 128, zero point 128); the others keep s8. Right on every CPU, in any ONNX Runtime.
- ``vnni``: s8 weights everywhere. Right only where u8 x s8 sums are exact; fastest there in plain ONNX
  Runtime (the u8 x u8 kernel is several times slower than VNNI or AMX).

``wattless.runtime`` runs each file in the fastest form that is exact on the CPU it loads on: it probes the
kernel (a product that saturates a pairwise int16 sum) and turns u8 weights back to s8 where the probe is
exact; a ``vnni`` file on a CPU whose probe saturates is refused with KernelError, never run wrong.

The bound is the weights' alone, whatever the activations: a u8 x s8 product is safe everywhere when
255 x (the two largest |code| of every output channel) <= 32,767, i.e. weights of at most 7 bits (|code| <= 64):
wattless's 2- to 7-bit layers keep s8 in both forms.
"""

from __future__ import annotations

import functools
import platform
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from wattless.errors import KernelError

__all__ = ["INT8_KERNELS", "IntegerProduct", "KernelChoice", "integer_products", "to_portable", "to_fast",
           "u8s8_exact", "cpu_features", "cpu_name", "CPU_FEATURES", "for_this_cpu", "PAIR_LIMIT", "A_MAX"]

INT8_KERNELS = ("portable", "vnni")
PAIR_LIMIT = 32767  # int16: where vpmaddubsw saturates a pair of u8 x s8 products
A_MAX = 255  # the largest u8 activation code
_ACC_LIMIT = 2**31 - 1  # int32 accumulator

# op type -> (domain, input index of the weight, input index of its zero point)
_WEIGHT_INPUTS: dict[str, tuple[str, int, int]] = {
    "MatMulInteger": ("", 1, 3),
    "ConvInteger": ("", 1, 3),
    "QLinearConv": ("", 3, 5),
    "QLinearMatMul": ("", 3, 5),
    "MatMulIntegerToFloat": ("com.microsoft", 1, 5),
    "DynamicQuantizeMatMul": ("com.microsoft", 1, 3),
    "QAttention": ("com.microsoft", 1, 7),
}


@dataclass(frozen=True)
class IntegerProduct:
    """One integer product of an ONNX graph, judged from its weight codes alone."""

    node: str
    op_type: str
    weight: str
    weight_form: str  # "s8" or "u8"
    reduction: int  # products summed per output
    worst_pair: int  # A_MAX x the two largest |weight code| of a channel, for s8 weights
    exact_everywhere: bool  # no pair can pass int16 (s8), or u8 x u8; and no int32 overflow

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class KernelChoice:
    """The form a model's integer products run in on this CPU."""

    form: str  # "u8s8" (this CPU sums u8 x s8 exactly) or "portable" (u8 x u8 where u8 x s8 could saturate)
    converted: int  # products turned from the file's u8 weights to s8 here
    note: str

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def _walk(graph: Any) -> Any:
    """Every node of a graph and of its subgraphs (If branches)."""
    for node in graph.node:
        yield node
        for attr in node.attribute:
            if attr.g is not None and attr.g.node:
                yield from _walk(attr.g)


def _initializers(graph: Any) -> dict[str, Any]:
    found = {t.name: t for t in graph.initializer}
    for node in graph.node:
        for attr in node.attribute:
            if attr.g is not None and attr.g.node:
                found.update(_initializers(attr.g))
    return found


def _weight_nodes(model: Any) -> list[tuple[Any, np.ndarray]]:
    """(node, its integer weight codes) for each product whose weight is a constant."""
    from onnx import numpy_helper

    inits = _initializers(model.graph)
    found = []
    for node in _walk(model.graph):
        spec = _WEIGHT_INPUTS.get(node.op_type)
        if spec is None or node.domain not in ({spec[0]} if spec[0] else {"", "ai.onnx"}):
            continue
        name = node.input[spec[1]] if len(node.input) > spec[1] else ""
        if name in inits:
            found.append((node, numpy_helper.to_array(inits[name])))
    return found


def _channels(op_type: str, w: np.ndarray) -> np.ndarray:
    """(channels, reduction): a MatMul weight is (K, N), a conv weight (M, C / group, *kernel)."""
    if op_type in ("ConvInteger", "QLinearConv"):
        return w.reshape(w.shape[0], -1)
    return w.reshape(-1, w.shape[-1]).T


def _judge(node: Any, w: np.ndarray) -> IntegerProduct:
    spec = _WEIGHT_INPUTS[node.op_type]
    rows = np.abs(_channels(node.op_type, w).astype(np.int64))
    k = rows.shape[1]
    if w.dtype == np.uint8:
        worst_pair, form = 0, "u8"
        exact = k * A_MAX * A_MAX <= _ACC_LIMIT
    else:
        top2 = np.sort(rows, axis=1)[:, -2:].sum(1)
        worst_pair, form = int(A_MAX * top2.max(initial=0)), "s8"
        exact = worst_pair <= PAIR_LIMIT and k * A_MAX * int(rows.max(initial=0)) <= _ACC_LIMIT
    return IntegerProduct(node.name, node.op_type, node.input[spec[1]], form, k, worst_pair, exact)


def _load(model: Any) -> Any:
    if isinstance(model, (str, Path)):
        import onnx

        return onnx.load(str(model))
    return model


def integer_products(model: Any) -> list[IntegerProduct]:
    """Every integer product of ``model`` (an onnx ModelProto or a path) with its weight form and bound."""
    return [_judge(node, w) for node, w in _weight_nodes(_load(model))]


# ONNX Runtime (1.32) runs ConvInteger with u8 weights on MLAS's u8 x u8 kernel, and with s8 weights on a
# path 2 to 3 times slower (SE-CNN conv 32x32x3 over 40 positions: 8.7 vs 16.1 us at batch 1, 118 vs 346 at
# 32): its weights are u8 in every form, which is also exact on every CPU.
_U8_ALWAYS = {"ConvInteger"}


def _new_form(node: Any, w: np.ndarray, zp: np.ndarray, want: str) -> tuple[np.ndarray, np.ndarray] | None:
    """(weights, zero point) of ``want`` for one product, or None where it stays as it is."""
    if node.op_type in _U8_ALWAYS:
        want = "u8"
    needed = node.op_type in _U8_ALWAYS or not _judge(node, w).exact_everywhere
    if want == "u8" and w.dtype == np.int8 and not zp.any() and needed:
        return (w.astype(np.int16) + 128).astype(np.uint8), np.full(zp.shape, 128, np.uint8)
    if want == "s8" and w.dtype == np.uint8 and (zp == 128).all():
        return (w.astype(np.int16) - 128).astype(np.int8), np.zeros(zp.shape, np.int8)
    return None


def _rewrite(model: Any, want: str) -> int:
    """Turn the weights of the chosen products to ``want`` ("u8": code + 128, zero point 128; "s8": back),
    each weight keeping its name. The int32 accumulators, and so every output, stay bit for bit the same.
    Returns how many products changed."""
    from onnx import numpy_helper

    inits = _initializers(model.graph)
    other_uses = {i for node in _walk(model.graph) for k, i in enumerate(node.input)
                  if node.op_type not in _WEIGHT_INPUTS or k != _WEIGHT_INPUTS[node.op_type][1]}
    changed, done = 0, set()
    for node, w in _weight_nodes(model):
        spec = _WEIGHT_INPUTS[node.op_type]
        name = node.input[spec[1]]
        zp_name = node.input[spec[2]] if len(node.input) > spec[2] else ""
        if name in other_uses or (zp_name and zp_name not in inits):
            continue
        zp = numpy_helper.to_array(inits[zp_name]) if zp_name else np.zeros((), w.dtype)
        zp_new = f"{name}.zero_point"
        if name not in done:  # a small weight can be one initializer shared by several layers: once
            form = _new_form(node, w, zp, want)
            if form is None:
                continue
            done.add(name)
            inits[name].CopyFrom(numpy_helper.from_array(form[0], name))
            if zp_new in inits:
                inits[zp_new].CopyFrom(numpy_helper.from_array(form[1], zp_new))
            else:
                model.graph.initializer.append(numpy_helper.from_array(form[1], zp_new))
                inits[zp_new] = model.graph.initializer[-1]
        while len(node.input) <= spec[2]:
            node.input.append("")
        node.input[spec[2]] = zp_new
        changed += 1
    if changed:
        _drop_unused(model)
    return changed


def _drop_unused(model: Any) -> None:
    used = {i for node in _walk(model.graph) for i in node.input}
    kept = [t for t in model.graph.initializer if t.name in used]
    del model.graph.initializer[:]
    model.graph.initializer.extend(kept)


def to_portable(model: Any) -> int:
    """In place: every s8 product whose pair sums could pass int16 takes u8 weights (exact on every CPU)."""
    return _rewrite(model, "u8")


def to_fast(model: Any) -> int:
    """In place: every u8 product of the portable form back to s8 (exact only where u8s8_exact())."""
    return _rewrite(model, "s8")


def _probe_model() -> Any:
    """A 255 x 127 product summed 64 times, in MatMulInteger and in QLinearConv (whose kernels are separate)."""
    from onnx import TensorProto, helper, numpy_helper

    k = 64
    w = np.full((k, 4), 127, np.int8)
    consts = {"B": w, "Wc": w.T.reshape(4, k, 1).copy(), "z8": np.zeros((), np.uint8),
              "one": np.ones((), np.float32), "ws": np.full(4, 1e-4, np.float32), "wz": np.zeros(4, np.int8),
              "axis": np.array([2], np.int64)}
    nodes = [helper.make_node("MatMulInteger", ["A", "B"], ["Y"]),
             helper.make_node("Unsqueeze", ["A", "axis"], ["X"]),
             helper.make_node("QLinearConv", ["X", "one", "z8", "Wc", "ws", "wz", "one", "z8"], ["C"],
                              kernel_shape=[1])]
    graph = helper.make_graph(nodes, "probe", [helper.make_tensor_value_info("A", TensorProto.UINT8, [1, k])],
                              [helper.make_tensor_value_info("Y", TensorProto.INT32, None),
                               helper.make_tensor_value_info("C", TensorProto.UINT8, None)],
                              [numpy_helper.from_array(v, n) for n, v in consts.items()])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    model.ir_version = 10
    return model


@functools.cache
def u8s8_exact() -> bool:
    """Whether this CPU's ONNX Runtime sums u8 x s8 products exactly (measured by a probe, not guessed from
    the CPU's name: AVX2 without VNNI returns 1,048,544 for the exact 2,072,640)."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.log_severity_level = 3
    session = ort.InferenceSession(_probe_model().SerializeToString(), options, providers=["CPUExecutionProvider"])
    y, c = session.run(None, {"A": np.full((1, 64), A_MAX, np.uint8)})
    exact = A_MAX * 127 * 64
    return bool((y == exact).all() and (c == min(255, round(exact * 1e-4))).all())


CPU_FEATURES = ("avx2", "avx512_vnni", "avx_vnni", "amx_int8")  # what ONNX Runtime's int8 kernels can use


def _cpuinfo() -> str | None:
    try:
        return Path("/proc/cpuinfo").read_text()
    except OSError:
        return None


def cpu_name(info: str | None = None) -> str:
    """The CPU's model name, from /proc/cpuinfo where there is one."""
    for line in (info if info is not None else _cpuinfo() or "").splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine() or "unknown"


def cpu_features(info: str | None = None) -> dict[str, bool | str]:
    """{feature: present?} for CPU_FEATURES, from /proc/cpuinfo's flags; "unknown" where there is none."""
    info = _cpuinfo() if info is None else info
    flags = next((line.split(":", 1)[1].split() for line in (info or "").splitlines()
                  if line.startswith(("flags", "Features"))), None)
    return {f: (f in flags) if flags is not None else "unknown" for f in CPU_FEATURES}


def _missing_feature() -> str:
    features = cpu_features()
    if platform.machine() in ("x86_64", "AMD64") and features["avx512_vnni"] is False and features["avx_vnni"] is False:
        return "this CPU lacks AVX-512 VNNI and AVX-VNNI"
    return f"ONNX Runtime's u8 x s8 kernel on this CPU ({cpu_name()}) failed the saturation probe"


def for_this_cpu(model: Any, path: str | Path = "the model") -> KernelChoice:
    """Turn ``model`` (a ModelProto, in place) to the fastest form that is exact on this CPU. Raises
    KernelError for a file whose s8 products would saturate here."""
    if u8s8_exact():
        changed = to_fast(model)
        extra = f"; {changed} portable products run as u8 x s8" if changed else ""
        return KernelChoice("u8s8", changed, f"u8 x s8 (exact on this CPU{extra})")
    unsafe = [p for p in integer_products(model) if not p.exact_everywhere]
    if unsafe:
        raise KernelError(
            f"{path} holds {len(unsafe)} u8 x s8 integer products (first: {unsafe[0].node}) whose pairs of "
            f"products can pass int16 ({unsafe[0].worst_pair} > {PAIR_LIMIT}), and {_missing_feature()}: ONNX "
            "Runtime would add them with saturation and answer wrong. Export it with --int8-kernel portable "
            "(the default), which is exact on every CPU")
    return KernelChoice("portable", 0, "portable (u8 x u8 where u8 x s8 could saturate: this CPU's u8 x s8 "
                                       "kernel saturates)")
