"""Requantization: an integer conv whose output only feeds the next layer's quantizer becomes one QLinearConv.

ConvInteger -> DequantizeLinear -> [Add] -> [Relu, MaxPool, Flatten] -> [Clip] -> QuantizeLinear becomes
QLinearConv (integers in, the next layer's codes out) -> [Clip on codes] -> [MaxPool, Flatten]. The bias
becomes int32 in units of the accumulator (rounded: at most half an accumulator step off), the rest is the
same rounding of the same values; ReLU is the clip at the zero point."""

from __future__ import annotations

from typing import Any

import numpy as np

from wattless.export.graph import F32, I8, U8, Graph, inputs_deep

__all__ = ["fuse_requantize"]

_THROUGH = ("Relu", "MaxPool", "Flatten", "Reshape")  # commute with a monotone per-tensor quantizer


def _readers(g: Graph, outputs: set[str]) -> dict[str, int]:
    readers: dict[str, int] = {}
    for n in g.nodes:
        for i in inputs_deep(n):
            readers[i] = readers.get(i, 0) + 1
    for name in outputs:
        readers[name] = readers.get(name, 0) + 1
    return readers


def _chain(q: Any, producer: dict[str, Any], readers: dict[str, int]) -> tuple[str, list[Any], bool, Any]:
    """Walk back from a QuantizeLinear: (the value reached, the pass-through nodes, any ReLU, the Clip)."""
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
    return value, chain, relu, clip


def fuse_requantize(g: Graph, outputs: set[str]) -> None:
    """Fuse every integer conv of ``g`` that only feeds a quantizer; ``outputs``: the graph's output values."""
    producer = {o: n for n in g.nodes for o in n.output}
    readers = _readers(g, outputs)
    doomed, placed, here = set(), {}, {id(n) for n in g.nodes}
    for q in [n for n in g.nodes if n.op_type == "QuantizeLinear"]:
        value, chain, relu, clip = _chain(q, producer, readers)
        conv = g.root.qconv.get(value)
        if conv is None or readers.get(value) != 1 or any(readers.get(n.output[0]) != 1 for n in chain):
            continue
        parts = conv["parts"]
        if any(id(n) in doomed or id(n) not in here for n in parts):
            continue
        codes = _requantized_conv(g, conv, q, clip, relu, chain)
        g.root.fused.append(conv["hint"])
        doomed.update(id(n) for n in (*parts, *chain, q, *([clip] if clip is not None else [])))
        placed[id(parts[0])] = codes
    if placed:
        g.nodes = [m for n in g.nodes for m in (placed.get(id(n)) or ([] if id(n) in doomed else [n]))]


def _code_range(g: Graph, q: Any, clip: Any, relu: bool) -> tuple[int, int, float]:
    """(lo, hi) of the output codes (the next layer's k-bit range, ReLU's zero point) and the output scale."""
    from onnx import numpy_helper

    inits = {t.name: t for t in g.root.inits}
    out_scale = float(numpy_helper.to_array(inits[q.input[1]]))
    out_zero = int(numpy_helper.to_array(inits[q.input[2]]))
    lo, hi = 0, 255
    if clip is not None:  # the next layer's k-bit range, in codes
        lo = max(lo, int(round(float(numpy_helper.to_array(inits[clip.input[1]])) / out_scale)) + out_zero)
        hi = min(hi, int(round(float(numpy_helper.to_array(inits[clip.input[2]])) / out_scale)) + out_zero)
    if relu:
        lo = max(lo, out_zero)
    return lo, hi, out_scale


def _qlinear_inputs(g: Graph, conv: dict[str, Any], q: Any) -> list[str]:
    hint, w_scale = conv["hint"], np.asarray(conv["w_scale"], F32)
    xq, a_scale, a_zero, weight = conv["inputs"]
    spread = 2 ** (8 - conv["weight_bits"])  # k-bit codes times 2^(8-k) still fit int8
    spread = min(spread, 128 // max(1, int(np.abs(conv["codes"]).max())))
    if spread > 1:  # a finer accumulator unit: the int32 bias rounds 1/spread as far
        weight = g.const(conv["codes"].astype(np.int32) * spread, f"{hint}.weight_spread", I8)
        w_scale = w_scale / spread
    inputs = [xq, a_scale, a_zero, weight, g.const(w_scale, f"{hint}.weight_scale"),
              g.const(np.zeros(len(w_scale), I8), f"{hint}.weight_zero", I8), q.input[1], q.input[2]]
    if conv["bias"] is not None:
        inputs.append(g.const(np.round(conv["bias"] / (conv["step"] * w_scale)), f"{hint}.bias_int32", np.int32))
    return inputs


def _requantized_conv(g: Graph, conv: dict[str, Any], q: Any, clip: Any, relu: bool,
                      chain: list[Any]) -> list[Any]:
    from onnx import helper

    lo, hi, _ = _code_range(g, q, clip, relu)
    hint = conv["hint"]
    y = g.name(f"{hint}.QLinearConv")
    nodes = [helper.make_node("QLinearConv", _qlinear_inputs(g, conv, q), [y], name=y, **conv["attrs"])]
    if (lo, hi) != (0, 255):
        c = g.name(f"{hint}.Clip")
        nodes.append(helper.make_node("Clip", [y, g.const(lo, "code_lo", U8), g.const(hi, "code_hi", U8)], [c],
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
