"""The spiking conversion: enough steps give the ANN's outputs, and the events the energy core prices are
the spikes the simulation produced times their fan-out."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from tests.tiny_workload import tiny
from wattless.energy import count_each, estimate, resolve_target
from wattless.errors import RecipeError
from wattless.optimize import apply_context, optimize
from wattless.recipe import check_recipe, parse_recipe
from wattless.techniques.base import ApplyContext, apply_
from wattless.techniques.spiking import SpikingConfig, record_spikes, set_steps, spike_counts


def _converted(model: nn.Module, x: torch.Tensor, **kw) -> nn.Module:
    snn = copy.deepcopy(model)
    context = ApplyContext(example_input=x, train_batches=lambda: iter([(x, None)]))
    apply_(snn, SpikingConfig(**kw), context).finish(snn, context)
    return snn.eval()


def _mlp() -> tuple[nn.Module, torch.Tensor]:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(8, 32), nn.ReLU(), nn.Linear(32, 16), nn.ReLU(), nn.Linear(16, 3)), torch.randn(64, 8)


def _conv() -> tuple[nn.Module, torch.Tensor]:
    torch.manual_seed(1)
    return nn.Sequential(nn.Conv1d(1, 4, 5, padding=2), nn.ReLU(), nn.Conv1d(4, 6, 3, padding=1), nn.ReLU(),
                         nn.Flatten(), nn.Linear(6 * 12, 3)), torch.randn(16, 1, 12)


def test_enough_steps_match_the_anns_outputs():
    model, x = _mlp()
    snn = _converted(model, x, norm="max")
    with torch.no_grad():
        ann = model(x)
        errors = {}
        for steps in (16, 1024):
            set_steps(snn, steps)
            errors[steps] = float((snn(x) - ann).abs().max() / ann.abs().max())
    assert errors[1024] < 0.02 and errors[1024] < errors[16]
    set_steps(snn, 0)
    with torch.no_grad():
        assert torch.equal(snn(x), ann)  # an IF neuron is a ReLU while the model is an ANN


@pytest.mark.parametrize("build", [_mlp, _conv])
def test_the_events_priced_are_the_spikes_simulated_times_their_fan_out(build):
    model, x = build()
    snn = _converted(model, x)
    steps = 8
    set_steps(snn, steps)
    record_spikes(snn)
    counts = count_each(snn, [x[:1]])
    units = counts.samples[0]
    layers = [m for m in snn if isinstance(m, (nn.Linear, nn.Conv1d))]
    names = [str(i) for i, m in enumerate(snn) if isinstance(m, (nn.Linear, nn.Conv1d))]
    neurons = [m for m in snn if type(m).__name__ == "IFNeuron"]
    for neuron, layer, name in zip(neurons, layers[1:], names[1:]):
        spikes = neuron.recorded  # each step's spikes into the next layer
        assert len(spikes) == steps
        if isinstance(layer, nn.Conv1d):  # each spike reaches out_channels x the taps that land inside
            ones = torch.ones_like(layer.weight)
            expected = sum(float(F.conv1d(s, ones, padding=layer.padding).sum()) for s in spikes)
        else:
            expected = sum(float(s.flatten(1).count_nonzero()) * layer.out_features for s in spikes)
        counted = sum(o.events for o in units[name].ops)
        assert counted == pytest.approx(expected, rel=1e-6) and counted > 0
        updates = sum(o.outputs for o in units[name].ops if o.macs)
        with torch.no_grad():
            inp = spikes[0].flatten(1) if isinstance(layer, nn.Linear) else spikes[0]
            assert updates == layer(inp).numel() * steps  # neurons x T
    assert sum(spike_counts(snn).values()) == sum(float(s.count_nonzero()) for n in neurons for s in n.recorded)
    loihi = resolve_target("loihi")
    est = estimate(counts, loihi)
    events = sum(o.events for u in units.values() for o in u.ops)
    assert est.energy_j >= events * loihi.events.synop_pj * 1e-12  # every counted event is paid for


def test_spiking_recipe_writes_the_contract(tmp_path, fresh_cache_one_thread):
    recipe = parse_recipe({"name": "tiny-snn", "target": "loihi", "train": {"epochs": 0},
                           "spiking": {"steps": [4, 32]}})
    m = optimize(tiny(), recipe, tmp_path / "run", progress=False, baselines=False, energy_inputs=4)
    s = m["spiking"]
    assert set(s["steps"]) == {"4", "32"} and s["ann_accuracy"] == m["accuracy"]
    for row in s["steps"].values():
        assert set(row) >= {"accuracy", "synaptic_events", "energy_j"} and row["energy_j"]["loihi"] > 0
    assert s["steps"]["32"]["synaptic_events"] > s["steps"]["4"]["synaptic_events"]
    assert s["ann_energy_j"]["mobile-npu"] > 0 and s["best_steps"] in s["steps"]


def test_networks_without_an_if_equivalent_are_refused_by_name():
    wl = tiny()
    model = nn.Sequential(nn.Linear(16, 8), nn.ReLU(), nn.MaxPool1d(2), nn.Linear(4, 4))
    with pytest.raises(RecipeError, match=r"key `spiking`.*MaxPool1d"):
        check_recipe(parse_recipe({"spiking": {}}), model, apply_context(wl))
    with pytest.raises(RecipeError, match="steps"):
        parse_recipe({"spiking": {"steps": [0]}})
