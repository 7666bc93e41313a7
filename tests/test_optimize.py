"""`wattless optimize` end to end on a tiny workload: outputs, the energy objective, resume, NaN, run dirs."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from wattless.energy import builtin_targets
from wattless.errors import TrainingError
from wattless.optimize import optimize
from wattless.recipe import parse_recipe
from wattless.train import TrainSettings, train

from tests.tiny_workload import tiny

SPEC = f"{Path(__file__).parent / 'tiny_workload.py'}:tiny"


@pytest.fixture(autouse=True)
def _cache(tmp_path, monkeypatch):
    monkeypatch.setenv("WATTLESS_CACHE", str(tmp_path / "cache"))


def test_optimize_writes_model_recipe_and_metrics(tmp_path):
    recipe = parse_recipe({
        "name": "tiny-all", "train": {"epochs": 3, "lr": 3e-3},
        "objective": {"energy_weight": 0.1}, "distill": {"temperature": 2.0},
        "quantize": {"weight_bits": 4, "act_bits": 8}, "prune": {"pattern": "unstructured", "sparsity": 0.5},
        "act_sparsity": {"l1": 1e-5},
    })
    metrics = optimize(SPEC, recipe, tmp_path / "run", progress=False)
    run = tmp_path / "run"
    assert (run / "model.safetensors").exists() and (run / "recipe.toml").exists()
    on_disk = json.loads((run / "metrics.json").read_text())
    assert on_disk["accuracy"] == metrics["accuracy"] > 0.5
    for key in ("energy_j", "baseline_energy_j"):
        assert set(on_disk[key]) == set(builtin_targets())
    assert on_disk["energy_j"]["mobile-npu"] < on_disk["baseline_energy_j"]["mobile-npu"]
    assert {"quantize", "prune", "act_sparsity"} <= set(on_disk["techniques"])
    assert on_disk["objective"]["soft_energy_j"] > 0 and "soft_hard_gap" in on_disk["objective"]
    assert on_disk["ptq_int8"]["accuracy"] > 0.5
    assert on_disk["ptq_int8"]["name"] in {"torch-dynamic-int8", "ort-dynamic-int8", "ort-static-int8"}  # as search's
    assert (tmp_path / "cache" / "baselines").is_dir()  # the baseline is cached for the next run


def _energy_after(tmp_path: Path, weight: float) -> float:
    recipe = parse_recipe({
        "name": f"lambda-{weight}", "target": "mobile-npu", "train": {"epochs": 4, "lr": 3e-3},
        "objective": {"energy_weight": weight}, "act_sparsity": {"l1": 0.0},
    })
    metrics = optimize(SPEC, recipe, tmp_path / f"run-{weight}", progress=False, baselines=False)
    return metrics["energy_j"]["mobile-npu"]


def test_energy_penalty_lowers_energy_as_lambda_grows(tmp_path):
    energies = [_energy_after(tmp_path, w) for w in (0.0, 1.0, 5.0)]
    assert energies[0] > energies[1] > energies[2]


def test_budget_is_kept_by_the_multiplier(tmp_path):
    free = _energy_after(tmp_path, 0.0)
    recipe = parse_recipe({
        "name": "budget", "train": {"epochs": 4, "lr": 3e-3}, "act_sparsity": {"l1": 0.0},
        "objective": {"energy_budget_uj": free * 1e6 * 0.7, "dual_lr": 0.5},
    })
    metrics = optimize(SPEC, recipe, tmp_path / "budget", progress=False, baselines=False)
    assert metrics["objective"]["energy_lambda"] > 0
    assert metrics["energy_j"]["mobile-npu"] < free


def test_interrupted_training_resumes_where_it_stopped(tmp_path):
    wl = tiny()
    settings = TrainSettings(epochs=3, lr=1e-2, batch_size=64)
    straight = wl.build_model()
    train(straight, wl, settings, run_dir=tmp_path / "a", progress=False)

    def stop_after_first(epoch, record):
        if epoch == 1:
            raise KeyboardInterrupt

    model = wl.build_model()
    with pytest.raises(KeyboardInterrupt):
        train(model, wl, settings, run_dir=tmp_path / "b", progress=False, on_epoch=stop_after_first)
    resumed = wl.build_model()
    result = train(resumed, wl, settings, run_dir=tmp_path / "b", progress=False)
    assert result.resumed_from_epoch == 1 and result.epochs_run == 2
    for a, b in zip(straight.state_dict().values(), resumed.state_dict().values()):
        torch.testing.assert_close(a, b)


def test_nan_loss_stops_and_keeps_the_last_good_checkpoint(tmp_path):
    wl = tiny()
    model = wl.build_model()
    saved = {}

    def poison(epoch, record):
        saved["bytes"] = (tmp_path / "checkpoint" / "model.safetensors").read_bytes()
        with torch.no_grad():
            model[0].weight.fill_(float("nan"))

    with pytest.raises(TrainingError, match=r"last good checkpoint \(epoch 1\)"):
        train(model, wl, TrainSettings(epochs=3, lr=1e-2, batch_size=64), run_dir=tmp_path, progress=False,
              on_epoch=poison)
    assert (tmp_path / "checkpoint" / "model.safetensors").read_bytes() == saved["bytes"]


def test_a_run_dir_holding_another_run_is_refused_untouched(tmp_path):
    first = parse_recipe({"name": "first", "train": {"epochs": 1}})
    optimize(SPEC, first, tmp_path / "run", progress=False, baselines=False)
    before = {p.name: p.read_bytes() for p in (tmp_path / "run").iterdir() if p.is_file()}
    other = parse_recipe({"name": "second", "train": {"epochs": 1}})
    with pytest.raises(TrainingError, match="holds another run"):
        optimize(SPEC, other, tmp_path / "run", progress=False, baselines=False)
    assert before == {p.name: p.read_bytes() for p in (tmp_path / "run").iterdir() if p.is_file()}


def test_training_runs_on_the_workloads_thread_count_and_gives_it_back():
    import dataclasses

    seen: list[int] = []
    wl = dataclasses.replace(tiny(), train_threads=1)
    model = wl.build_model()
    model.register_forward_pre_hook(lambda *_: seen.append(torch.get_num_threads()))
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        train(model, wl, TrainSettings(epochs=1, lr=1e-3, batch_size=256), progress=False)
        assert set(seen) == {1} and torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(before)


def test_tiny_builtins_train_on_one_thread():
    from wattless.workloads import get_workload

    assert get_workload("mnist1d").train_threads == 1 and get_workload("digits").train_threads == 1


def test_each_workload_seed_caches_its_own_baseline(tmp_path):
    import dataclasses

    from wattless.optimize import baseline_model

    for seed in (0, 1):
        baseline_model(dataclasses.replace(tiny(), seed=seed), progress=False, cache=tmp_path)
    names = sorted(p.name for p in (tmp_path / "baselines").glob("*.safetensors"))
    assert len(names) == 2 and "-s0" in names[0] and "-s1" in names[1]


def test_a_run_rebuilds_its_user_workload_from_the_spec_it_kept(tmp_path, monkeypatch):
    from wattless.optimize import load_run

    monkeypatch.chdir(Path(__file__).parent)
    recipe = parse_recipe({"name": "one-epoch", "train": {"epochs": 1}})
    optimize("tiny_workload.py:tiny", recipe, tmp_path / "run", progress=False, baselines=False)
    held = json.loads((tmp_path / "run" / "run.json").read_text())
    assert held["workload_spec"] == f"{Path(__file__).parent / 'tiny_workload.py'}:tiny"
    monkeypatch.chdir(tmp_path)  # the relative spec no longer resolves from here; the kept one does
    model, _, wl = load_run(tmp_path / "run")
    assert wl.name == "tiny" and wl.spec == held["workload_spec"]


def test_a_run_whose_workload_cannot_be_rebuilt_names_the_spec_and_the_option(tmp_path):
    from wattless.errors import WorkloadError
    from wattless.optimize import load_run

    recipe = parse_recipe({"name": "one-epoch", "train": {"epochs": 1}})
    optimize(SPEC, recipe, tmp_path / "run", progress=False, baselines=False)
    marker = tmp_path / "run" / "run.json"
    held = json.loads(marker.read_text())
    marker.write_text(json.dumps({**held, "workload_spec": str(tmp_path / "gone.py:tiny")}))
    with pytest.raises(WorkloadError) as raised:
        load_run(tmp_path / "run")
    assert "--workload SPEC" in str(raised.value) and str(tmp_path / "gone.py:tiny") in str(raised.value)
    assert load_run(tmp_path / "run", SPEC)[2].name == "tiny"  # what the message says to do


def test_macs_in_metrics_are_those_left_after_structured_pruning(tmp_path):
    recipe = parse_recipe({"name": "halved", "train": {"epochs": 1},
                           "prune": {"pattern": "structured", "sparsity": 0.5}})
    metrics = optimize(SPEC, recipe, tmp_path / "run", progress=False, baselines=False)
    assert metrics["dense_macs"] == pytest.approx(metrics["baseline_macs"])
    assert metrics["macs"] < 0.8 * metrics["dense_macs"]
