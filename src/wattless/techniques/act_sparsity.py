"""Activation sparsity: ReLU-fication (smooth activations become ReLU, so zeros are exact) and an L1 penalty
on the activations, so targets that skip zero activations (event-driven, zero-skipping NPUs) do less work."""

from __future__ import annotations

from fnmatch import fnmatch
from typing import Any, ClassVar

import torch
from pydantic import Field
from torch import nn

from wattless.energy.count import uncounted
from wattless.techniques.base import ApplyContext, Technique, TechniqueConfig, register

__all__ = ["ActSparsityConfig", "ActSparsity", "relufy_"]

_SMOOTH = ("GELU", "SiLU", "Swish", "Mish", "Hardswish", "ELU", "Softplus", "NewGELU", "QuickGELU", "FastGELU")


class ActSparsityConfig(TechniqueConfig):
    kind: ClassVar[str] = "act_sparsity"
    l1: float = Field(1e-4, ge=0, description="weight of the mean |activation| penalty")
    relufy: bool = True
    layers: list[str] = Field(default_factory=lambda: ["*"], description="globs of activation module names")


def _is_smooth(module: nn.Module) -> bool:
    name = type(module).__name__
    return any(key.lower() in name.lower() for key in _SMOOTH) and not list(module.children())


def relufy_(model: nn.Module, layers: list[str] | None = None) -> list[str]:
    """Replace smooth activation modules by ReLU in place; returns the names replaced."""
    replaced = []
    for name, module in list(model.named_modules()):
        for child_name, child in list(module.named_children()):
            full = f"{name}.{child_name}" if name else child_name
            if _is_smooth(child) and any(fnmatch(full, g) for g in layers or ["*"]):
                setattr(module, child_name, nn.ReLU())
                replaced.append(full)
    return replaced


class ActSparsity(Technique):
    name = "act_sparsity"

    def __init__(self, model: nn.Module, config: ActSparsityConfig, replaced: list[str]) -> None:
        self.config, self.replaced = config, replaced
        self._l1: list[torch.Tensor] = []
        self._density: dict[str, list[float]] = {}
        self.targets = [
            (n, m) for n, m in model.named_modules()
            if isinstance(m, nn.ReLU) and any(fnmatch(n, g) for g in config.layers)
        ]
        for name, module in self.targets:
            module.register_forward_hook(self._hook(name))

    def _hook(self, name: str):
        def capture(module: nn.Module, args: tuple, out: torch.Tensor) -> None:
            if not isinstance(out, torch.Tensor):
                return
            if torch.is_grad_enabled() and self.config.l1:
                self._l1.append(out.abs().mean())
            elif not torch.is_grad_enabled():
                with uncounted():
                    self._density.setdefault(name, []).append(float((out != 0).float().mean()))

        return capture

    def loss(self, model: nn.Module, inputs: Any, outputs: Any) -> torch.Tensor | None:
        if not self._l1:
            return None
        penalty = self.config.l1 * torch.stack(self._l1).sum()
        self._l1 = []
        return penalty

    def report(self, model: nn.Module) -> dict[str, Any]:
        density = {n: sum(v) / len(v) for n, v in self._density.items() if v}
        mean = sum(density.values()) / len(density) if density else None
        return {"relufied": self.replaced, "activation_density": density, "mean_activation_density": mean}


@register(ActSparsityConfig, step="convert")
def _convert(model: nn.Module, config: ActSparsityConfig | None) -> None:
    """Nothing to do: the ReLUs are the deployed form, and the zeros they make are seen in the tensors."""


@register(ActSparsityConfig)
def _apply(model: nn.Module, config: ActSparsityConfig, context: ApplyContext) -> ActSparsity:
    replaced = relufy_(model, config.layers) if config.relufy else []
    return ActSparsity(model, config, replaced)
