"""The analog technique: the PCM model behaves as published, the chip pipeline is exact without noise, and
hardware-aware training runs inside `wattless optimize` with other techniques and the energy objective."""

from __future__ import annotations

import copy
import math

import pytest
import torch
from torch import nn

from tests.tiny_workload import tiny
from wattless.energy.target import builtin_targets
from wattless.errors import RecipeError
from wattless.optimize import apply_context, optimize
from wattless.recipe import parse_recipe
from wattless.techniques import pcm
from wattless.techniques.analog import AnalogConfig, analog_layers, clear_, program_
from wattless.techniques.base import ApplyContext, apply_

DEVICE = builtin_targets()["analog-pcm"].analog


def _mlp() -> tuple[nn.Module, torch.Tensor]:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(300, 40), nn.ReLU(), nn.Linear(40, 5)), torch.randn(64, 300)


def _analog(model: nn.Module, x: torch.Tensor, **kw) -> nn.Module:
    chip = copy.deepcopy(model)
    apply_(chip, AnalogConfig(**kw), ApplyContext(example_input=x))
    return chip.eval()


def test_drift_lowers_the_mean_conductance_as_the_power_law_predicts():
    gen = torch.Generator().manual_seed(0)
    g_target = torch.full((20000,), 0.6 * DEVICE.g_max_us)
    chip = pcm.program(g_target, DEVICE, pcm.NoiseScales(prog=0.0), gen)
    no_read = pcm.NoiseScales(prog=0.0, read=0.0)
    means = []
    for t_s in (1.0, 3600.0, 86400.0, 31536000.0):
        g = pcm.drift(chip, t_s, DEVICE, no_read, gen)
        ratio = (t_s + DEVICE.drift_t0_s) / DEVICE.drift_t0_s
        assert torch.allclose(g, g_target * ratio ** -chip.nu, rtol=1e-5)  # G(t) = G(t0) (t / t0)^-nu per device
        # the population's log-mean falls by mean(nu) ln(t / t0); mean(nu) at g = 0.6 from the model's fit
        mu = min(max(DEVICE.nu_mean_log_slope * math.log(0.6) + DEVICE.nu_mean_offset, DEVICE.nu_mean_min),
                 DEVICE.nu_mean_max)
        assert float(torch.log(g / g_target).mean()) == pytest.approx(-mu * math.log(ratio), rel=0.05)
        means.append(float(g.mean()))
    assert means == sorted(means, reverse=True) and means[-1] < 0.6 * means[0]


def test_compensation_restores_the_mean_output():
    model, x = _mlp()
    chip = _analog(model, x, ideal_io=True, out_noise_scale=0.0)
    with torch.no_grad():
        reference = model(x)[:, :].abs().mean()
        outs = {}
        for compensate in (False, True):
            program_(chip, 0, prog=0.0, read=0.0, compensate=compensate).at(31536000.0)
            outs[compensate] = float(chip(x).abs().mean())
    assert outs[False] < 0.7 * float(reference)  # a year of drift: about 40 % of the conductance is gone
    assert outs[True] == pytest.approx(float(reference), rel=0.05)


def test_zero_noise_gives_the_digital_answer_exactly():
    model, x = _mlp()
    chip = _analog(model, x, ideal_io=True, out_noise_scale=0.0)
    with torch.no_grad():
        program_(chip, 3, prog=0.0, read=0.0, drift=0.0).at(86400.0)
        assert torch.equal(chip(x), model(x))
        program_(chip, 3).at(86400.0)  # the published model: no longer the digital answer
        assert not torch.allclose(chip(x), model(x), atol=1e-3)


def test_converters_round_at_the_targets_bits_and_tiles_follow_the_array():
    model, x = _mlp()
    chip = _analog(model, x)
    first = analog_layers(chip)["0"]
    assert len(first._analog.tiles) == math.ceil(300 / DEVICE.array_rows)
    assert first.wattless_act_precision == "int8"
    with torch.no_grad():
        y, ref = chip[0](x), model[0](x)
    assert not torch.equal(y, ref)  # 8-bit DAC and ADC
    assert float((y - ref).abs().max()) < 0.1 * float(ref.abs().max())


def test_read_noise_differs_per_inference_and_seeds_repeat():
    model, x = _mlp()
    chip = _analog(model, x)
    with torch.no_grad():
        program_(chip, 1).at(3600.0)
        a, b = chip(x), chip(x)
        program_(chip, 1).at(3600.0)
        again = chip(x)
        clear_(chip)
        clean = chip(x)
    assert not torch.equal(a, b) and torch.equal(a, again)
    assert torch.equal(clean, chip(x))  # back to the noise-free chip: deterministic


def test_hardware_aware_training_injects_noise_only_when_asked():
    model, x = _mlp()
    for hwa in (True, False):
        chip = copy.deepcopy(model)
        apply_(chip, AnalogConfig(hwa=hwa), ApplyContext(example_input=x))
        chip.train()
        same = torch.equal(chip(x), chip(x))
        assert same is (not hwa)


def test_analog_recipe_with_pruning_and_the_energy_objective(tmp_path, fresh_cache_one_thread):
    recipe = parse_recipe({
        "name": "tiny-analog", "target": "analog-pcm", "train": {"epochs": 2},
        "objective": {"energy_weight": 0.1},
        "prune": {"pattern": "unstructured", "sparsity": 0.5},
        "analog": {"seeds": 2, "times_s": [1.0, 86400.0], "compare_without_hwa": True},
    })
    m = optimize(tiny(), recipe, tmp_path / "run", progress=False, baselines=False, energy_inputs=4)
    a = m["analog"]
    assert a["seeds"] == 2 and a["hwa"] is True
    assert set(a["accuracy"]) == {"1", "86400"} and set(a["accuracy_without_hwa"]) == {"1", "86400"}
    assert set(a["accuracy"]["86400"]) >= {"mean", "std"}
    assert m["objective"]["energy_lambda"] is not None and a["energy_j"]["analog-pcm"] > 0


def test_bad_analog_settings_name_the_key():
    with pytest.raises(RecipeError, match="analog"):
        parse_recipe({"analog": {"seeds": 0}})
    with pytest.raises(RecipeError, match="not both"):
        parse_recipe({"analog": {}, "spiking": {}})
    wl = tiny()
    model = wl.build_model()
    from wattless.recipe import check_recipe

    with pytest.raises(RecipeError, match=r"key `analog`.*no \[analog\] section"):
        check_recipe(parse_recipe({"analog": {"target": "mobile-npu"}}), model, apply_context(wl))
