"""One-shot sparsity of a language model's Linear layers on calibration text, no training: Wanda (Sun et al.,
2024: a weight's importance is |w| times the norm of its input over the calibration tokens) or plain
magnitude, in the 2:4 pattern (two of every four consecutive inputs of each output kept: what sparse
tensor cores run) or unstructured (each output row keeps its most important 1 - sparsity).

    [sparsify]
    pattern = "2:4"            # or "unstructured" (with sparsity = 0.5 ...)
    method = "wanda"           # or "magnitude"
    skip = ["lm_head"]         # globs of Linear layers left dense (default: the head)

The weights are zeroed in place (``wattless_sparse_mask`` keeps the mask), so the energy core sees their
density and pattern; ``[weight_only]`` after it keeps those zeros exactly (it needs integer zero points,
on whose grid 0 lies).
"""

from __future__ import annotations

import fnmatch
from collections.abc import Iterator
from typing import Any, Literal

import torch
from pydantic import Field, model_validator
from torch import nn

from wattless.techniques.base import ApplyContext, Technique, TechniqueConfig, register
from wattless.techniques.weight_only import calibration_batches, observe_inputs, untie

__all__ = ["SparsifyConfig", "Sparsified", "importance", "sparsity_mask"]


class SparsifyConfig(TechniqueConfig):
    kind = "sparsify"
    pattern: Literal["2:4", "unstructured"] = "2:4"
    sparsity: float = Field(0.5, gt=0, lt=1, strict=True, description="unstructured: share of weights zeroed")
    method: Literal["wanda", "magnitude"] = "wanda"
    calibration_windows: int = Field(16, ge=1, strict=True)
    skip: tuple[str, ...] = ("lm_head",)

    @model_validator(mode="after")
    def _two_four_is_half(self) -> "SparsifyConfig":
        if self.pattern == "2:4" and self.sparsity != 0.5:
            raise ValueError("the 2:4 pattern zeroes exactly half: leave sparsity out or use pattern = \"unstructured\"")
        return self


def importance(w: torch.Tensor, input_norms: torch.Tensor | None) -> torch.Tensor:
    """|w| (out, in), times each input's norm over the calibration tokens (Wanda) when given."""
    return w.abs() if input_norms is None else w.abs() * input_norms[None, :]


def sparsity_mask(score: torch.Tensor, pattern: str, sparsity: float) -> torch.Tensor:
    """The kept weights (out, in) bool: 2 of each 4 consecutive inputs per row, or a row's top 1 - sparsity."""
    out, k = score.shape
    if pattern == "2:4":
        groups = score.view(out, k // 4, 4)
        keep = torch.zeros_like(groups, dtype=torch.bool)
        keep.scatter_(2, groups.topk(2, dim=2).indices, True)
        return keep.view(out, k)
    n_keep = k - int(round(k * sparsity))
    keep = torch.zeros_like(score, dtype=torch.bool)
    keep.scatter_(1, score.topk(n_keep, dim=1).indices, True)
    return keep


def _targets(model: nn.Module, config: SparsifyConfig) -> dict[str, nn.Linear]:
    layers = {n: m for n, m in model.named_modules() if type(m) is nn.Linear}
    chosen = {n: m for n, m in layers.items() if not any(fnmatch.fnmatchcase(n, g) for g in config.skip)}
    for name, m in chosen.items():
        if config.pattern == "2:4" and m.in_features % 4:
            raise ValueError(f"layer {name} has {m.in_features} inputs, not a multiple of 4: 2:4 cannot apply; skip it")
    if not chosen:
        raise ValueError("no Linear layer is left to sparsify (check skip)")
    return chosen


def _input_norms(model: nn.Module, layers: dict[str, nn.Linear], batches: Iterator[Any]) -> dict[str, torch.Tensor]:
    sums = {n: torch.zeros(m.in_features) for n, m in layers.items()}
    observe_inputs(model, layers, batches, lambda name, x: sums[name].add_(x.pow(2).sum(0)))
    return {n: s.sqrt() for n, s in sums.items()}


class Sparsified(Technique):
    name = "sparsify"

    def __init__(self, config: SparsifyConfig, density: dict[str, float]) -> None:
        self.config, self.density = config, density

    def report(self, model: nn.Module) -> dict[str, Any]:
        return {"pattern": self.config.pattern, "method": self.config.method, "layers": len(self.density),
                "mean_weight_density": sum(self.density.values()) / len(self.density)}


@register(SparsifyConfig)
def _prepare(model: nn.Module, config: SparsifyConfig, context: ApplyContext) -> Sparsified:
    layers = _targets(model, config)
    norms = _input_norms(model, layers, calibration_batches(context, config.calibration_windows)) \
        if config.method == "wanda" else {}
    untie(model, layers)  # a head sharing the embedding's weights must not zero the embedding
    density = {}
    for name, m in layers.items():
        keep = sparsity_mask(importance(m.weight.detach().float(), norms.get(name)), config.pattern, config.sparsity)
        with torch.no_grad():
            m.weight.mul_(keep)
        m.wattless_sparse_mask = keep
        density[name] = float(keep.float().mean())
    return Sparsified(config, density)


@register(SparsifyConfig, step="convert")
def _convert(model: nn.Module, config: SparsifyConfig | None) -> None:
    """The zeros are in the weights already."""
