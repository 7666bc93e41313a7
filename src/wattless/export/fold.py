"""BatchNorm folded into the Conv or Linear before it, in the deployed copy the export writes and checks.

    y = BN(conv(x)) = conv(x) * f + (b - mean) * f + beta,   f = gamma / sqrt(var + eps)   (per channel)

The weight's rows are scaled by f and the BatchNorm becomes Identity. For a quantized layer the per-channel
weight step is scaled by |f| too, so its integer codes stay the trained ones (negated where f < 0; a layer holding the grid's most negative code
in such a channel, which has no positive twin, keeps its BatchNorm): the fold
costs no accuracy and removes a float op (priced as part of an int8 layer, run as one).

A pair is found on an example forward: the BatchNorm's input is the very tensor the layer returned. Whether
anything else reads that tensor (a skip from before the norm) a forward hook cannot see, so the folded model
is checked against the unfolded one on the example, and pairs are undone one by one until it matches.
"""

from __future__ import annotations

import copy
from typing import Any

import torch
from torch import nn

from wattless.techniques.quantize import integer_weights, is_quantized

__all__ = ["fold_batchnorms"]

_LAYERS = (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Linear)
_NORMS = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)


def _pairs(model: nn.Module, run: Any) -> list[tuple[str, str]]:
    """(layer name, BatchNorm name) where the norm reads exactly the layer's output, in forward order."""
    names = {id(m): n for n, m in model.named_modules()}
    produced: dict[int, str] = {}
    pairs: list[tuple[str, str]] = []

    def after_layer(m: nn.Module, args: tuple, out: Any) -> None:
        if isinstance(out, torch.Tensor):
            produced[id(out)] = names[id(m)]

    def before_norm(m: nn.Module, args: tuple) -> None:
        layer = produced.get(id(args[0])) if args else None
        if layer is not None and (layer, names[id(m)]) not in pairs:
            pairs.append((layer, names[id(m)]))

    hooks = [m.register_forward_hook(after_layer) for m in model.modules() if isinstance(m, _LAYERS)]
    hooks += [m.register_forward_pre_hook(before_norm) for m in model.modules()
              if isinstance(m, _NORMS) and m.track_running_stats and m.running_mean is not None]
    try:
        with torch.no_grad():
            run(model)
    finally:
        for h in hooks:
            h.remove()
    used = [layer for layer, _ in pairs]
    modules = dict(model.named_modules())
    return [(layer, norm) for layer, norm in pairs  # a layer read by one norm, whose codes survive the fold
            if used.count(layer) == 1 and _codes_survive(modules[layer], modules[norm])]


@torch.no_grad()
def _codes_survive(layer: nn.Module, norm: nn.Module) -> bool:
    """Whether a quantized layer's codes stay representable when a channel's factor is negative: its codes
    are negated there, and the grid's most negative code (-2^(k-1)) has no positive twin."""
    if not is_quantized(layer) or getattr(layer, "weight_step", None) is None:
        return True
    gamma = norm.weight if norm.affine else torch.ones_like(norm.running_var)
    codes, _ = integer_weights(layer)
    negative = gamma < 0
    return not bool((codes[negative] == -(2 ** (layer.weight_bits - 1))).any())


@torch.no_grad()
def _fold(layer: nn.Module, norm: nn.Module) -> None:
    f = norm.weight / torch.sqrt(norm.running_var + norm.eps) if norm.affine else 1 / torch.sqrt(norm.running_var + norm.eps)
    beta = norm.bias if norm.affine else torch.zeros_like(f)
    if layer.weight.shape[0] != f.numel():
        raise ValueError("channel counts differ")
    shape = (-1,) + (1,) * (layer.weight.dim() - 1)
    layer.weight.mul_(f.reshape(shape))
    bias = layer.bias if layer.bias is not None else torch.zeros_like(f)
    new_bias = (bias - norm.running_mean) * f + beta
    if layer.bias is None:
        layer.bias = nn.Parameter(new_bias)
    else:
        layer.bias.copy_(new_bias)
    step = getattr(layer, "weight_step", None) if is_quantized(layer) else None
    if step is not None:  # the step absorbs |f|: the same codes (sign flipped where f < 0)
        step.copy_(step.abs() * (f.abs() if step.numel() == f.numel() else f.abs().mean()))


def _replace(model: nn.Module, name: str) -> None:
    parent, _, child = name.rpartition(".")
    setattr(model.get_submodule(parent) if parent else model, child, nn.Identity())


def _close(a: Any, b: Any) -> bool:
    if isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor):
        return a.shape == b.shape and torch.allclose(a.float(), b.float(), rtol=1e-3, atol=1e-5)
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(_close(a[k], b[k]) for k in a if a[k] is not None)
    if isinstance(a, (tuple, list)) and isinstance(b, (tuple, list)):
        return len(a) == len(b) and all(_close(x, y) for x, y in zip(a, b))
    return True


def _folded(model: nn.Module, pairs: list[tuple[str, str]]) -> nn.Module:
    out = copy.deepcopy(model)
    for layer, norm in pairs:
        _fold(out.get_submodule(layer), out.get_submodule(norm))
        _replace(out, norm)
    return out


def fold_batchnorms(model: nn.Module, run: Any) -> tuple[nn.Module, list[str]]:
    """(the model with every foldable BatchNorm folded, the names of the folded norms). ``run(model)`` is
    one example forward; a model in eval mode only (running statistics)."""
    pairs = _pairs(model, run)
    if not pairs:
        return model, []
    with torch.no_grad():
        expected = run(model)
        folded = _folded(model, pairs)
        if _close(run(folded), expected):
            return folded, [n for _, n in pairs]
        kept = []
        for pair in pairs:  # a pair whose layer output is read elsewhere too: leave that norm as it is
            trial = _folded(model, [*kept, pair])
            if _close(run(trial), expected):
                kept.append(pair)
    return (_folded(model, kept), [n for _, n in kept]) if kept else (model, [])
