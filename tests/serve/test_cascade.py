"""Calibration (the early exits' thresholds and margin), per-path prices from the energy core, predict()
and eval against each tier alone, on the tiny two-tier cascade."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from wattless.errors import CascadeError
from wattless.serve import calibration_path, evaluate, load_cascade
from wattless.serve.calibrate import simulate


def test_calibration_file_beside_the_cascade(calibrated):
    record = json.loads(calibration_path(calibrated).read_text())
    lean, big = record["tiers"]
    assert record["split"] == "val" and record["inputs"] == 256 and record["target_accuracy_drop"] == 0.02
    assert big["threshold"] is None and (lean["threshold"] is None or 0 < lean["threshold"] <= 1)
    for tier, target in ((lean, "mobile-npu"), (big, "datacenter-gpu")):
        prices = tier["prices"]
        assert prices["kind"] == "estimated" and prices["target"] == target
        assert sum(p["inputs"] for p in prices["paths"].values()) == 256
        assert all(p["energy_j"] > 0 for p in prices["paths"].values())
    # a 4-bit student on a phone NPU against fp32 on a datacenter GPU
    assert lean["prices"]["fallback_j"] < big["prices"]["fallback_j"] / 10
    predicted = record["predicted"]["cascade"]
    assert predicted["energy_kind"] == "estimated" and 0 <= predicted["escalation_rate"] <= 1
    assert predicted["accuracy"] >= record["predicted"]["tiers"][1]["accuracy"] - 0.02  # the margin holds on val


def test_predict_escalates_below_the_threshold_and_sums_the_tiers(calibrated):
    cascade = load_cascade(calibrated)
    from tests.tiny_workload import tiny

    x = tiny().test.inputs[:64].numpy()
    predictions = cascade.predict(cascade.check(x))
    lean, big = cascade.tiers
    lean_logits = lean.model.run(x).outputs
    for p, logits in zip(predictions, lean_logits):
        prob = np.exp(logits - logits.max())
        confident = prob.max() / prob.sum() >= lean.threshold
        assert p.escalated == (not confident) and p.tier == (0 if confident else 1)
        assert len(p.energy_by_tier_j) == p.tier + 1 and p.targets[: p.tier + 1] == ("mobile-npu", "datacenter-gpu")[: p.tier + 1]
        assert p.energy_j == pytest.approx(sum(p.energy_by_tier_j))
        assert p.to_json()["energy_kind"] == "estimated"
        if confident:
            assert p.label == int(logits.argmax())


def test_eval_against_each_tier_alone(calibrated):
    result = evaluate(calibrated)
    lean, big = result["tiers"]
    c = result["cascade"]
    assert result["split"] == "test" and result["inputs"] == 256 and result["reference"] == "big"
    assert lean["energy_j_per_request"] <= c["energy_j_per_request"] <= lean["energy_j_per_request"] + big["energy_j_per_request"]
    expected = lean["energy_j_per_request"] + c["escalation_rate"] * big["energy_j_per_request"]
    assert c["energy_j_per_request"] == pytest.approx(expected, rel=1e-6)
    assert result["energy_ratio"] == pytest.approx(big["energy_j_per_request"] / c["energy_j_per_request"])


def test_simulate_counts_tier_zero_always():
    conf = np.array([[0.9, 0.2, 0.6], [1.0, 1.0, 1.0]])
    correct = np.array([[True, False, False], [True, True, True]])
    energy = np.array([[1.0, 1.0, 1.0], [10.0, 10.0, 10.0]])
    got = simulate(conf, correct, energy, [0.5])
    assert got["escalation_rate"] == pytest.approx(1 / 3) and got["accuracy"] == pytest.approx(2 / 3)
    assert got["energy_j_per_request"] == pytest.approx((1 + 11 + 1) / 3)
    assert simulate(conf, correct, energy, [math.inf])["energy_j_per_request"] == pytest.approx(11)


def test_uncalibrated_and_stale_calibrations_are_refused(tiny_cascade_dir, calibrated, tmp_path):
    import shutil

    folder = tmp_path / "copy"
    shutil.copytree(tiny_cascade_dir, folder, ignore=shutil.ignore_patterns("cache"))
    (folder / "cascade.calibration.json").unlink()
    with pytest.raises(CascadeError, match="not calibrated.*wattless cascade calibrate"):
        load_cascade(folder / "cascade.toml")
    shutil.copy(calibration_path(calibrated), folder / "cascade.calibration.json")
    load_cascade(folder / "cascade.toml")
    shutil.copy(folder / "lean.onnx", folder / "big.onnx")  # a tier's export replaced
    with pytest.raises(CascadeError, match="calibrated for another tier 1"):
        load_cascade(folder / "cascade.toml")
