"""The differentiable expected energy a training objective uses: E[x] = sum_u P(u runs | x) * E_u.

``unit_costs`` counts the model once on its full path (every expert, every exit) and prices each unit
twice on the target, at activation density 1 and 0, so a unit's energy is ``base_j + act_j * density``:
exact for MACs on targets that skip zero activations, zero ``act_j`` elsewhere.

``ExpectedEnergy`` then combines, per input of a training batch, the soft probabilities that dynamic
modules publish (``wattless_soft_prob``, a (B,) tensor; it applies to the module and everything under it)
with soft activation densities measured by forward hooks on the units' inputs.

``full_path`` asks every dynamic module to compute every unit for every input (it sets
``wattless_full_path`` on each module; early exits and experts honour it), so each unit is costed at full
load. The energy core owns these attribute names; techniques read and write them, never the reverse.
"""

from __future__ import annotations

import dataclasses
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from wattless.energy.count import OpCount, UnitCount, count
from wattless.energy.estimate import price, sample_features
from wattless.energy.target import Target

__all__ = ["UnitCost", "unit_costs", "ExpectedEnergy", "full_path"]


@dataclass(frozen=True)
class UnitCost:
    """Joules per inference of one unit at full load: base_j + act_j * (input activation density)."""

    base_j: float
    act_j: float


@contextmanager
def full_path(model: nn.Module):
    """Every dynamic module computes every unit for every input inside this block (for costing)."""
    previous = {m: getattr(m, "wattless_full_path", False) for m in model.modules()}
    for m in model.modules():
        m.wattless_full_path = True
    try:
        yield model
    finally:
        for m, value in previous.items():
            m.wattless_full_path = value


def _at_density(unit: UnitCount, density: float) -> UnitCount:
    def scaled(op: OpCount) -> OpCount:
        if not op.macs:
            return op
        return dataclasses.replace(
            op, macs_nz_act=op.macs_kept * density, macs_nz_both=op.macs_nz_weight * density,
            events=op.macs_nz_weight * density,
        )

    return dataclasses.replace(unit, ops=[scaled(o) for o in unit.ops])


def _unit_joules(sample: dict[str, UnitCount], target: Target) -> dict[str, float]:
    return {name: price(feats, target) for name, (feats, _lat) in sample_features(sample, target).items()}


def unit_costs(model: nn.Module, example_input: Any, target: Target) -> dict[str, UnitCost]:
    """Per-unit cost on ``target`` of one input on the model's full path (all experts and exits run)."""
    with full_path(model):
        counts = count(model, example_input, max_inputs=1)
    sample = counts.samples[0]
    full = _unit_joules({n: _at_density(u, 1.0) for n, u in sample.items()}, target)
    none = _unit_joules({n: _at_density(u, 0.0) for n, u in sample.items()}, target)
    return {name: UnitCost(base_j=none[name], act_j=max(full[name] - none[name], 0.0)) for name in sample}


def _soft_density(x: torch.Tensor) -> torch.Tensor:
    """(B, ...) -> (B,): a differentiable count of non-zero entries, tanh(|x| / (0.1 * mean|x|))."""
    scale = x.detach().abs().mean().clamp_min(1e-8) * 0.1
    return torch.tanh(x.abs() / scale).flatten(1).mean(1)


class ExpectedEnergy:
    """Expected joules per input of the last forward, differentiable; attach once, call after each forward."""

    def __init__(self, model: nn.Module, costs: dict[str, UnitCost]) -> None:
        self.model, self.costs = model, costs
        modules = dict(model.named_modules())
        self._densities: dict[str, torch.Tensor] = {}
        self._handles = [
            modules[name].register_forward_pre_hook(self._hook(name))
            for name, cost in costs.items() if cost.act_j > 0 and name in modules
        ]
        # prefixes of each unit: the modules whose soft probability applies to it
        self._ancestors = {name: self._prefixes(name) for name in costs}

    @staticmethod
    def _prefixes(name: str) -> list[str]:
        parts = [] if name == "(root)" else name.split(".")
        return [".".join(parts[:i]) for i in range(1, len(parts) + 1)]

    def _hook(self, name: str):
        def capture(module: nn.Module, args: tuple) -> None:
            if args and isinstance(args[0], torch.Tensor) and args[0].dim() >= 2 and torch.is_grad_enabled():
                self._densities[name] = _soft_density(args[0])

        return capture

    def update_costs(self, costs: dict[str, UnitCost]) -> None:
        for h in self._handles:
            h.remove()
        self.__init__(self.model, costs)

    def __call__(self, batch_size: int) -> torch.Tensor:
        """(B,) expected joules per input for the forward just run."""
        probs = {}
        for name, module in self.model.named_modules():
            p = getattr(module, "wattless_soft_prob", None)
            if isinstance(p, torch.Tensor):
                probs[name] = p
                module.wattless_soft_prob = None  # read once: a stale probability must not leak into eval
        total = torch.zeros(batch_size)
        for name, cost in self.costs.items():
            energy = torch.full((batch_size,), cost.base_j)
            density = self._densities.get(name)
            if density is not None and density.shape[0] == batch_size:
                energy = energy + cost.act_j * density
            elif cost.act_j:
                energy = energy + cost.act_j
            for prefix in self._ancestors[name]:
                p = probs.get(prefix)
                if p is not None and p.shape[0] == batch_size:
                    energy = energy * p
            total = total + energy
        self._densities.clear()
        return total

    def close(self) -> None:
        for h in self._handles:
            h.remove()
        self._handles = []
