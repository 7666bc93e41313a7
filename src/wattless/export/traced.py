"""Any module's forward through torch's own exporter (torch.onnx, dynamo), with the translations of the table.

The modules the emitter table knows (quantized and float Linear/Conv, BatchNorm, activations, and what the
techniques register: experts, exit heads) become *regions*: while torch.onnx traces the module, each of them
runs as one custom op, ``wattless::region``, which the custom translation writes as a placeholder node
``wattless.Region(key)``. Every other aten op of the forward (unsqueeze, skips, squeeze-and-excitation
products, attention, LayerNorm, embeddings...) is torch.onnx's own translation. The traced graph is then
inlined into the graph under construction and each placeholder replaced by its module's emitter, so a
technique's integer kernels and control flow stay its translation's, wherever the module sits.
"""

from __future__ import annotations

import contextlib
import itertools
import logging
import re
import warnings
from collections.abc import Callable, Iterator
from typing import Any

import torch
from torch import nn

from wattless.errors import ExportError
from wattless.export.graph import Ctx, Graph

__all__ = ["emit_traced", "region_program", "REGION", "REGION_DOMAIN"]

REGION_DOMAIN = "wattless.region"
_REGIONS: dict[int, Callable[[torch.Tensor], torch.Tensor]] = {}  # key -> the module's own forward
_SHAPES: dict[int, tuple[tuple[int, ...], tuple[int, ...], torch.dtype]] = {}  # key -> (in, out shape, dtype)
_KEYS = itertools.count()


@torch.library.custom_op("wattless::region", mutates_args=())
def _region(x: torch.Tensor, key: int) -> torch.Tensor:
    return _REGIONS[key](x).clone()


REGION = torch.ops.wattless.region.default  # the target of its nodes in an ATen graph


@_region.register_fake
def _region_shape(x: torch.Tensor, key: int) -> torch.Tensor:
    shape_in, shape_out, dtype, channels = _SHAPES[key]
    same = len(shape_in) == len(shape_out)  # dims the module keeps follow its input's (the batch, tokens)
    shape = [x.shape[i] if same and i < x.dim() and shape_out[i] == shape_in[i] else d for i, d in enumerate(shape_out)]
    if channels is not None:  # a layer's output channels are its own (after any cut), never its input's
        shape[channels[0]] = channels[1]
    return x.new_empty(shape, dtype=dtype)


def _schema() -> None:
    import onnx
    from onnx.defs import OpSchema

    if onnx.defs.has("Region", REGION_DOMAIN):
        return
    types = ["tensor(float)", "tensor(int64)", "tensor(int32)", "tensor(bool)", "tensor(float16)"]
    onnx.defs.register_schema(OpSchema(
        "Region", REGION_DOMAIN, 1, inputs=[OpSchema.FormalParameter("x", "T")],
        outputs=[OpSchema.FormalParameter("y", "U")], type_constraints=[("T", types, ""), ("U", types, "")],
        attributes=[OpSchema.Attribute("key", OpSchema.AttrType.INT, "the region's module")]))


def _translation() -> dict[Any, Callable[..., Any]]:
    import onnxscript

    _schema()
    opset = onnxscript.values.Opset(REGION_DOMAIN, 1)

    def region(x: Any, key: int) -> Any:
        return opset.Region(x, key=key)

    return {torch.ops.wattless.region.default: region}


# --- the regions of a module -------------------------------------------------------------------------------

def _leaves(m: nn.Module, is_leaf: Callable[[nn.Module], bool], prefix: str = "") -> Iterator[tuple[str, nn.Module]]:
    """The outermost submodules the table translates (not descending into them)."""
    for name, child in m.named_children():
        path = f"{prefix}{name}"
        if is_leaf(child):
            yield path, child
        else:
            yield from _leaves(child, is_leaf, f"{path}.")


@contextlib.contextmanager
def _as_regions(leaves: list[tuple[str, nn.Module]], shapes: dict[int, tuple],
                channels: Callable[[nn.Module, int], tuple[int, int] | None] = lambda m, rank: None,
                ) -> Iterator[dict[int, tuple[str, nn.Module]]]:
    """Each leaf's forward replaced by the region op while torch.onnx traces; restored after. ``channels(leaf,
    output rank)``: (axis, size) of a layer's output channels where the export cuts them, so shapes the
    forward computes from them (a reshape to (B, C)) are the cut model's."""
    keys: dict[int, tuple[str, nn.Module]] = {}
    try:
        for path, leaf in leaves:
            if id(leaf) not in shapes:
                continue  # never ran on the example input: the trace will not reach it either
            key = next(_KEYS)
            keys[key] = (path, leaf)
            shape_in, shape_out, dtype = shapes[id(leaf)]
            _REGIONS[key], _SHAPES[key] = leaf.forward, (shape_in, shape_out, dtype, channels(leaf, len(shape_out)))
            leaf.forward = (lambda x, _k=key: torch.ops.wattless.region(x, _k))
        yield keys
    finally:
        for key, (_, leaf) in keys.items():
            del leaf.forward
            _REGIONS.pop(key, None)
            _SHAPES.pop(key, None)


def _export(m: nn.Module, example: torch.Tensor, hint: str, opset: int) -> Any:
    """The ONNX ModelProto torch.onnx writes for m on a dynamic batch."""
    batch = torch.export.Dim.DYNAMIC
    try:
        with warnings.catch_warnings(), contextlib.redirect_stdout(None), _quiet("onnxscript", "onnx_ir", "torch.onnx", "torch.export"):
            warnings.simplefilter("ignore")
            program = torch.onnx.export(m, (example,), dynamo=True, opset_version=opset, optimize=True,
                                        custom_translation_table=_translation(), dynamic_shapes=({0: batch},),
                                        verbose=False)
    except Exception as exc:  # torch.export or the ONNX translation refused the forward
        raise ExportError(f"export cannot trace {type(m).__name__} ({hint or 'the model'}) with torch.onnx: "
                          f"{_reason(exc)}; give it a forward whose ops do not branch on tensor values") from None
    return program.model_proto


