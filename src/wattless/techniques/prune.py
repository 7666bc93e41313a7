"""Pruning: unstructured, N:M and structured (channels, FFN neurons, attention heads), ramped gradually.

    handle = apply_(model, PruneConfig(pattern="n:m"), context)
    ... handle.on_step(step, total)   # masks follow the cubic schedule of Zhu and Gupta (2017)
    handle.finish(model, context)      # the final sparsity, however short training was

Masks are bool buffers on a ``Mask`` parametrization of each pruned tensor, so ``module.weight`` is the
masked weight for the module's own forward, for any wrapper reading it, and for the energy core. Structured
pruning zeroes whole units: a producer's weight rows and bias, the matching columns of every consumer, and
what lies between (BatchNorm affine, depthwise filters), so a removed unit carries exactly nothing. The kept
units stay on each touched module as bool buffers ``wattless_kept_out`` (weight rows) and
``wattless_kept_in`` (weight columns) for physically shrinking the tensors later. Units are ranked by their
producers' weights, or (``importance="activation"``, FFN neurons and heads) by what they add to their consumer's
output on the training batches.
"""

from __future__ import annotations

import math
import operator
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from fnmatch import fnmatch
from typing import Any, ClassVar, Literal

import torch
import torch.nn.functional as F
from pydantic import BaseModel, ConfigDict, Field, model_validator
from torch import fx, nn
from torch.nn.utils import parametrize

from wattless.errors import WattlessError
from wattless.techniques.base import ApplyContext, Technique, TechniqueConfig, numbers_are_numbers, register

__all__ = [
    "PruneConfig", "PruneSchedule", "PruneError", "Mask", "Pruning", "check_prunable", "cubic_sparsity",
    "apply_prune", "bake_masks", "UnitSlice", "UnitCut", "structural_cuts", "is_mac", "is_depthwise",
    "weight_axes",
]


class PruneError(WattlessError, ValueError):
    """A pruning config that does not fit the model (raised before training)."""


# --- config ------------------------------------------------------------------------------------------

class PruneSchedule(BaseModel):
    """When sparsity ramps: from 0 at ``start`` to the final value at ``end`` (fractions of training)."""

    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)
    start: float = Field(0.0, ge=0.0, le=1.0)
    end: float = Field(0.5, ge=0.0, le=1.0)
    every: int = Field(1, ge=1)  # update masks every k steps

    _numbers = model_validator(mode="before")(classmethod(numbers_are_numbers))

    @model_validator(mode="after")
    def _ordered(self) -> "PruneSchedule":
        if self.end < self.start:
            raise ValueError(f"schedule.end ({self.end}) must not come before schedule.start ({self.start})")
        return self


class PruneConfig(TechniqueConfig):
    """Remove weights (unstructured, N:M) or whole units (structured) by magnitude, gradually."""

    kind: ClassVar[str] = "prune"
    pattern: Literal["unstructured", "n:m", "structured"]
    sparsity: float | None = Field(None, ge=0.0, lt=1.0)  # fraction removed; implied by n and m for n:m
    n: int = Field(2, ge=1)
    m: int = Field(4, ge=2)
    granularity: Literal["channel", "head", "neuron"] = "channel"
    schedule: PruneSchedule = PruneSchedule()
    scope: Literal["layer", "global"] = "layer"  # unstructured: one magnitude threshold per layer or overall
    layers: list[str] = ["*"]  # fnmatch globs over module names; structured: the producing layers
    skip: list[str] = []
    importance: Literal["magnitude", "activation"] = Field("magnitude", description=(
        "structured units ranked by the producers' weights (L2), or by each unit's expected share of its "
        "consumer's output, E[x_u^2] * ||W[:, u]||^2, on the training batches the model sees (neuron, head)"))

    @model_validator(mode="after")
    def _consistent(self) -> "PruneConfig":
        if self.pattern == "n:m":
            if self.n >= self.m:
                raise ValueError(f"n:m keeps n of every m weights, so n ({self.n}) must be below m "
                                 f"({self.m})")
            if self.sparsity is not None and not math.isclose(self.sparsity, 1 - self.n / self.m):
                raise ValueError(f"sparsity {self.sparsity} contradicts {self.n}:{self.m} (which removes "
                                 f"{1 - self.n / self.m:g}); leave sparsity out for pattern 'n:m'")
        elif self.sparsity is None:
            raise ValueError(f"pattern '{self.pattern}' needs sparsity, the final fraction removed "
                             "(0 <= s < 1)")
        if self.granularity != "channel" and self.pattern != "structured":
            raise ValueError(f"granularity '{self.granularity}' applies only to pattern 'structured'")
        if self.scope == "global" and self.pattern != "unstructured":
            raise ValueError("scope 'global' applies only to pattern 'unstructured'")
        if self.importance == "activation" and (self.pattern != "structured" or self.granularity == "channel"):
            raise ValueError("importance 'activation' ranks FFN neurons or attention heads: it applies only to "
                             "pattern 'structured' with granularity 'neuron' or 'head'")
        return self

    @property
    def final_sparsity(self) -> float:
        return 1 - self.n / self.m if self.pattern == "n:m" else float(self.sparsity)


def cubic_sparsity(final: float, step: int, total_steps: int, schedule: PruneSchedule) -> float:
    """Zhu and Gupta (2017): s = final * (1 - (1 - p)^3), p the progress from start to end."""
    if total_steps <= 0:
        return final
    t = step / total_steps
    if t < schedule.start:
        return 0.0
    if t >= schedule.end:
        return final
    p = (t - schedule.start) / (schedule.end - schedule.start)
    return final * (1 - (1 - p) ** 3)


# --- masks as parametrizations ------------------------------------------------------------------------

