"""Estimates: labelled, linear in the coefficients, and monotone (hypothesis properties)."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from torch import nn

from wattless.energy import builtin_targets, count, estimate, load_target, price, profile, set_precision
from wattless.energy.calibrate import counts_features
from wattless.testing import EarlyExitToy

TOY = load_target(Path(__file__).parents[1] / "data" / "toy-target.toml")
LADDER = ["fp32", "fp16", "int8", "int4", "int2"]
ALL_TARGETS = [TOY, *builtin_targets().values()]
PROPS = settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


def small_model(seed: int) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Conv1d(4, 16, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(16 * 12, 32), nn.ReLU(),
                         nn.Linear(32, 8))


X = torch.randn(2, 4, 12, generator=torch.Generator().manual_seed(1))


def energy(model, target, x=X) -> float:
    return estimate(count(model, x), target).energy_j


@pytest.mark.parametrize("target", ALL_TARGETS, ids=lambda t: t.name)
def test_estimate_is_the_dot_product_of_features_and_coefficients(target):
    counts = count(small_model(0), X)
    assert estimate(counts, target).energy_j == pytest.approx(price(counts_features(counts, target), target))


@given(seed=st.integers(0, 50), w=st.integers(0, 4), a=st.integers(0, 4), drop_w=st.booleans())
@PROPS
def test_energy_never_increases_when_precision_drops(seed, w, a, drop_w):
    model = small_model(seed)
    w2, a2 = (min(w + 1, 4), a) if drop_w else (w, min(a + 1, 4))
    for target in ALL_TARGETS:
        before = energy(set_precision(model, LADDER[w], LADDER[a]), target)
        after = energy(set_precision(model, LADDER[w2], LADDER[a2]), target)
        assert after <= before * (1 + 1e-9), (target.name, LADDER[w], LADDER[a], LADDER[w2], LADDER[a2])


@given(seed=st.integers(0, 50), frac=st.floats(0.05, 1.0), n24=st.booleans())
@PROPS
def test_zeroing_weights_never_raises_energy_on_targets_that_skip_zeros(seed, frac, n24):
    model = small_model(seed)
    dense = {t.name: energy(model, t) for t in ALL_TARGETS}
    with torch.no_grad():
        for layer in (model[0], model[3], model[5]):
            w = layer.weight.view(layer.weight.shape[0], -1)
            if n24 and w.shape[1] % 4 == 0:
                w.view(w.shape[0], -1, 4)[..., :2] = 0  # a 2:4 pattern
            else:
                w[torch.rand(w.shape, generator=torch.Generator().manual_seed(seed)) < frac] = 0
    for t in ALL_TARGETS:
        after = energy(model, t)
        if t.sparsity.weight_patterns or t.event_driven:
            assert after <= dense[t.name] * (1 + 1e-9), t.name
    assert energy(model, TOY) < dense[TOY.name]  # the toy target skips both patterns


class Mask(nn.Module):
    def __init__(self, mask: torch.Tensor) -> None:
        super().__init__()
        self.register_buffer("mask", mask)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.mask


@given(seed=st.integers(0, 50), frac=st.floats(0.05, 1.0), first=st.booleans())
@PROPS
def test_zeroing_activations_never_raises_energy_on_event_driven_targets(seed, frac, first):
    # Zeros are placed at one layer's input only: zeroing an early input can make later ReLU outputs
    # denser, which is a different model, not fewer events for the same one.
    torch.manual_seed(seed)
    keep = lambda shape: (torch.rand(shape, generator=torch.Generator().manual_seed(seed)) >= frac).float()  # noqa: E731
    x = torch.randn(2, 16, generator=torch.Generator().manual_seed(seed + 1))
    if first:  # zeros in the input of a single layer
        dense = sparse = nn.Linear(16, 8)
        x_sparse = x * keep(x.shape)
    else:  # zeros in the hidden activations feeding the last layer only
        dense = nn.Sequential(nn.Linear(16, 32), nn.ReLU(), Mask(torch.ones(32)), nn.Linear(32, 8))
        sparse = copy.deepcopy(dense)
        sparse[2].mask.copy_(keep(32))
        x_sparse = x
    event_targets = [t for t in ALL_TARGETS if t.event_driven or t.sparsity.skips_zero_activations]
    assert any(t.event_driven for t in event_targets)
    for t in event_targets:
        assert energy(sparse, t, x_sparse) <= energy(dense, t, x) * (1 + 1e-9), t.name


def test_estimate_is_labelled_and_distribution_follows_inputs():
    x = torch.randn(10, 32)
    x[:5, 0], x[5:, 0] = 1.0, -1.0
    result = profile(EarlyExitToy(), x, [TOY])
    est = result.estimates["toy"]
    assert est.kind == "estimated" and est.label == "estimated on toy"
    assert len(est.per_input_energy_j) == 10
    assert min(est.per_input_energy_j) < est.energy_j < max(est.per_input_energy_j)
    assert est.energy_j_p50 <= est.energy_j_p95
    payload = result.to_json()
    assert payload["energy_kind"] == "estimated" and payload["energy"]["toy"]["kind"] == "estimated"


def test_weights_that_do_not_fit_on_chip_are_read_from_dram():
    small = nn.Linear(64, 64)  # 16 KB fits the toy target's 1 MB
    big = nn.Linear(1024, 1024)  # 4 MB does not
    s = estimate(count(small, torch.randn(1, 64)), TOY)
    b = estimate(count(big, torch.randn(1, 1024)), TOY)
    assert s.memory_j == pytest.approx((64 * 64 + 64) * 4 * 2e-12 + (64 + 64) * 4 * 2e-12, rel=0.01)
    assert b.memory_j > 1024 * 1024 * 4 * 50e-12  # mostly at the DRAM price
