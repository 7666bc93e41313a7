"""Mixture-of-experts blocks: every token routed with ``TopK``, each expert run only on its own tokens
(``NonZero`` + ``Gather``), the outputs added back (``ScatterND`` add). An extra output ``route.<block>``
says which experts each token took."""

from __future__ import annotations

from typing import Any

from torch import nn

from wattless.export.graph import I64, Ctx, Graph, to_numpy
from wattless.export.table import translation
from wattless.export.walk import emit
from wattless.techniques.moe import MoEMLP

__all__ = ["emit_moe"]


def _expert(g: Graph, ctx: Ctx, expert: nn.Module, e: int, tokens: str, chosen: str, out: str, eh: str) -> str:
    """out += expert e applied to the tokens routed to it (scattered back to their rows)."""
    mine = g.op("ReduceMax", [g.op("Cast", [g.op("Equal", [chosen, g.const(e, "e", I64)], eh)], eh, to=6),
                               g.const([1], "axis1", I64)], eh, keepdims=0)  # (N,) 1 where routed here
    rows = g.op("NonZero", [mine], eh)  # (1, n_e)
    picked = g.op("Gather", [tokens, g.op("Squeeze", [rows, g.const([0], "axis0", I64)], eh)], eh, axis=0)
    y = emit(g, ctx, expert, picked, eh, rank=2)  # (n_e, d_out)
    return g.op("ScatterND", [out, g.op("Transpose", [rows], eh, perm=[1, 0]), y], eh, reduction="add")


def _zeros(g: Graph, tokens: str, d_out: int, hint: str) -> str:
    """(N, d_out) zeros, N the number of tokens."""
    n = g.op("Slice", [g.op("Shape", [tokens], hint), g.const([0], "zero1", I64), g.const([1], "one1", I64)], hint)
    return g.op("ConstantOfShape", [g.op("Concat", [n, g.const([d_out], "dout", I64)], hint, axis=0)], hint,
                value=_tensor_attr(0.0))


@translation(MoEMLP)
def emit_moe(g: Graph, ctx: Ctx, m: MoEMLP, x: str, hint: str, rank: int) -> str:
    """Route every token with TopK, run each expert on its own tokens only, add them up."""
    xt = g.op("Transpose", [x], hint, perm=[0, *range(2, rank), 1]) if m.channels_first else x
    shape = g.op("Shape", [xt], hint)
    tokens = g.op("Reshape", [xt, g.const([-1, m.d_in], "shape", I64)], hint)  # (N, d)
    probs = g.op("Softmax", [emit(g, ctx, m.router, tokens, f"{hint}.router", rank=2)], hint, axis=-1)
    _, chosen = g.op("TopK", [probs, g.const([m.top_k], "k", I64)], hint, outputs=2, axis=-1)  # (N, k)
    d_out = m.experts[0].fc2.out_features
    out = _zeros(g, tokens, d_out, hint)
    for e, expert in enumerate(m.experts):
        out = _expert(g, ctx, expert, e, tokens, chosen, out, f"{hint}.experts.{e}")
    if m.bias is not None:
        out = g.op("Add", [out, g.const(to_numpy(m.bias), f"{hint}.bias")], hint)
    lead = g.op("Slice", [shape, g.const([0], "zero1", I64), g.const([-1], "minus1", I64)], hint)
    y = g.op("Reshape", [out, g.op("Concat", [lead, g.const([d_out], "dout", I64)], hint, axis=0)], hint)
    route = g.op("Reshape", [chosen, g.op("Concat", [lead, g.const([m.top_k], "k", I64)], hint, axis=0)], hint)
    if g.root is g:  # a block inside an exit's If branch: its value is not visible at the top, so no output
        ctx.routes[hint] = (route, len(m.experts))
    ctx.layers[f"{hint}.router"] = f"TopK-{m.top_k} of {len(m.experts)} experts; each runs only on its tokens"
    return g.op("Transpose", [y], hint, perm=[0, rank - 1, *range(1, rank - 1)]) if m.channels_first else y


def _tensor_attr(value: float) -> Any:
    from onnx import helper

    return helper.make_tensor("value", 1, [1], [value])
