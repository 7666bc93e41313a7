"""`wattless compare RUN_DIR`: one model on a digital, an analog and a neuromorphic target, one table and plot."""

from __future__ import annotations

import json

from rich.console import Console

from tests.test_bad_input import SPEC, run_cli
from wattless.cli.train import spiking_table
from wattless.optimize import optimize
from wattless.recipe import parse_recipe


def test_compare_a_spiking_run_on_three_kinds_of_hardware(tmp_path, fresh_cache_one_thread):
    recipe = parse_recipe({"name": "tiny-snn", "target": "loihi", "train": {"epochs": 0},
                           "spiking": {"steps": [4, 16]}})
    run = tmp_path / "run"
    metrics = optimize(SPEC, recipe, run, progress=False, baselines=False, energy_inputs=4)
    console = Console(record=True, width=200)
    console.print(spiking_table(metrics))
    text = console.export_text()
    assert "spiking on loihi" in text and "synaptic events" in text
    code, out, err = run_cli("compare", str(run), "--seeds", "2")
    assert code == 0, err
    result = json.loads((run / "compare.json").read_text())
    rows = {r["target"]: r for r in result["rows"]}
    assert list(rows) == ["mobile-npu", "analog-pcm", "loihi"] and result["energy_kind"] == "estimated"
    assert all(0 <= r["accuracy"] <= 1 and r["energy_j"] > 0 for r in rows.values())
    metrics = json.loads((run / "metrics.json").read_text())
    best = metrics["spiking"]["best_steps"]
    assert rows["loihi"]["energy_j"] == metrics["spiking"]["steps"][best]["energy_j"]["loihi"]
    assert "without retraining" in rows["analog-pcm"]["how"]
    assert (run / "compare.png").stat().st_size > 1000 and "analog-pcm" in out


def test_compare_refuses_a_folder_without_a_run(tmp_path):
    code, _, err = run_cli("compare", str(tmp_path))
    assert code == 2 and "metrics.json" in err