class Mask(nn.Module):
    """Parametrization: the tensor a module computes with is ``original * mask``."""

    def __init__(self, mask: torch.Tensor) -> None:
        super().__init__()
        self.register_buffer("mask", mask.bool())  # same shape as the tensor it masks

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.mask


def _original(module: nn.Module, tensor: str) -> torch.Tensor:
    if parametrize.is_parametrized(module, tensor):
        return module.parametrizations[tensor].original
    return getattr(module, tensor)


def _add_mask(module: nn.Module, tensor: str) -> Mask:
    """A new all-ones Mask on ``module.<tensor>``, after any it has (each technique owns its own)."""
    mask = Mask(torch.ones_like(_original(module, tensor), dtype=torch.bool))
    parametrize.register_parametrization(module, tensor, mask)
    return mask


def _combined_mask(module: nn.Module, tensor: str) -> torch.Tensor:
    """Every Mask on ``module.<tensor>`` together (bool, the tensor's shape)."""
    masks = [p.mask for p in module.parametrizations[tensor] if isinstance(p, Mask)]
    return torch.stack(masks).all(0) if len(masks) > 1 else masks[0]


def bake_masks(model: nn.Module) -> nn.Module:
    """Write the masks into the weights and drop the parametrizations (plain state_dict keys, no mask op).

    Only tensors whose every parametrization is a Mask are baked; training after baking can regrow zeros.
    """
    for module in model.modules():
        for tensor in list(getattr(module, "parametrizations", {}) or {}):
            if all(isinstance(p, Mask) for p in module.parametrizations[tensor]):
                parametrize.remove_parametrizations(module, tensor, leave_parametrized=True)
    return model


# --- what can be pruned -------------------------------------------------------------------------------

def _is_hf_conv1d(m: nn.Module) -> bool:
    """transformers' Conv1D (GPT-2): a linear layer whose weight is stored (in, out)."""
    return _kind(m) == "Conv1D" and hasattr(m, "nf") and hasattr(m, "weight")


def is_mac(m: nn.Module) -> bool:
    conv = isinstance(m, nn.modules.conv._ConvNd) and not m.transposed
    return isinstance(m, nn.Linear) or conv or _is_hf_conv1d(m)


def is_depthwise(m: nn.Module) -> bool:
    conv = isinstance(m, nn.modules.conv._ConvNd)
    return conv and m.groups > 1 and m.groups == m.in_channels == m.out_channels


def weight_axes(m: nn.Module) -> tuple[int, int]:
    """(output axis, input axis) of the module's weight."""
    return (1, 0) if _is_hf_conv1d(m) else (0, 1)


def _in_size(m: nn.Module) -> int:
    return _original(m, "weight").shape[weight_axes(m)[1]]  # in_features, or in_channels / groups


def _out_size(m: nn.Module) -> int:
    return _original(m, "weight").shape[weight_axes(m)[0]]


def _display(name: str) -> str:
    return name or "(root)"


def _kind(m: nn.Module) -> str:
    return type(m).__name__.removeprefix("Parametrized")  # the class parametrize derived from


@dataclass
class UnitSlice:
    """One tensor a structured group touches: unit u owns entries [u*block, (u+1)*block) along ``axis``."""

    module: nn.Module
    tensor: str  # "weight" or "bias"
    axis: int
    block: int = 1


@dataclass
class _Group:
    """Units removed together (channels, neurons or heads); importance is read from the producers."""

    name: str
    units: int
    producers: list[UnitSlice]
    followers: list[UnitSlice] = field(default_factory=list)  # consumer columns, norms, depthwise filters


@dataclass
class _Plan:
    layers: dict[str, nn.Module]  # unstructured and n:m targets
    groups: list[_Group]  # structured
    pairing: str = ""  # how structured groups were found
    left_dense: tuple[str, ...] = ()  # n:m under the default layers: layers whose input size does not fit m


def _slices(m: nn.Module, axis_of: str, block: int = 1) -> list[UnitSlice]:
    """The weight (and, for output rows, bias) slices of a module along its output or input axis."""
    out_axis, in_axis = weight_axes(m)
    out = [UnitSlice(m, "weight", out_axis if axis_of == "out" else in_axis, block)]
    if axis_of == "out" and isinstance(getattr(m, "bias", None), torch.Tensor):
        out.append(UnitSlice(m, "bias", 0, block))
    return out


def _norm_slices(bn: nn.Module) -> list[UnitSlice]:
    return [UnitSlice(bn, t, 0) for t in ("weight", "bias") if isinstance(getattr(bn, t, None), torch.Tensor)]


# --- channel pairs, found through torch.fx ------------------------------------------------------------

_CHANNELWISE_MODULES = (
    nn.ReLU, nn.ReLU6, nn.LeakyReLU, nn.GELU, nn.SiLU, nn.ELU, nn.SELU, nn.CELU, nn.Hardswish, nn.Hardtanh,
    nn.Hardsigmoid, nn.Tanh, nn.Sigmoid, nn.Mish, nn.Softplus, nn.Identity, nn.Dropout, nn.Dropout1d,
    nn.Dropout2d, nn.Dropout3d, nn.AlphaDropout,
)
_POOL_MODULES = (
    nn.MaxPool1d, nn.MaxPool2d, nn.MaxPool3d, nn.AvgPool1d, nn.AvgPool2d, nn.AvgPool3d, nn.AdaptiveAvgPool1d,
    nn.AdaptiveAvgPool2d, nn.AdaptiveAvgPool3d, nn.AdaptiveMaxPool1d, nn.AdaptiveMaxPool2d,
    nn.AdaptiveMaxPool3d,
)
_CHANNELWISE_FUNCTIONS = {
    F.relu, F.relu6, F.leaky_relu, F.gelu, F.silu, F.elu, F.hardswish, F.hardtanh, F.mish, F.softplus,
    F.dropout,
    torch.relu, torch.sigmoid, torch.tanh, F.sigmoid, F.tanh,
    "relu", "relu_", "sigmoid", "tanh", "contiguous", "clone",
}
_POOL_FUNCTIONS = {
    F.max_pool1d, F.max_pool2d, F.max_pool3d, F.avg_pool1d, F.avg_pool2d, F.avg_pool3d, F.adaptive_avg_pool1d,
    F.adaptive_avg_pool2d, F.adaptive_avg_pool3d, F.adaptive_max_pool1d, F.adaptive_max_pool2d, F.pad,
}
_SCALAR_OPS = {operator.mul, operator.add, operator.sub, operator.truediv, torch.mul, torch.add, torch.div,
               "mul", "add", "sub", "div"}
