"""A classifier's graph: input ``x``, output ``logits``, and ``exit`` / ``route.*`` where the model has them."""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import torch
from torch import nn

from wattless.errors import ExportError
from wattless.export.cut import Keep, find_removable
from wattless.export.exits import emit_exits
from wattless.export.fuse import fuse_requantize
from wattless.export.graph import Ctx, Graph, route_outputs, value
from wattless.export.walk import emit, observe, run_full
from wattless.techniques.early_exit import EarlyExitModel

__all__ = ["build_classifier", "logits_of", "logits_only", "Logits"]


def _context(model: nn.Module, example: torch.Tensor, fuse: bool) -> Ctx:
    exits = isinstance(model, EarlyExitModel)  # exit heads read the blocks' channels: nothing is cut
    ctx = Ctx(Keep() if exits else find_removable(model, example[:2]), fuse)
    ctx.names = {id(m): n for n, m in model.named_modules()}
    observe(ctx, model, example[:2])
    return ctx


def _exits_meta(model: nn.Module) -> list[dict[str, Any]]:
    if not isinstance(model, EarlyExitModel):
        return []
    return [{"after": n, "threshold": float(t) if math.isfinite(t) else None}
            for n, t in zip(model.exit_names, model.thresholds.tolist())]


def _logits(g: Graph, ctx: Ctx, model: nn.Module, example: torch.Tensor, classes: int, outputs: list[Any]) -> str:
    from onnx import TensorProto, helper

    if not isinstance(model, EarlyExitModel):
        return emit(g, ctx, model, "x", "", rank=example.dim())
    logits, taken = emit_exits(g, ctx, model, "x", classes)
    g.nodes.append(helper.make_node("Identity", [taken], ["exit"], name="exit"))
    outputs.append(value("exit", TensorProto.INT64, ["batch"]))
    return logits


def build_classifier(model: nn.Module, example: torch.Tensor, workload: str,
                     fuse: bool) -> tuple[Any, Ctx, dict[str, Any]]:
    """(ONNX graph, what each layer became, the file's metadata) of a classifier taking one tensor."""
    from onnx import TensorProto, helper

    ctx = _context(model, example, fuse)
    with torch.no_grad():
        classes = int(run_full(model, example[:2]).shape[-1])
    g = Graph()
    outputs = [value("logits", TensorProto.FLOAT, ["batch", classes])]
    logits = _logits(g, ctx, model, example, classes, outputs)
    g.nodes.append(helper.make_node("Identity", [logits], ["logits"], name="logits"))
    routes = route_outputs(g, ctx, outputs)
    if fuse:
        fuse_requantize(g, {o.name for o in outputs})
    for hint in g.fused:
        ctx.layers[hint] = ctx.layers[hint].replace("ConvInteger", "QLinearConv, requantized to the next layer's codes")
    shape = list(example.shape[1:])
    elem = helper.np_dtype_to_tensor_dtype(example.numpy().dtype)
    graph = helper.make_graph(g.nodes, f"wattless-{workload}", [value("x", elem, ["batch", *shape])],
                              outputs, g.inits)
    exits = isinstance(model, EarlyExitModel)
    meta = {"kind": "classifier", "input": {"name": "x", "dtype": str(example.numpy().dtype), "shape": shape}, "classes": classes,
            "outputs": {"output": "logits", "exit": "exit" if exits else None, "routes": routes},
            "exits": _exits_meta(model)}
    return graph, ctx, meta


def logits_of(output: Any) -> torch.Tensor:
    """The logits of a forward's output: a tensor, a Hugging Face ModelOutput (``logits``) or a tuple's first."""
    if isinstance(output, torch.Tensor):
        return output
    if isinstance(output, Mapping) and isinstance(output.get("logits"), torch.Tensor):
        return output["logits"]
    if isinstance(output, (tuple, list)) and output and isinstance(output[0], torch.Tensor):
        return output[0]
    raise ExportError(f"export needs a classifier's logits, but the model returns {type(output).__name__}; return a "
                      "tensor, a tuple whose first item is the logits, or an output with a `logits` field")


class Logits(nn.Module):
    """A model whose output is a ModelOutput or a tuple, as a module returning its logits tensor."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return logits_of(self.model(x))


def logits_only(model: nn.Module, example: torch.Tensor) -> nn.Module:
    """``model`` itself when it returns a tensor, else wrapped in Logits (in eval mode either way)."""
    with torch.no_grad():
        out = run_full(model, example[:2])
    return model if isinstance(out, torch.Tensor) else Logits(model).eval()
