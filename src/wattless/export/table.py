"""Which emitter writes each module as ONNX: torch's layers by class, transformers' activations by name,
and the translations registered for wattless's own modules (experts, exit heads).

    @translation(MyModule)
    def emit(g, ctx, m, x, hint, rank) -> str: ...     # the output value of m applied to x (rank dims)

Quantized and parametrized layers find their float base class's emitter through their MRO."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
from torch import nn

from wattless.errors import ExportError
from wattless.export.graph import F32, MS, Ctx, Graph, to_numpy
from wattless.export.qlayers import conv, linear

__all__ = ["translation", "lookup", "gelu", "TRANSLATIONS"]

Emitter = Callable[..., str]  # (g, ctx, m, x, hint, rank) -> output value
TRANSLATIONS: dict[type, Emitter] = {}


def translation(cls: type) -> Callable[[Emitter], Emitter]:
    """Decorator: the emitter of modules of ``cls`` (and its subclasses); it also makes them leaves of the
    torch.fx walk."""

    def wrap(fn: Emitter) -> Emitter:
        TRANSLATIONS[cls] = fn
        return fn

    return wrap


def _rankless(fn: Callable[..., str]) -> Emitter:
    return lambda g, ctx, m, x, hint, rank: fn(g, ctx, m, x, hint)


def _batchnorm(g: Graph, ctx: Ctx, m: nn.Module, x: str, hint: str) -> str:
    if m.running_mean is None:
        raise ExportError(f"export needs BatchNorm running statistics ({hint} has track_running_stats=False)")
    params = [ctx.keep.take_rows(m, to_numpy(getattr(m, t)) if getattr(m, t) is not None else default)
              for t, default in (("weight", np.ones(m.num_features, F32)), ("bias", np.zeros(m.num_features, F32)),
                                 ("running_mean", None), ("running_var", None))]
    names = [g.const(p, f"{hint}.{t}") for p, t in zip(params, ("scale", "bias", "mean", "var"))]
    ctx.layers[hint] = "fp32 BatchNormalization"
    return g.op("BatchNormalization", [x, *names], hint, epsilon=float(m.eps))


def _pool_attrs(kind: str, m: nn.Module, hint: str) -> dict[str, Any]:
    def tup(v: Any) -> list[int]:
        nd = int(type(m).__name__[-2])
        return list(v) if isinstance(v, (tuple, list)) else [v] * nd

    if getattr(m, "ceil_mode", False) or getattr(m, "return_indices", False):
        raise ExportError(f"export does not support ceil_mode or return_indices on {hint}")
    stride = tup(m.stride if m.stride is not None else m.kernel_size)
    attrs = {"kernel_shape": tup(m.kernel_size), "strides": stride, "pads": tup(m.padding) * 2}
    if kind == "MaxPool":
        attrs["dilations"] = tup(m.dilation)
    else:
        attrs["count_include_pad"] = int(m.count_include_pad)
    return attrs


def _pool(kind: str) -> Callable[..., str]:
    return lambda g, ctx, m, x, hint: g.op(kind, [x], hint, **_pool_attrs(kind, m, hint))


def _adaptive_pool(kind: str) -> Callable[..., str]:
    def emit(g: Graph, ctx: Ctx, m: nn.Module, x: str, hint: str) -> str:
        size = m.output_size if isinstance(m.output_size, (tuple, list)) else [m.output_size]
        if any(s != 1 for s in size):
            raise ExportError(f"export supports adaptive pooling to size 1 only; {hint} pools to {m.output_size}")
        return g.op(kind, [x], hint)

    return emit


def _flatten_module(g: Graph, ctx: Ctx, m: nn.Flatten, x: str, hint: str) -> str:
    if m.start_dim != 1 or m.end_dim != -1:
        raise ExportError(f"export supports Flatten(start_dim=1, end_dim=-1); {hint} has ({m.start_dim}, {m.end_dim})")
    return g.op("Flatten", [x], hint, axis=1)


def gelu(g: Graph, x: str, hint: str, approximate: str = "none") -> str:
    return g.op("FastGelu" if approximate == "tanh" else "Gelu", [x], hint, domain=MS)


def _elementwise(op_type: str, **attrs: Any) -> Callable[..., str]:
    return lambda g, ctx, m, x, hint: g.op(op_type, [x], hint, **attrs)


def _identity(g: Graph, ctx: Ctx, m: nn.Module, x: str, hint: str) -> str:
    return x


def _clip(lo: float, hi: float) -> Callable[..., str]:
    return lambda g, ctx, m, x, hint: g.op("Clip", [x, g.const(lo, "clip.lo"), g.const(hi, "clip.hi")], hint)


def _module_table() -> dict[type, Callable[..., str]]:
    return {
        nn.Linear: linear, nn.Conv1d: conv, nn.Conv2d: conv, nn.Conv3d: conv,
        nn.BatchNorm1d: _batchnorm, nn.BatchNorm2d: _batchnorm, nn.BatchNorm3d: _batchnorm,
        nn.ReLU: _elementwise("Relu"), nn.Sigmoid: _elementwise("Sigmoid"), nn.Tanh: _elementwise("Tanh"),
        nn.GELU: lambda g, c, m, x, h: gelu(g, x, h, m.approximate),
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


TRANSLATIONS.update({cls: _rankless(fn) for cls, fn in _module_table().items()})

# transformers' activation modules, by class name (no import of transformers needed)
_NAMED = {"GELUActivation": lambda g, c, m, x, h: gelu(g, x, h),
          "NewGELUActivation": lambda g, c, m, x, h: gelu(g, x, h, "tanh"),
          "GELUTanh": lambda g, c, m, x, h: gelu(g, x, h, "tanh"),
          "FastGELUActivation": lambda g, c, m, x, h: gelu(g, x, h, "tanh")}


def lookup(m: nn.Module) -> Emitter | None:
    """The emitter of ``m``: its class's or the nearest base class's translation, else by class name; None
    (torch.onnx traces it) for what the table's emitters do not write (ceil-mode pooling)."""
    if getattr(m, "ceil_mode", False) or getattr(m, "return_indices", False):
        return None
    for cls in type(m).__mro__:  # Quant* and parametrized subclasses find their float base class
        if cls in TRANSLATIONS:
            return TRANSLATIONS[cls]
    named = _NAMED.get(type(m).__name__)
    return _rankless(named) if named is not None else None
