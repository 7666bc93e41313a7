"""The soft expected energy E[x] = sum_u P(u runs | x) * E_u against the hard count: equal for a dense model,
and equal to the hard count of the path taken when every probability is exactly 0 or 1.

The module that dispatches (an EarlyExitModel's own comparisons, a MoEMLP's gathering and adding) is
costed on its full path by unit_costs, so its own bookkeeping is left out of the path comparisons."""

from __future__ import annotations

import math
from collections import OrderedDict

import pytest
import torch
from torch import nn

from wattless.energy import builtin_targets, count, estimate
from wattless.energy.soft import ExpectedEnergy, full_path, unit_costs
from wattless.techniques.early_exit import EarlyExitModel
from wattless.techniques.moe import MoEConfig, moefy

TARGETS = sorted(builtin_targets())


def _hard_j(model: nn.Module, x: torch.Tensor, target, skip: str | None = None) -> float:
    """Joules of x's hard path, summed over its units (all but ``skip``)."""
    return sum(u.energy_j for u in estimate(count(model, x), target).units if u.name != skip)


def _soft_j(model: nn.Module, costs: dict, skip: str | None = None) -> float:
    """The soft E[x] of one input from the probabilities the modules hold now (no forward: density 1)."""
    return float(ExpectedEnergy(model, {n: c for n, c in costs.items() if n != skip})(1)[0])


@pytest.mark.parametrize("target", TARGETS)
def test_a_dense_model_soft_energy_equals_the_hard_estimate(target):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 16), nn.Tanh(), nn.Linear(16, 4)).eval()
    x = torch.randn(1, 8)  # no zero activation anywhere: density 1 is the truth
    t = builtin_targets()[target]
    soft = _soft_j(model, unit_costs(model, x, t))
    assert soft == pytest.approx(estimate(count(model, x), t).energy_j, rel=1e-6)


def _exit_model(x: torch.Tensor) -> EarlyExitModel:
    torch.manual_seed(0)
    chain = nn.Sequential(OrderedDict(fc1=nn.Linear(8, 16), a1=nn.Tanh(), fc2=nn.Linear(16, 16), a2=nn.Tanh(),
                                      fc3=nn.Linear(16, 4)))
    return EarlyExitModel.from_chain(chain, ["a1"], x, temperature=1e-3).eval()


@pytest.mark.parametrize("threshold", [0.0, math.inf], ids=["every-input-exits", "no-input-exits"])
@pytest.mark.parametrize("target", ["mobile-npu", "server-cpu"])
def test_early_exit_probabilities_of_0_and_1_price_the_path_taken(threshold, target):
    x = torch.randn(1, 8)
    model, t = _exit_model(x), builtin_targets()[target]
    model.thresholds.fill_(threshold)
    costs = unit_costs(model, x, t)
    model.set_soft_probs(torch.full((1, 1), 0.9))  # sigmoid((0.9 - threshold) / 1e-3): exactly 1 or 0
    probs = [m.wattless_soft_prob for m in (model.blocks.fc2, model.tail) if m is not None]
    assert all(float(p) in (0.0, 1.0) for p in probs if p is not None)
    assert _soft_j(model, costs, skip="(root)") == pytest.approx(_hard_j(model, x, t, skip="(root)"), rel=1e-6)


@pytest.mark.parametrize("target", ["mobile-npu", "server-cpu"])
def test_moe_probabilities_of_0_and_1_price_the_expert_taken(target):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 16), nn.Tanh(), nn.Linear(16, 8))
    moefy(model, MoEConfig(experts=2, top_k=1))
    model.eval()
    x, t = torch.randn(1, 8), builtin_targets()[target]  # one input, one token: its expert's share is 0 or 1
    costs = unit_costs(model, x, t)
    moe = model[0]
    with torch.no_grad():
        chosen = int(moe.router(x).argmax(-1))
    for e, expert in enumerate(moe.experts):
        expert.wattless_soft_prob = torch.tensor([1.0 if e == chosen else 0.0])
    assert _soft_j(model, costs, skip="0") == pytest.approx(_hard_j(model, x, t, skip="0"), rel=1e-6)
    assert not any(f"experts.{1 - chosen}" in u.name for u in estimate(count(model, x), t).units)


def test_full_path_is_the_energy_cores_own_and_restores_the_flags():
    x = torch.randn(1, 8)
    model = _exit_model(x)
    with full_path(model):
        assert all(m.wattless_full_path for m in model.modules())
    assert not any(getattr(m, "wattless_full_path", False) for m in model.modules())


def test_the_soft_energy_module_imports_no_technique():
    import ast
    import inspect

    import wattless.energy.soft as soft

    tree = ast.parse(inspect.getsource(soft))
    imported = [n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)]
    imported += [a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names]
    assert not [m for m in imported if m and m.startswith("wattless.techniques")]
