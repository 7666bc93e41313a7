"""Measurement through a meter, honest absence of a counter, and calibration that recovers known truth."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from wattless.energy import (CalibrationPoint, calibrate, count, estimate, load_target, measure, profile,
                             set_precision, write_target)
from wattless.energy.measure import default_meter
from wattless.errors import CalibrationError, MeasurementUnavailable
from wattless.testing import FakeMeter, ReplayMeter

TOY = load_target(Path(__file__).parents[1] / "data" / "toy-target.toml")


def _has_counter() -> bool:
    try:
        default_meter()
    except MeasurementUnavailable:
        return False
    return True


def test_measure_repeats_until_the_window_is_long_and_reports_spread():
    model = nn.Linear(32, 32)
    meter = FakeMeter(power_w=100.0)
    m = measure(model, torch.randn(4, 32), meter=meter, min_window_s=0.05, windows=3)
    assert m.kind == "measured" and m.label == "measured on gpu:0"
    assert m.window_s >= 0.05 and m.inferences_per_window >= 4
    assert m.energy_j == pytest.approx(100.0 * m.latency_s, rel=0.3)
    assert m.energy_j_min <= m.energy_j <= m.energy_j_max


def test_spread_comes_from_the_windows():
    m = measure(nn.Linear(4, 4), torch.randn(1, 4), meter=ReplayMeter([1.0, 1.2, 0.8]), min_window_s=1e-4,
                windows=3)
    per = m.per_window_energy_j
    assert len(per) == 3 and m.energy_j == sorted(per)[1]
    assert m.spread == pytest.approx((max(per) - min(per)) / m.energy_j) and m.spread > 0


@pytest.mark.skipif(_has_counter(), reason="this machine has an energy counter")
def test_without_a_counter_no_figure_is_invented():
    with pytest.raises(MeasurementUnavailable, match="no energy counter"):
        default_meter()
    result = profile(nn.Linear(4, 4), torch.randn(1, 4), [TOY], measure_energy=True)
    assert result.measurement is None and "no energy counter" in result.measurement_note
    assert result.to_json()["measured"] is None


@pytest.mark.gpu
@pytest.mark.skipif(not _has_counter(), reason="needs an energy counter (NVML, RAPL, Apple, Jetson)")
def test_real_counter_measures_positive_joules():
    m = measure(nn.Linear(256, 256), torch.randn(8, 256), min_window_s=0.5, windows=3)
    assert m.energy_j > 0


def _zoo():
    """Models that differ in precision, size and compute- vs memory-bound, so the fit is determined."""
    torch.manual_seed(0)
    zoo = []
    for prec in ("fp32", "fp16", "int8"):
        for width, tokens in [(64, 32), (1024, 1), (1024, 256), (512, 8), (2048, 4)]:
            model = nn.Sequential(nn.Linear(width, width), nn.ReLU(), nn.Linear(width, width // 2))
            set_precision(model, prec, prec)
            zoo.append((f"mlp{width}x{tokens}-{prec}", count(model, torch.randn(1, tokens, width))))
    return zoo


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_calibration_recovers_known_coefficients_from_noisy_measurements(tmp_path, seed):
    truth = TOY.to_toml_dict()
    truth["mac_pj"].update(fp32=5.2, fp16=1.9, int8=0.6)
    truth["memory"]["dram_pj_per_byte"] = 140.0
    truth["memory"]["sram_pj_per_byte"] = 3.1
    truth_target = type(TOY).model_validate(truth)
    rng = np.random.default_rng(seed)
    points = [CalibrationPoint(name, c, estimate(c, truth_target).energy_j * (1 + rng.normal(0, 0.01)))
              for name, c in _zoo()]
    fit = ["mac_pj.fp32", "mac_pj.fp16", "mac_pj.int8", "memory.sram_pj_per_byte", "memory.dram_pj_per_byte"]
    result = calibrate(points, TOY, fit=fit)
    for path in fit:
        assert result.fitted[path] == pytest.approx(truth_target.coefficients[path], rel=0.1), path
        assert abs(result.fitted[path] - truth_target.coefficients[path]) < 4 * result.stderr[path] + 1e-9, path
    assert result.rms_rel_error < 0.03 < result.base_rms_rel_error
    out = write_target(result.target, tmp_path / "fitted.toml")
    again = load_target(out)
    assert again.coefficients == pytest.approx(result.target.coefficients)
    assert any(s.key == "calibration" and "mac_pj.int8" in s.covers for s in again.sources)


def test_calibration_refuses_what_the_measurements_cannot_separate():
    zoo = _zoo()[:2]
    points = [CalibrationPoint(n, c, 1e-6) for n, c in zoo]
    with pytest.raises(CalibrationError, match="cannot separate"):
        calibrate(points, TOY)
    with pytest.raises(CalibrationError, match="at least 2"):
        calibrate(points[:1], TOY)
