"""Walking a model: modules the emitter table knows through their emitters, nn.Sequential child by child,
and every other module's forward through torch.onnx (export/traced.py), its known modules as regions."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from wattless.export.graph import OPSET, Ctx, Graph
from wattless.export.table import lookup
from wattless.export.traced import emit_traced, record_examples
from wattless.techniques.base import full_path

__all__ = ["emit", "observe", "run_full"]


def _is_leaf(m: nn.Module) -> bool:
    return lookup(m) is not None


def emit(g: Graph, ctx: Ctx, m: nn.Module, x: str, hint: str, rank: int) -> str:
    """Emit module ``m`` applied to value ``x`` (a tensor of ``rank`` dims); returns the output value."""
    hint = ctx.names.get(id(m), hint)
    emitter = lookup(m)
    if emitter is not None:
        return emitter(g, ctx, m, x, hint, rank)
    if isinstance(m, nn.Sequential):
        for child in m:
            x = emit(g, ctx, child, x, hint, rank=ctx.ranks.get(id(child), rank))
        return x
    return emit_traced(g, ctx, m, x, hint, emit, _is_leaf, OPSET)


def observe(ctx: Ctx, model: nn.Module, example: torch.Tensor) -> None:
    """Each module's input rank, example input and shapes on one full-path forward (pooling, routing and
    tracing need them)."""
    ctx.examples, ctx.shapes = record_examples(model, lambda: run_full(model, example))
    ctx.ranks = {key: x.dim() for key, x in ctx.examples.items()}


def run_full(model: nn.Module, x: torch.Tensor) -> Any:
    with full_path(model):  # every exit and expert runs, so every module's rank is seen
        return model(x)
