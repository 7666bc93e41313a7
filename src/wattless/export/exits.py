"""Early exits as ONNX ``If`` nodes: the rows that stop at an exit are never fed to the blocks behind it, and
a batch where every row stopped runs nothing more. An extra output ``exit`` says where each input stopped."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
from torch import nn

from wattless.export.fuse import fuse_requantize
from wattless.export.graph import F32, I64, Ctx, Graph, value
from wattless.export.table import translation
from wattless.export.walk import emit
from wattless.techniques.early_exit import EarlyExitModel, ExitHead

__all__ = ["emit_exits", "emit_exit_head"]


@translation(ExitHead)
def emit_exit_head(g: Graph, ctx: Ctx, m: ExitHead, x: str, hint: str, rank: int) -> str:
    if rank > 2:  # global average pool over the dims after the channels
        x = g.op("ReduceMean", [x, g.const(list(range(2, rank)), "axes", I64)], hint, keepdims=0)
    return emit(g, ctx, m.classifier, x, f"{hint}.classifier", rank=2)


def _segments(model: EarlyExitModel) -> list[tuple[list[tuple[str, nn.Module]], nn.Module | None]]:
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


@dataclass
class _Chain:
    ctx: Ctx
    model: EarlyExitModel
    segments: list[Any]
    thresholds: np.ndarray
    classes: int

    def rank(self, m: nn.Module) -> int:
        return self.ctx.ranks.get(id(m), 2)


def emit_exits(g: Graph, ctx: Ctx, model: EarlyExitModel, x: str, classes: int) -> tuple[str, str]:
    """Outputs (logits (B, classes), exit index (B,)) of an EarlyExitModel; rows stop at their first
    confident exit, and the blocks after it see only the rows still going."""
    chain = _Chain(ctx, model, _segments(model), model.thresholds.detach().cpu().numpy(), classes)
    return _segment(g, chain, x, 0)


def _segment(graph: Graph, c: _Chain, h: str, k: int) -> tuple[str, str]:
    """(logits, exit taken) of the rows reaching segment k."""
    blocks, head = c.segments[k]
    for name, block in blocks:
        h = emit(graph, c.ctx, block, h, f"{c.model.prefix}{name}", rank=c.rank(block))
    if head is None:
        return _tail(graph, c, h, k)
    hh = f"exits.{c.model.prefix}{blocks[-1][0]}"
    logits = emit(graph, c.ctx, head, h, hh, rank=c.rank(head))
    conf = graph.op("ReduceMax", [graph.op("Softmax", [logits], hh, axis=-1), graph.const([-1], "minus1", I64)],
                    hh, keepdims=0)
    going = graph.op("Less", [conf, graph.const(c.thresholds[k], f"{hh}.threshold")], hh)  # (B,)
    rows = graph.op("NonZero", [going], hh)  # (1, n)
    index = graph.op("Squeeze", [rows, graph.const([0], "axis0", I64)], hh)
    any_going = graph.op("Greater", [graph.op("Size", [index], hh), graph.const(0, "zero", I64)], hh)
    later_logits, later_taken = graph.op("If", [any_going], hh, outputs=2, **_branches(graph, c, h, index, k, hh))
    where = graph.op("Transpose", [rows], hh, perm=[1, 0])  # (n, 1)
    taken_here = graph.op("Expand", [graph.const(k, "k", I64), graph.op("Shape", [conf], hh)], hh)
    return (graph.op("ScatterND", [logits, where, later_logits], hh),
            graph.op("ScatterND", [taken_here, where, later_taken], hh))


def _tail(graph: Graph, c: _Chain, h: str, k: int) -> tuple[str, str]:
    tail = c.model.tail
    logits = h if tail is None else emit(graph, c.ctx, tail, h, "tail", rank=c.rank(tail))
    batch = graph.op("Slice", [graph.op("Shape", [logits], "tail"), graph.const([0], "zero1", I64),
                                graph.const([1], "one1", I64)], "tail")
    return logits, graph.op("Expand", [graph.const(k, "k", I64), batch], "tail")


def _branches(graph: Graph, c: _Chain, h: str, index: str, k: int, hh: str) -> dict[str, Any]:
    """then: the rows still going run the next segment; else: no rows."""
    from onnx import TensorProto, helper

    then = graph.sub()
    rest_logits, rest_taken = _segment(then, c, then.op("Gather", [h, index], hh, axis=0), k + 1)
    then_out = [then.op("Identity", [rest_logits], hh), then.op("Identity", [rest_taken], hh)]
    other = graph.sub()
    empty = [other.op("Identity", [other.const(np.zeros((0, c.classes), F32), "no_rows")], hh),
             other.op("Identity", [other.const(np.zeros((0,), I64), "no_exits", I64)], hh)]
    shapes = [["n", c.classes], ["n"]]
    branches = {}
    for key, body, outs in (("then_branch", then, then_out), ("else_branch", other, empty)):
        if c.ctx.fuse:
            fuse_requantize(body, set(outs))
        values = [value(o, TensorProto.FLOAT if i == 0 else TensorProto.INT64, shapes[i]) for i, o in enumerate(outs)]
        branches[key] = helper.make_graph(body.nodes, graph.name(f"{hh}.{key}"), [], values)
    return branches
