"""The command line: the JSON contract, tables, and exit code 2 with a clear message on bad input."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from wattless.cli import main

TOY = str(Path(__file__).parent / "data" / "toy-target.toml")


def run(capsys, monkeypatch, *args: str) -> tuple[int, str, str]:
    monkeypatch.setattr(sys, "argv", ["wattless", *args])
    with pytest.raises(SystemExit) as exit_info:
        main()
    out, err = capsys.readouterr()
    code = exit_info.value.code
    return (0 if code is None else code), out, err


def test_profile_json_contract(capsys, monkeypatch):
    code, out, _ = run(capsys, monkeypatch, "profile", "ds-cnn", "--target", TOY, "--target", "cortex-m4", "--json")
    assert code == 0
    data = json.loads(out)  # exactly one JSON object on stdout
    assert isinstance(data["macs"], int) and data["macs"] == pytest.approx(2.66e6, rel=0.02)
    assert data["effective_macs"] <= data["macs"] and data["params"] > 20_000
    assert set(data["energy_j"]) == {"toy", "cortex-m4"} == set(data["latency_s"])
    assert all(isinstance(v, float) and v > 0 for v in data["energy_j"].values())
    assert data["energy_kind"] == "estimated"
    layer = data["layers"][0]
    for key in ("name", "type", "macs", "effective_macs", "weight_precision", "act_precision", "weight_bytes",
                "act_read_bytes", "act_write_bytes", "events", "energy_j", "latency_s"):
        assert key in layer


def test_profile_user_file_spec_with_example_inputs(capsys, monkeypatch, tmp_path):
    spec = tmp_path / "tok.py"
    spec.write_text(
        "import torch\n"
        "def make():\n"
        "    m = torch.nn.Sequential(torch.nn.Embedding(50, 8), torch.nn.Linear(8, 4))\n"
        "    return m, torch.randint(0, 50, (2, 6))\n"
    )
    code, out, _ = run(capsys, monkeypatch, "profile", f"{spec}:make", "-t", TOY, "--json")
    assert code == 0
    data = json.loads(out)
    assert data["macs"] == 6 * 8 * 4 and data["inputs"] == 2


def test_profile_table_names_the_estimate(capsys, monkeypatch):
    code, out, _ = run(capsys, monkeypatch, "profile", "tiny-mlp", "-t", TOY, "--top", "2")
    assert code == 0
    assert "estimated" in out and "toy" in out and "total" in out


def test_measure_says_plainly_when_there_is_no_counter(capsys, monkeypatch):
    from wattless.energy.measure import default_meter
    from wattless.errors import MeasurementUnavailable

    try:
        default_meter()
        pytest.skip("this machine has an energy counter")
    except MeasurementUnavailable:
        pass
    code, out, _ = run(capsys, monkeypatch, "profile", "tiny-mlp", "-t", TOY, "--measure")
    assert code == 0 and "not measured" in out and "no energy counter" in out


@pytest.mark.parametrize(
    "args, message",
    [
        (["profile", "nowhere.py:make"], "does not exist"),
        (["profile", "json:nothing_here"], "no callable named 'nothing_here'"),
        (["profile", "no_such_module_xyz:f"], "cannot import"),
        (["profile", "not-a-model"], "unknown model"),
        (["profile", "tiny-mlp", "--input-shape", "1,3,7"], "rejected its example input"),
        (["profile", "tiny-mlp", "--input-shape", "a,b"], "not a comma-separated list"),
        (["profile", "tiny-mlp", "--target", "cortex-m99"], "built-in targets are"),
        (["profile", "tiny-mlp", "--weight-precision", "int99x"], "unknown precision"),
    ],
)
def test_bad_input_exits_2_with_a_message(capsys, monkeypatch, args, message):
    code, out, err = run(capsys, monkeypatch, *args)
    assert code == 2
    assert message in err and "Traceback" not in err + out


def test_factory_that_fails_and_bad_target_file(capsys, monkeypatch, tmp_path):
    spec = tmp_path / "bad.py"
    spec.write_text("def make():\n    raise RuntimeError('boom')\n")
    code, _, err = run(capsys, monkeypatch, "profile", f"{spec}:make")
    assert code == 2 and "factory" in err and "boom" in err
    target = tmp_path / "t.toml"
    target.write_text(Path(TOY).read_text().replace("dram_pj_per_byte = 100.0", ""))
    code, _, err = run(capsys, monkeypatch, "profile", "tiny-mlp", "--target", str(target))
    assert code == 2 and "memory.dram_pj_per_byte" in err and "t.toml" in err


def test_targets_lists_sources(capsys, monkeypatch):
    code, out, _ = run(capsys, monkeypatch, "targets")
    assert code == 0
    for name in ("server-cpu", "datacenter-gpu", "mobile-npu", "cortex-m4", "cortex-m33", "analog-pcm", "loihi"):
        assert name in out
    assert "covers" in out


def test_calibrate_command_writes_a_loadable_target(capsys, monkeypatch, tmp_path):
    from wattless.energy import count, estimate, load_target, set_precision
    from wattless.spec import example_from_shape, load_model, parse_shape

    toy = load_target(TOY)
    rows = []
    for spec, shape, prec in [("tiny-mlp", "1,64", "fp32"), ("tiny-mlp", "1,64", "int8"), ("ds-cnn", None, "int8"),
                              ("ds-cnn", None, "fp32")]:
        model, inputs = load_model(spec)
        if shape:
            inputs = example_from_shape(parse_shape(shape))
        set_precision(model, prec, prec)
        joules = estimate(count(model, inputs), toy).energy_j * 1.3  # the device costs 30 % more than the base
        rows.append({"spec": spec, "input_shape": shape, "weight_precision": prec, "act_precision": prec,
                     "measured_j": joules, "name": f"{spec}-{prec}"})
    path = tmp_path / "m.json"
    path.write_text(json.dumps(rows))
    out_file = tmp_path / "fitted.toml"
    code, out, err = run(capsys, monkeypatch, "calibrate", str(path), "--target", TOY, "--out", str(out_file),
                         "--fit", "mac_pj.fp32", "--fit", "mac_pj.int8", "--json")
    assert code == 0, err
    summary = json.loads(out)
    assert summary["rms_rel_error"] < summary["base_rms_rel_error"]
    assert load_target(out_file).name == "toy-calibrated"


def test_console_entry_point_runs():
    proc = subprocess.run([sys.executable, "-m", "wattless.cli", "profile", "tiny-mlp", "-t", "nope"],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and "unknown target" in proc.stderr and "Traceback" not in proc.stderr