_METADATA = {"size", "dim", "shape"}

# Layouts of a producer's channels along the way: "first" (B, C, ...) as a conv writes them, "last"
# (..., C) as a linear writes them, "flat" (B, C*L) after flattening "first" (the block L is read off the
# consumer's in_features).


def _module_pass(m: nn.Module, layout: str) -> tuple[str, list[UnitSlice]] | None:
    """(layout after the module, slices it owns) if it keeps channels apart, else None."""
    if isinstance(m, nn.Flatten):
        return ("flat", []) if layout == "first" and m.start_dim == 1 and m.end_dim == -1 else None
    if isinstance(m, _CHANNELWISE_MODULES):
        return layout, []
    if isinstance(m, _POOL_MODULES) and layout == "first":
        return layout, []
    if isinstance(m, nn.modules.batchnorm._BatchNorm) and layout in ("first", "last"):
        return layout, _norm_slices(m)
    if is_depthwise(m) and layout == "first":
        return layout, _slices(m, "out")
    return None


def _consumer_slices(m: nn.Module, layout: str, channels: int) -> list[UnitSlice] | None:
    """The input-column slices of a Linear/Conv that reads the producer's channels whole, else None."""
    if not is_mac(m) or is_depthwise(m):
        return None
    if isinstance(m, nn.modules.conv._ConvNd):
        return _slices(m, "in") if layout == "first" and m.groups == 1 and m.in_channels == channels else None
    if layout == "last" and _in_size(m) == channels:
        return _slices(m, "in")
    if layout == "flat" and _in_size(m) % channels == 0:
        return _slices(m, "in", block=_in_size(m) // channels)
    return None


def _is_flatten(node: fx.Node) -> bool:
    """torch.flatten(x, 1), x.flatten(1), x.view(x.size(0), -1) or x.reshape(b, -1)."""
    args = node.args[1:]
    if node.target in (torch.flatten, "flatten"):
        start = args[0] if args else node.kwargs.get("start_dim", 0)
        end = args[1] if len(args) > 1 else node.kwargs.get("end_dim", -1)
        return start == 1 and end == -1
    if node.target in ("view", "reshape", torch.reshape):
        shape = args[0] if len(args) == 1 and isinstance(args[0], (tuple, list)) else args
        return len(shape) == 2 and isinstance(shape[1], int) and shape[1] == -1
    return False


def _function_pass(node: fx.Node, source: fx.Node, layout: str) -> str | None:
    """The layout after a function or method call if it keeps channels apart, else None."""
    others = [a for a in (*node.args, *node.kwargs.values()) if a is not source]
    if any(isinstance(a, fx.Node) for a in others):
        return None  # a second tensor flows in (a residual add, a product with another branch)
    if _is_flatten(node):
        return "flat" if layout == "first" else None
    if node.target in _CHANNELWISE_FUNCTIONS or node.target in _SCALAR_OPS:
        return layout
    if node.target in _POOL_FUNCTIONS and layout == "first":
        return layout
    return None


def _is_metadata(node: fx.Node) -> bool:
    return node.target in _METADATA or (node.op == "call_function" and node.target is getattr)


_SKIP = object()  # a user of the producer's value that reads no channels (shape metadata)


def _walk(start: fx.Node, layout: str, step: Any) -> list[UnitSlice] | None:
    """Walk forward from a producer to every consumer; None if its channels meet anything else.

    ``step(user, node, layout)`` says what one user does with them: _SKIP, None (they meet something else),
    (slices, None) for a consumer, or (slices, layout after) for an op that keeps them apart."""
    found, consumers, todo = [], 0, [(start, layout)]
    while todo:
        node, layout = todo.pop()
        for user in node.users:
            got = step(user, node, layout)
            if got is _SKIP:
                continue
            if got is None:
                return None
            slices, after = got
            found += slices
            if after is None:
                consumers += 1
            else:
                todo.append((user, after))
    return found if consumers else None


def _shared_layer(m: nn.Module) -> bool:
    return is_mac(m) or isinstance(m, nn.modules.batchnorm._BatchNorm)


def _follow(start: fx.Node, channels: int, layout: str, modules: dict, shared: set) -> list[UnitSlice] | None:
    """_walk on a torch.fx graph: layers are call_module nodes."""
    def step(user: fx.Node, node: fx.Node, layout: str) -> Any:
        if _is_metadata(user):
            return _SKIP
        if user.op == "call_module":
            m = modules[user.target]
            if user.target in shared and _shared_layer(m):
                return None  # a weight used twice also sees other inputs
            consumed = _consumer_slices(m, layout, channels) if user.args[0] is node else None
            if consumed is not None:
                return consumed, None
            passed = _module_pass(m, layout)
        else:
            called = user.op in ("call_function", "call_method")
            after = _function_pass(user, node, layout) if called else None
            passed = None if after is None else (after, [])
        return None if passed is None else (passed[1], passed[0])

    return _walk(start, layout, step)


def _traced_groups(model: nn.Module, graph: fx.Graph, prefix: str = "") -> list[_Group]:
    modules = dict(model.named_modules())
    calls = Counter(n.target for n in graph.nodes if n.op == "call_module")
    shared = {name for name, k in calls.items() if k > 1}
    groups = []
    for node in graph.nodes:
        m = modules.get(node.target) if node.op == "call_module" else None
        if m is None or not is_mac(m) or is_depthwise(m) or node.target in shared:
            continue
        layout = "first" if isinstance(m, nn.modules.conv._ConvNd) else "last"
        followers = _follow(node, _out_size(m), layout, modules, shared)
        if followers:
            groups.append(_Group(prefix + node.target, _out_size(m), _slices(m, "out"), followers))
    return groups


class _LayerTracer(fx.Tracer):
    """Keeps every Linear/Conv and norm a call_module node, wrapped or subclassed (quantized) as well."""

    def is_leaf_module(self, m: nn.Module, qualname: str) -> bool:
        keep = is_mac(m) or isinstance(m, nn.modules.batchnorm._BatchNorm)
        return keep or super().is_leaf_module(m, qualname)


def _graphs(module: nn.Module, prefix: str = "") -> Iterator[tuple[str, nn.Module, fx.Graph]]:
    """(name prefix, module, graph) of the largest submodules torch.fx can trace.

    A model with control flow on its inputs (Hugging Face models) rarely traces whole, but its blocks do; a
    producer whose channels leave a traced block is not paired, so pairs are never guessed.
    """
    try:
        yield prefix, module, _LayerTracer().trace(module)
    except Exception:  # control flow on values, unsupported ops: look one level down
        for name, child in module.named_children():
            if not is_mac(child) and next(child.children(), None) is not None:  # ModuleLists too
                yield from _graphs(child, f"{prefix}{name}.")


# --- the same pairs on torch.export's ATen graph (layers as wattless::region nodes) ---------------------

_aten = torch.ops.aten
_ATEN_CHANNELWISE = {
    _aten.relu.default, _aten.relu_.default, _aten.silu.default, _aten.silu_.default, _aten.gelu.default,
    _aten.sigmoid.default, _aten.tanh.default, _aten.hardtanh.default, _aten.hardtanh_.default,
    _aten.hardswish.default, _aten.hardswish_.default, _aten.hardsigmoid.default, _aten.leaky_relu.default,
    _aten.elu.default, _aten.mish.default, _aten.softplus.default, _aten.clone.default, _aten.contiguous.default,
    _aten.dropout.default, _aten.alias.default, _aten.detach.default,
    _aten.mul.Tensor, _aten.mul.Scalar, _aten.add.Tensor, _aten.add.Scalar, _aten.sub.Tensor, _aten.sub.Scalar,
    _aten.div.Tensor, _aten.div.Scalar,  # with a number as the other operand (a second tensor refuses)
}
_ATEN_POOLS = {
    _aten.max_pool1d.default, _aten.max_pool2d.default, _aten.max_pool3d.default, _aten.avg_pool1d.default,
    _aten.avg_pool2d.default, _aten.avg_pool3d.default, _aten.adaptive_avg_pool1d.default,
    _aten.adaptive_avg_pool2d.default, _aten.adaptive_avg_pool3d.default, _aten.adaptive_max_pool1d.default,
    _aten.adaptive_max_pool2d.default, _aten.max_pool2d_with_indices.default,
}
_ATEN_RESHAPES = {_aten.view.default, _aten.reshape.default, _aten.flatten.using_ints, _aten.squeeze.dims,
                  _aten.squeeze.dim, _aten._unsafe_view.default}


def _shape(node: fx.Node) -> tuple[int, ...] | None:
    val = node.meta.get("val")
    return tuple(val.shape) if isinstance(val, torch.Tensor) else None


def _aten_pass(node: fx.Node, source: fx.Node, layout: str) -> str | None:
    """The layout after an ATen op if it keeps the producer's channels apart, else None."""
    if any(isinstance(a, fx.Node) for a in (*node.args, *node.kwargs.values()) if a is not source):
        return None  # a second tensor flows in (a residual add, a squeeze-and-excitation product)
    if node.args[0] is not source:
        return None
    shape_in, shape_out = _shape(source), _shape(node)
    if node.target in _ATEN_CHANNELWISE:
        return layout
    if layout != "first" or shape_in is None or shape_out is None or len(shape_in) < 3:
        return None
    if node.target in _ATEN_POOLS:
        return layout
    if node.target in (_aten.constant_pad_nd.default, _aten.pad.default):  # pads spatial dims only
        return layout if len(node.args[1]) <= 2 * (len(shape_in) - 2) else None
    if node.target is _aten.mean.dim:  # a mean over spatial dims: (B, C, 1..) or (B, C)
        dims = {d % len(shape_in) for d in node.args[1]}
        if 0 in dims or 1 in dims:
            return None
        return "first" if len(shape_out) > 2 else "last"
    if node.target in _ATEN_RESHAPES and len(shape_out) == 2 and shape_out[0] == shape_in[0]:
        return "flat"  # (B, C, ...) -> (B, C * prod(...)): a consumer reads blocks of in_features / C
    return None


def _exported_groups(model: nn.Module, example: Any) -> list[_Group]:
    """Channel pairs on the ATen graph: layers are region nodes (consumers, BatchNorm, depthwise convs)."""
    from wattless.export.traced import REGION, region_program  # export imports the techniques

    graph, regions = region_program(model, example, _shared_layer)
    nodes = [n for n in graph.nodes if n.op == "call_function" and n.target is REGION]
    calls = Counter(n.args[1] for n in nodes)
    by_module = Counter(id(regions[k][1]) for k in calls)  # a module under two keys is shared as well
    shared = {k for k, c in calls.items() if c > 1 or by_module[id(regions[k][1])] > 1}

    def step(user: fx.Node, node: fx.Node, layout: str, channels: int) -> Any:
        if user.op != "call_function" or user.target is _aten.sym_size.int:
            return None if user.op == "output" else _SKIP  # the output: the channels leave the model
        if user.target is not REGION:
            after = _aten_pass(user, node, layout)
            return None if after is None else ([], after)
        key, m = user.args[1], regions[user.args[1]][1]
        if (key in shared and _shared_layer(m)) or user.args[0] is not node:
            return None
        consumed = _consumer_slices(m, layout, channels)
        if consumed is not None:
            return consumed, None
        passed = _module_pass(m, layout)
        return None if passed is None else (passed[1], passed[0])

    groups = []
    for node in nodes:
        path, m = regions[node.args[1]]
        if not is_mac(m) or is_depthwise(m) or node.args[1] in shared:
            continue
        layout, units = ("first" if isinstance(m, nn.modules.conv._ConvNd) else "last"), _out_size(m)
        followers = _walk(node, layout, lambda u, n, lay, c=units: step(u, n, lay, c))
        if followers:
            groups.append(_Group(path, units, _slices(m, "out"), followers))
    return groups


def _channel_groups(model: nn.Module, example: Any = None) -> tuple[list[_Group], str]:
    """Channel pairs from torch.fx on the whole model; where that fails and an example input is given, from
    torch.export (which runs Python control flow on shapes); else torch.fx block by block."""
    traced = list(_graphs(model))
    whole = len(traced) == 1 and traced[0][0] == ""
    if not whole and isinstance(example, torch.Tensor):
        was = model.training
        try:
            model.eval()
            return _exported_groups(model, example[:2]), "torch.export"
        except Exception:  # torch.export refused the forward: the blocks torch.fx traces
            pass
        finally:
            model.train(was)
    groups = [g for prefix, module, graph in traced for g in _traced_groups(module, graph, prefix)]
    return groups, "torch.fx" if whole else f"torch.fx per block ({len(traced)} traced)"


# --- the converted form: units a pruned model can drop -----------------------------------------------

@dataclass(frozen=True)
class UnitCut:
    """A structured group whose dead units (every reader's columns zero) can be cut from every tensor."""

    group: str
    kept: torch.Tensor  # (kept,) int64 indices of the units that stay
    total: int
    slices: tuple[UnitSlice, ...]  # producers, then followers: where the units lie


def _dead_units(group: _Group) -> torch.Tensor | None:
    """(units,) bool: True where every Linear/Conv reading the group has only zero columns; None: no reader."""
    readers = [s for s in group.followers if s.tensor == "weight" and is_mac(s.module)
               and not is_depthwise(s.module) and s.axis == weight_axes(s.module)[1]]
    if not readers:
        return None
    dead = torch.ones(group.units, dtype=torch.bool)
    for s in readers:
        w = s.module.weight.detach().movedim(s.axis, 0).reshape(group.units, -1)
        dead &= (w == 0).all(1).cpu()
    return dead


def structural_cuts(model: nn.Module, example: Any = None) -> list[UnitCut]:
    """The groups (torch.fx channel pairs) with units that carry nothing, for shrinking tensors at export.

    A unit is cut only where all its readers are known; a model torch.fx cannot trace has no known pairs."""
    try:
        groups, _ = _channel_groups(model, example)
    except Exception:
        return []
    cuts = []
    for g in groups:
        dead = _dead_units(g)
        if dead is None or not bool(dead.any()):
            continue
        if bool(dead.all()):
            dead[0] = False  # an empty tensor helps no runtime; keep one unit
        cuts.append(UnitCut(g.name, torch.nonzero(~dead).flatten(), g.units, (*g.producers, *g.followers)))
    return cuts


# --- transformer units, found by name -----------------------------------------------------------------

# (producers, consumer) submodule paths of one FFN block: BERT/RoBERTa/ViT, GPT-2, OPT/CLIP, LLaMA/Mistral.
_FFN_NAMES = [
    (("intermediate.dense",), "output.dense"),
    (("c_fc",), "c_proj"),
    (("fc1",), "fc2"),
    (("gate_proj", "up_proj"), "down_proj"),
]


def _submodule(m: nn.Module, path: str) -> nn.Module | None:
    try:
        return m.get_submodule(path)
    except AttributeError:
        return None


def _neuron_groups(model: nn.Module, example: Any = None) -> tuple[list[_Group], str]:
    groups = []
    for name, block in model.named_modules():
        for producer_paths, consumer_path in _FFN_NAMES:
            producers = [_submodule(block, p) for p in producer_paths]
            consumer = _submodule(block, consumer_path)
            if not all(p is not None and is_mac(p) for p in (*producers, consumer)):
                continue
            prefix = f"{name}." if name else ""
            slices = [s for p in producers for s in _slices(p, "out")]
            groups.append(_Group(prefix + producer_paths[0], _out_size(producers[0]), slices,
                                 _slices(consumer, "in")))
    if groups:
        return groups, "FFN blocks by name"
    traced, how = _channel_groups(model, example)
    return [g for g in traced if not isinstance(g.producers[0].module, nn.modules.conv._ConvNd)], how


def _head_groups(model: nn.Module, example: Any = None) -> tuple[list[_Group], str]:
    """BERT-style self-attention: a module with query/key/value, and a sibling ``output.dense``."""
    groups = []
    for name, parent in model.named_modules():
        for child_name, attn in parent.named_children():
            q, k, v = (getattr(attn, p, None) for p in ("query", "key", "value"))
            out = _submodule(parent, "output.dense")
            if not all(isinstance(t, nn.Linear) for t in (q, k, v, out)):
                continue
            heads = getattr(attn, "num_attention_heads", None)
            if not isinstance(heads, int):
                raise PruneError(f"prune: '{name}.{child_name}' has query/key/value but no integer "
                                 "num_attention_heads, so its heads cannot be found; use granularity "
                                 "'neuron'")
            size = q.out_features // heads  # attention_head_size
            slices = [s for t in (q, k, v) for s in _slices(t, "out", size)]
            prefix = f"{name}." if name else ""
            groups.append(_Group(prefix + child_name, heads, slices, _slices(out, "in", size)))
    return groups, "self-attention by name"


# --- the plan, validated before training --------------------------------------------------------------

def _check_globs(names: list[str], config: PruneConfig, model: nn.Module) -> None:
    examples = ", ".join(_display(n) for n in names[:6]) + (", ..." if len(names) > 6 else "")
    for key in ("layers", "skip"):
        for glob in getattr(config, key):
            if not any(fnmatch(n, glob) for n in names):
                raise PruneError(f"prune: {key} glob '{glob}' matches no Linear/Conv layer of "
                                 f"{type(model).__name__} (its layers: {examples}); fix or remove the glob")


def _selected(name: str, config: PruneConfig) -> bool:
    return any(fnmatch(name, g) for g in config.layers) and not any(fnmatch(name, g) for g in config.skip)


def _check_nm(layers: dict[str, nn.Module], config: PruneConfig) -> None:
    bad = [(n, m) for n, m in layers.items() if _in_size(m) % config.m]
    if bad:
        what = ", ".join(f"'{_display(n)}' ({_kind(m)}, input size {_in_size(m)})" for n, m in bad)
        raise PruneError(
            f"prune: {config.n}:{config.m} groups weights in {config.m}s along the input, so every pruned "
            f"layer's input size (in_features, or in_channels/groups) must be a multiple of {config.m}; "
            f"not so for {what}. Add them to skip, e.g. skip={[n for n, _ in bad]}")


def _structured(model: nn.Module, config: PruneConfig, example: Any) -> tuple[list[_Group], str]:
    find = {"channel": _channel_groups, "neuron": _neuron_groups, "head": _head_groups}[config.granularity]
    groups, how = find(model, example)
    if not groups:
        why = {
            "channel": "no Linear/Conv whose output channels reach other Linear/Conv layers only through "
                       "channel-wise ops (activations, BatchNorm, pooling, flatten)",
            "neuron": "no FFN block (intermediate.dense/output.dense, c_fc/c_proj, fc1/fc2, "
                      "gate_proj/up_proj/down_proj) and no Linear feeding another Linear",
            "head": "no BERT-style self-attention (a module with query/key/value Linears and a sibling "
                    "output.dense)",
        }[config.granularity]
        raise PruneError(f"prune: granularity '{config.granularity}' found {why} in {type(model).__name__} "
                         f"(searched by {how}); use pattern 'unstructured' or another granularity")
    names = {id(m): n for n, m in model.named_modules()}
    chosen = [g for g in groups if all(_selected(names[id(s.module)], config) for s in g.producers)]
    return chosen, how


def _plan(model: nn.Module, config: PruneConfig, example: Any = None) -> _Plan:
    names = [n for n, m in model.named_modules() if is_mac(m)]
    _check_globs(names, config, model)
    if config.pattern == "structured":
        groups, how = _structured(model, config, example)
        plan = _Plan({}, groups, how)
    else:
        modules = dict(model.named_modules())
        plan = _Plan({n: modules[n] for n in names if _selected(n, config)}, [])
        if config.pattern == "n:m" and config.layers == ["*"]:  # every layer by default: those that fit the pattern
            unfit = tuple(n for n, m in plan.layers.items() if _in_size(m) % config.m)
            plan = _Plan({n: m for n, m in plan.layers.items() if n not in unfit}, [], left_dense=unfit)
        elif config.pattern == "n:m":  # layers the user named must fit it
            _check_nm(plan.layers, config)
    if not plan.layers and not plan.groups:
        raise PruneError(f"prune: layers={config.layers} with skip={config.skip} leaves nothing to prune in "
                         f"{type(model).__name__}; narrow skip or widen layers")
    return plan


def check_prunable(model: nn.Module, config: PruneConfig, example: Any = None) -> None:
    """Raise PruneError (a ValueError) naming the layer and the problem if ``config`` cannot prune it."""
    _plan(model, config, example)


# --- choosing what to remove --------------------------------------------------------------------------

def _drop_smallest(scores: torch.Tensor, count: int) -> torch.Tensor:
    """Bool keep-mask over a flat score vector, without its ``count`` smallest entries."""
    keep = torch.ones_like(scores, dtype=torch.bool)
    keep[torch.topk(scores, count, largest=False, sorted=False).indices] = False  # 7x faster than a sort
    return keep


def _magnitude_masks(layers: dict[str, nn.Module], sparsity: float, scope: str) -> dict[str, torch.Tensor]:
    scores = {n: m.weight.detach().abs().flatten() for n, m in layers.items()}  # masked: pruned stay pruned
    if scope == "layer":
        return {n: _drop_smallest(s, round(sparsity * s.numel())).view_as(layers[n].weight)
                for n, s in scores.items()}
    flat = torch.cat([s.float() for s in scores.values()])
    keep = _drop_smallest(flat, round(sparsity * flat.numel())).split([s.numel() for s in scores.values()])
    return {n: k.view_as(layers[n].weight) for n, k in zip(scores, keep)}


def _nm_mask(module: nn.Module, m: int, drop: int) -> torch.Tensor:
    """Drop the ``drop`` smallest of every m weights along the input axis (the energy core's 2:4 layout)."""
    in_axis = weight_axes(module)[1]
    w = module.weight.detach().abs().movedim(in_axis, -1)  # Linear (O, I); Conv (O, kh, kw, I)
    groups = w.reshape(*w.shape[:-1], -1, m)  # (..., I/m, m)
    dropped = groups.argsort(dim=-1, stable=True)[..., :drop]
    keep = torch.ones_like(groups, dtype=torch.bool).scatter_(-1, dropped, False)
    return keep.reshape(w.shape).movedim(-1, in_axis)


def _along(s: UnitSlice, keep: torch.Tensor) -> torch.Tensor:
    """A group's keep vector (units,) spread over one tensor's axis, shaped to broadcast against it."""
    tensor = _original(s.module, s.tensor)
    shape = [1] * tensor.dim()
    shape[s.axis] = tensor.shape[s.axis]
    return keep.repeat_interleave(s.block).view(shape)


def _importance(group: _Group) -> torch.Tensor:
    """(units,) sum of squared masked producer weights per unit: the L2 norm, squared."""
    total = torch.zeros(group.units)
    for s in group.producers:
        if s.tensor == "weight":
            w = s.module.weight.detach().float().movedim(s.axis, 0)
            total += w.reshape(group.units, -1).pow(2).sum(1).cpu()
    return total


class _ConsumerInputs:
    """E[x^2] per input column of every group's consumer, an exponential moving average over the forwards the
    model runs in training mode: with the consumer's weight columns, each unit's expected share of the
    consumer's output, ||W[:, u] x_u||^2 = ||W[:, u]||^2 E[x_u^2] (magnitude alone ranks MiniLM's FFN
    neurons worse than chance by that measure)."""

    decay = 0.9  # per batch: the last ten or so batches, as the weights move under training

    def __init__(self, groups: list[_Group], names: dict[int, str]) -> None:
        self.consumers = {g.name: [s for s in g.followers if s.tensor == "weight" and is_mac(s.module)]
                          for g in groups}
        modules = {names[id(s.module)]: s.module for ss in self.consumers.values() for s in ss}
        self.names, self.mean_sq, self.observing = names, {}, False
        self._handles = [m.register_forward_pre_hook(self._hook(n)) for n, m in modules.items()]

    def _hook(self, name: str):
        def observe(module: nn.Module, args: tuple) -> None:
            if not (self.observing or module.training):
                return
            x = args[0].detach().float()
            m = x.pow(2).reshape(-1, x.shape[-1]).mean(0)  # (in,)
            old = self.mean_sq.get(name)
            self.mean_sq[name] = m if old is None else old.lerp(m, 1 - self.decay)
        return observe

    def calibrate(self, model: nn.Module, context: ApplyContext, batches: int = 4) -> None:
        """Seed the statistics from a few training batches (else the example input), in eval mode."""
        from wattless.energy.count import run_model

        feeds = [x for _, (x, _) in zip(range(batches), context.train_batches())] if context.train_batches else []
        if not feeds and context.example_input is None:
            raise PruneError("importance 'activation' needs inputs before training starts: give the context "
                             "training batches or an example input")
        was_training, self.observing = model.training, True
        model.eval()
        try:
            with torch.no_grad():
                for x in feeds or [context.example_input]:
                    run_model(model, x)
        finally:
            model.train(was_training)
            self.observing = False

    def scores(self, group: _Group) -> torch.Tensor:
        """(units,) the expected squared norm each unit adds to its consumers' outputs."""
        total = torch.zeros(group.units)
        for s in self.consumers[group.name]:
            w = s.module.weight.detach().float().movedim(s.axis, -1)  # masked, (..., in)
            column = w.reshape(-1, w.shape[-1]).pow(2).sum(0)  # (in,)
            share = column * self.mean_sq[self.names[id(s.module)]].to(column.device)
            total += share.reshape(group.units, s.block).sum(1).cpu()
        return total

    def ready(self) -> bool:
        return all(self.names[id(s.module)] in self.mean_sq for ss in self.consumers.values() for s in ss)

    def remove(self) -> None:
        for h in self._handles:
            h.remove()


# --- the live handle ----------------------------------------------------------------------------------

class Pruning(Technique):
    """Updates the masks along the schedule; reports per-layer sparsity and kept units."""

    name = "prune"

    def __init__(self, config: PruneConfig, plan: _Plan, names: dict[int, str], model: nn.Module | None = None,
                 context: ApplyContext | None = None) -> None:
        self.config, self.plan, self._names = config, plan, names
        self._model, self._context = model, context
        self._inputs = _ConsumerInputs(plan.groups, names) if config.importance == "activation" else None
        self.current_sparsity = 0.0
        self._final = False
        self._keeps = {g.name: torch.ones(g.units, dtype=torch.bool) for g in plan.groups}
        touched = [s for g in plan.groups for s in (*g.producers, *g.followers)]
        self._tensors = {(id(s.module), s.tensor): s for s in touched}
        self._masks = {(id(m), "weight"): _add_mask(m, "weight") for m in plan.layers.values()}
        for key, s in self._tensors.items():
            self._masks[key] = _add_mask(s.module, s.tensor)
            if s.tensor == "weight":  # loaded masks refresh the kept-unit buffers
                s.module.register_load_state_dict_post_hook(lambda module, _keys: _record_kept(module))
        self._write_structured()

    def on_step(self, step: int, total_steps: int) -> None:
        if self._final or step % self.config.schedule.every:
            return
        sparsity = cubic_sparsity(self.config.final_sparsity, step, total_steps, self.config.schedule)
        if sparsity != self.current_sparsity:  # before start and after end the masks stand
            self.update(sparsity)

    def finish(self, model: nn.Module, context: ApplyContext) -> None:
        self._model, self._context = model, context
        self.update(self.config.final_sparsity)
        self._final = True
        if self._inputs is not None:
            self._inputs.remove()

    def state(self) -> dict[str, Any]:
        held = {} if self._inputs is None else {"input_mean_sq": {n: t.tolist() for n, t in self._inputs.mean_sq.items()}}
        return {"current_sparsity": self.current_sparsity, **held}  # the masks themselves are buffers in the model

    def load_state(self, state: dict[str, Any]) -> None:
        self.current_sparsity = float(state.get("current_sparsity", 0.0))
        if self._inputs is not None:
            self._inputs.mean_sq = {n: torch.tensor(v) for n, v in state.get("input_mean_sq", {}).items()}

    @torch.no_grad()
    def update(self, sparsity: float) -> None:
        """Set every mask for this sparsity (0 <= sparsity <= the final one)."""
        self.current_sparsity = sparsity
        if self.config.pattern == "unstructured":
            for name, keep in _magnitude_masks(self.plan.layers, sparsity, self.config.scope).items():
                self._mask(self.plan.layers[name]).copy_(keep)
        elif self.config.pattern == "n:m":
            final = self.config.final_sparsity
            drop = round((self.config.m - self.config.n) * sparsity / final) if final else 0
            for module in self.plan.layers.values():
                self._mask(module).copy_(_nm_mask(module, self.config.m, drop))
        else:
            if self._inputs is not None and not self._inputs.ready():  # no training forward seen yet
                self._inputs.calibrate(self._model, self._context)
            for g in self.plan.groups:
                removed = min(round(sparsity * g.units), g.units - 1)
                scores = _importance(g) if self._inputs is None else self._inputs.scores(g)
                self._keeps[g.name] = _drop_smallest(scores, removed)
            self._write_structured()

    def _write_structured(self) -> None:
        masks = {key: torch.ones_like(_original(s.module, s.tensor), dtype=torch.bool)
                 for key, s in self._tensors.items()}
        for g in self.plan.groups:
            for s in (*g.producers, *g.followers):
                key = (id(s.module), s.tensor)
                masks[key] &= _along(s, self._keeps[g.name].to(masks[key].device))
        for key, s in self._tensors.items():
            self._mask(s.module, s.tensor).copy_(masks[key])
            if s.tensor == "weight":
                _record_kept(s.module)

    def report(self, model: nn.Module) -> dict[str, Any]:
        layers = self._pruned_weights()
        total = sum(m.numel() for m in layers.values())
        zeros = sum(int((~m).sum()) for m in layers.values())
        c = self.config
        out: dict[str, Any] = {
            "pattern": f"{c.n}:{c.m}" if c.pattern == "n:m" else c.pattern,
            "target_sparsity": c.final_sparsity,
            "sparsity": zeros / total if total else 0.0,
            "layers": {_display(n): {"sparsity": float((~m).sum()) / m.numel(), "params": m.numel()}
                       for n, m in layers.items()},
        }
        if self.plan.left_dense:
            out["left_dense"] = {_display(n): f"input size not a multiple of {c.m}" for n in self.plan.left_dense}
        if c.pattern == "structured":
            out.update(granularity=c.granularity, found_by=self.plan.pairing, units={
                g.name: {"kept": int(self._kept_units(g).sum()), "total": g.units} for g in self.plan.groups})
        return out

    def _pruned_weights(self) -> dict[str, torch.Tensor]:
        modules = list(self.plan.layers.values()) or [
            s.module for s in self._tensors.values() if s.tensor == "weight" and is_mac(s.module)]
        return {self._names[id(m)]: self._mask(m) for m in modules}

    def _mask(self, module: nn.Module, tensor: str = "weight") -> torch.Tensor:
        """This technique's own mask buffer on ``module.<tensor>``."""
        return self._masks[(id(module), tensor)].mask

    def _kept_units(self, group: _Group) -> torch.Tensor:
        """(units,) bool, read off the first producer's mask (so it holds after loading saved masks too)."""
        s = group.producers[0]
        return self._mask(s.module, s.tensor).movedim(s.axis, 0).reshape(group.units, -1).any(1)


def _record_kept(module: nn.Module) -> None:
    """Bool buffers over the weight's rows and columns still in use (not saved; the masks are)."""
    mask = _combined_mask(module, "weight")
    out_axis, in_axis = weight_axes(module) if is_mac(module) else (0, 0)
    for name, axis in (("wattless_kept_out", out_axis), ("wattless_kept_in", in_axis)):
        if name == "wattless_kept_in" and mask.dim() < 2:
            continue
        kept = mask.movedim(axis, 0).reshape(mask.shape[axis], -1).any(1)
        module.register_buffer(name, kept, persistent=False)


@register(PruneConfig, step="convert")
def _convert_pruning(model: nn.Module, config: PruneConfig | None) -> None:
    """The pruned form export reads: masks written into the weights (structural_cuts finds dead units)."""
    bake_masks(model)


@register(PruneConfig)
def apply_prune(model: nn.Module, config: PruneConfig, context: ApplyContext) -> Pruning:
    """Validate, then put an all-ones Mask on every tensor the config prunes; the handle ramps them."""
    plan = _plan(model, config, context.example_input)
    names = {id(m): n for n, m in model.named_modules()}
    return Pruning(config, plan, names, model, context)
