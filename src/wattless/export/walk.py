"""Walking a model: leaf modules through the emitter table, torch.fx graphs for the rest."""

from __future__ import annotations

import operator
from typing import Any

import torch
import torch.nn.functional as F
from torch import fx, nn

from wattless.errors import ExportError
from wattless.export.graph import I64, Ctx, Graph
from wattless.export.table import gelu, lookup
from wattless.techniques.base import full_path

__all__ = ["emit", "ranks", "run_full"]


class _LeafTracer(fx.Tracer):
    def is_leaf_module(self, m: nn.Module, qualname: str) -> bool:
        return lookup(m) is not None or super().is_leaf_module(m, qualname)


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
    try:
        graph = _LeafTracer().trace(m)
    except Exception as exc:
        raise ExportError(f"export cannot trace {type(m).__name__} ({hint or 'the model'}) with torch.fx: "
                          f"{type(exc).__name__}: {exc}; give it a forward without control flow on values") from None
    return _emit_fx(g, ctx, m, graph, x, hint)


def _emit_fx(g: Graph, ctx: Ctx, root: nn.Module, graph: fx.Graph, x: str, hint: str) -> str:
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
            env[node] = emit(g, ctx, sub, env[node.args[0]], name, rank=ctx.ranks.get(id(sub), 2))
        elif node.op in ("call_function", "call_method"):
            env[node] = _emit_call(g, node, env, hint or "f")
        else:
            raise ExportError(f"export does not support {node.op} nodes ({node.target}) in {type(root).__name__}")
    raise ExportError(f"{type(root).__name__}'s traced graph has no output")


# --- calls in a traced forward ----------------------------------------------------------------------------

_BINARY = {operator.add: "Add", torch.add: "Add", operator.mul: "Mul", torch.mul: "Mul", operator.sub: "Sub",
           torch.sub: "Sub", operator.truediv: "Div", torch.div: "Div", "add": "Add", "mul": "Mul", "sub": "Sub",
           "div": "Div"}
_UNARY = {torch.relu: "Relu", F.relu: "Relu", "relu": "Relu", torch.sigmoid: "Sigmoid", "sigmoid": "Sigmoid",
          torch.tanh: "Tanh", "tanh": "Tanh", F.sigmoid: "Sigmoid", F.tanh: "Tanh"}
_PASS = {"contiguous", "clone", F.dropout, "float"}
_BATCH = object()  # x.size(0) / x.shape[0]: the batch dimension, which a Reshape copies with 0
_NO = object()  # this rule does not apply to the call


def _arg(node: fx.Node, args: list[Any], i: int, key: str, default: Any) -> Any:
    return args[i] if len(args) > i else node.kwargs.get(key, default)


def _elementwise_call(g: Graph, node: fx.Node, args: list[Any], hint: str) -> Any:
    t = node.target
    if t in _PASS:
        return args[0]
    if t in _UNARY:
        return g.op(_UNARY[t], [args[0]], hint)
    if t in _BINARY and len(args) == 2:
        a, b = (v if isinstance(v, str) else g.const(float(v), "scalar") for v in args)
        return g.op(_BINARY[t], [a, b], hint)
    if t in (F.gelu,):
        return gelu(g, args[0], hint, node.kwargs.get("approximate", "none"))
    return _NO


def _shape_call(g: Graph, node: fx.Node, args: list[Any], hint: str) -> Any:
    t = node.target
    if t in (torch.flatten, "flatten") and (_arg(node, args, 1, "start_dim", 0), _arg(node, args, 2, "end_dim", -1)) == (1, -1):
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
            return g.op("Reshape", [args[0], g.const(shape, "shape", I64)], hint)
    if t in (torch.cat, torch.concat):
        return g.op("Concat", list(args[0]), hint, axis=int(_arg(node, args, 1, "dim", 0)))
    return _NO


def _reduce_call(g: Graph, node: fx.Node, args: list[Any], hint: str) -> Any:
    t = node.target
    if t in (F.softmax, torch.softmax, "softmax"):
        return g.op("Softmax", [args[0]], hint, axis=int(_arg(node, args, 1, "dim", -1)))
    if t in (torch.mean, "mean") and len(args) >= 2:
        dims = args[1] if isinstance(args[1], (tuple, list)) else [args[1]]
        keep = bool(_arg(node, args, 2, "keepdim", False))
        return g.op("ReduceMean", [args[0], g.const(list(dims), "axes", I64)], hint, keepdims=int(keep))
    return _NO


def _emit_call(g: Graph, node: fx.Node, env: dict[fx.Node, Any], hint: str) -> Any:
    args = [env[a] if isinstance(a, fx.Node) else a for a in node.args]
    for rule in (_elementwise_call, _shape_call, _reduce_call):
        out = rule(g, node, args, hint)
        if out is not _NO:
            return out
    name = getattr(node.target, "__name__", str(node.target))
    raise ExportError(f"export does not support the call {name}({', '.join(map(str, node.args))}) in the model's "
                      "forward; supported: activations, +-*/, flatten, view/reshape to (batch, ...), cat, softmax, "
                      "mean, and the layers listed in docs/EXPORT.md")


# --- ranks -----------------------------------------------------------------------------------------------

def ranks(model: nn.Module, example: torch.Tensor) -> dict[int, int]:
    """The rank of each module's first input on an example forward (pooling and routing need it)."""
    found: dict[int, int] = {}

    def hook(module, args):
        if args and isinstance(args[0], torch.Tensor):
            found.setdefault(id(module), args[0].dim())

    handles = [m.register_forward_pre_hook(hook) for m in model.modules()]
    try:
        with torch.no_grad():
            run_full(model, example)
    finally:
        for h in handles:
            h.remove()
    return found


def run_full(model: nn.Module, x: torch.Tensor) -> Any:
    with full_path(model):  # every exit and expert runs, so every module's rank is seen
        return model(x)