@contextlib.contextmanager
def _quiet(*names: str) -> Iterator[None]:
    """The exporter's own log lines (value types it skips, decomposition notes) off while it runs."""
    loggers = [logging.getLogger(n) for n in names]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.ERROR)
    try:
        yield
    finally:
        for lg, level in zip(loggers, levels):
            lg.setLevel(level)


def _reason(exc: BaseException) -> str:
    """The innermost cause's first line, without the exporter's colour codes."""
    while exc.__cause__ is not None:
        exc = exc.__cause__
    lines = [line for line in re.sub(r"\x1b\[[0-9;]*m", "", str(exc)).splitlines() if line.strip()]
    return f"{type(exc).__name__}: {lines[0].strip()[:300] if lines else ''}"


# --- inlining ---------------------------------------------------------------------------------------------

def _attr_graphs(node: Any) -> bool:
    return any(a.g is not None and a.g.node for a in node.attribute) or any(a.graphs for a in node.attribute)


def _inline(g: Graph, ctx: Ctx, proto: Any, x: str, hint: str, keys: dict[int, tuple[str, nn.Module]],
            emit: Callable[..., str]) -> str:
    from onnx import helper, numpy_helper

    graph = proto.graph
    if len(graph.input) != 1 or len(graph.output) != 1:
        raise ExportError(f"{hint or 'the model'}: torch.onnx wrote {len(graph.input)} inputs and {len(graph.output)} "
                          "outputs; export supports one tensor in and one tensor out")
    names = {graph.input[0].name: x, "": ""}
    for init in graph.initializer:
        array = numpy_helper.to_array(init)
        names[init.name] = g.const(array, f"{hint}.{init.name}" if hint else init.name, array.dtype)
    for node in graph.node:
        if _attr_graphs(node):
            raise ExportError(f"{hint or 'the model'}: the traced forward holds control flow ({node.op_type}); "
                              "export supports forwards whose ops do not branch on values")
        if node.domain == REGION_DOMAIN:
            path, leaf = keys[helper.get_attribute_value(node.attribute[0])]
            sub = f"{hint}.{path}" if hint else path
            names[node.output[0]] = emit(g, ctx, leaf, names[node.input[0]], sub, rank=ctx.ranks.get(id(leaf), 2))
            continue
        outs = [g.name(f"{hint}.{o}" if hint else o) if o else "" for o in node.output]
        names.update(zip(node.output, outs))
        copy = helper.make_node(node.op_type, [names[i] for i in node.input], outs, name=g.name(outs[0] or "node"),
                                domain=node.domain)
        copy.attribute.extend(node.attribute)
        g.nodes.append(copy)
    return names[graph.output[0].name]


def emit_traced(g: Graph, ctx: Ctx, m: nn.Module, x: str, hint: str, emit: Callable[..., str],
                is_leaf: Callable[[nn.Module], bool], opset: int) -> str:
    """Emit ``m`` (any module whose forward takes one tensor) applied to value ``x`` through torch.onnx."""
    example = ctx.examples.get(id(m))
    if example is None:
        raise ExportError(f"{hint or type(m).__name__} did not run on the example input, so it cannot be traced")
    leaves = list(_leaves(m, is_leaf))
    with _as_regions(leaves, ctx.shapes, ctx.keep.out_channels) as keys, torch.no_grad():
        proto = _export(m, example, hint, opset)
    return _inline(g, ctx, proto, x, hint, keys, emit)


def region_program(model: nn.Module, example: torch.Tensor, is_leaf: Callable[[nn.Module], bool]
                   ) -> tuple[torch.fx.Graph, dict[int, tuple[str, nn.Module]]]:
    """The ATen graph torch.export traces for ``model`` on ``example``, each outermost ``is_leaf`` submodule one
    ``wattless::region`` node (``node.args[1]`` is its key in the returned {key: (path, module)}): the model
    seen at the granularity of its layers, whatever Python its forwards run (shape arithmetic, branches on
    shapes, Hugging Face's TF padding), as torch.fx's symbolic tracing cannot."""
    _, shapes = record_examples(model, lambda: model(example))
    leaves = list(_leaves(model, is_leaf))
    with _as_regions(leaves, shapes) as keys, torch.no_grad(), warnings.catch_warnings(), \
            _quiet("torch.export", "torch._dynamo"):
        warnings.simplefilter("ignore")
        program = torch.export.export(model, (example,), strict=False)
        mapping = dict(keys)
    return program.graph, mapping


def record_examples(model: nn.Module, run: Callable[[], Any]) -> tuple[dict[int, torch.Tensor], dict[int, tuple]]:
    """Each module's first input and its (input shape, output shape, dtype) on one example forward."""
    inputs: dict[int, torch.Tensor] = {}
    shapes: dict[int, tuple] = {}

    def pre(module: nn.Module, args: tuple) -> None:
        if args and isinstance(args[0], torch.Tensor):
            inputs.setdefault(id(module), args[0].detach())

    def post(module: nn.Module, args: tuple, out: Any) -> None:
        if args and isinstance(args[0], torch.Tensor) and isinstance(out, torch.Tensor):
            shapes.setdefault(id(module), (tuple(args[0].shape), tuple(out.shape), out.dtype))

    handles = [h for m in model.modules() for h in (m.register_forward_pre_hook(pre), m.register_forward_hook(post))]
    try:
        with torch.no_grad():
            run()
    finally:
        for h in handles:
            h.remove()
    return inputs, shapes

