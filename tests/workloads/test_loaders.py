"""Workloads from the user's own batches (Workload.from_loaders, Batches), their loss and metric, through
training, optimize, search and export; and the docs/WORKLOADS.md example run as written."""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from wattless.errors import TrainingError, WorkloadError
from wattless.train import TrainSettings, train
from wattless.workloads import Batches, Split, Workload
from wattless.workloads.base import classification_evaluate

ROOT = Path(__file__).resolve().parents[2]
SPEC = f"{ROOT / 'docs' / 'examples' / 'own_loader.py'}:workload"


def _data(n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    y = torch.randint(0, 3, (n,), generator=gen)
    return torch.randn(n, 8, generator=gen) + y[:, None].float(), y


def _build() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 3))


def _dict_batches(n: int, seed: int):
    """A Hugging Face-like source: a function returning a fresh iterator of dict batches each time."""
    x, y = _data(n, seed)
    return lambda: ({"x": x[i : i + 32], "labels": y[i : i + 32]} for i in range(0, n, 32))


def test_a_generator_function_is_called_again_every_epoch_and_the_loss_sees_the_users_batch():
    seen = []

    def loss(outputs, batch):
        seen.append(type(batch))
        return F.cross_entropy(outputs, batch["labels"])

    wl = Workload.from_loaders("dicts", _build, train=_dict_batches(96, 1), val=_dict_batches(64, 2),
                               test=_dict_batches(64, 3), inputs=lambda b: b["x"], loss=loss, epochs=2, lr=1e-2)
    assert len(wl.train) == 96 and wl.train.num_batches == 3 and wl.batch_size == 32 and wl.train.labelled
    result = train(wl.build_model(), wl, TrainSettings(epochs=2, lr=1e-2, batch_size=999), progress=False)
    assert result.steps == 6 and seen == [dict] * 6  # the loader's batches, not the settings' batch size
    assert set(wl.evaluate(wl.build_model(), wl.test)) == {"accuracy"}
    assert wl.example_input(70).shape == (70, 8)  # the test rows, wrapping round


def test_per_batch_metric_and_whole_split_evaluate():
    x, y = _data(64, 3)
    loader = DataLoader(TensorDataset(x, y), batch_size=16)
    wl = Workload.from_loaders("m", _build, train=loader, val=loader, test=loader, metric_name="err",
                               metric=lambda out, batch: float((out.argmax(-1) != batch[1]).float().mean()))
    model = _build()
    with torch.no_grad():
        expected = float((model(x).argmax(-1) != y).float().mean())
    assert wl.evaluate(model, wl.test)["err"] == pytest.approx(expected)
    whole = Workload.from_loaders("w", _build, train=loader, val=loader, test=loader, metric_name="n",
                                  evaluate=lambda model, batches: {"n": float(sum(len(b[0]) for b in batches))})
    assert whole.evaluate(model, whole.test) == {"n": 64.0}


def test_a_shuffled_dataloader_resumes_bit_for_bit(tmp_path):
    x, y = _data(128, 1)
    wl = Workload.from_loaders("shuffled", _build, train=DataLoader(TensorDataset(x, y), batch_size=16, shuffle=True),
                               val=[(x, y)], test=[(x, y)], loss=lambda out, b: F.cross_entropy(out, b[1]))
    settings = TrainSettings(epochs=3, lr=1e-2, batch_size=16)
    straight = wl.build_model()
    train(straight, wl, settings, run_dir=tmp_path / "a", progress=False)

    def stop_after_first(epoch, record):
        if epoch == 1:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        train(wl.build_model(), wl, settings, run_dir=tmp_path / "b", progress=False, on_epoch=stop_after_first)
    resumed = wl.build_model()
    assert train(resumed, wl, settings, run_dir=tmp_path / "b", progress=False).resumed_from_epoch == 1
    for a, b in zip(straight.state_dict().values(), resumed.state_dict().values()):
        torch.testing.assert_close(a, b, rtol=0, atol=0)


def _workload(train) -> Workload:
    x, y = _data(64, 2)
    return Workload(name="t", metric_name="accuracy", build_model=_build, train=train, val=Split(x, y),
                    test=Split(x, y), example_input=lambda n: x[:n], evaluate=classification_evaluate(64),
                    needs_training=True, default_epochs=1, batch_size=16)


def test_a_tensordataset_is_its_split_and_a_dataloader_is_accepted_where_a_split_is_expected():
    x, y = _data(64, 1)
    from_split, from_dataset = _build(), _build()
    settings = TrainSettings(epochs=1, lr=1e-2, batch_size=16)
    train(from_split, _workload(Split(x, y)), settings, progress=False)
    train(from_dataset, _workload(TensorDataset(x, y)), settings, progress=False)
    for a, b in zip(from_split.state_dict().values(), from_dataset.state_dict().values()):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
    wl = _workload(DataLoader(TensorDataset(x, y), batch_size=16))
    assert isinstance(wl.train, Batches) and train(_build(), wl, settings, progress=False).steps == 4


@pytest.mark.parametrize("source, message", [
    (iter([(torch.zeros(2, 8), torch.zeros(2))]), "Workload.from_loaders"),
    (TensorDataset(torch.zeros(4, 8), torch.zeros(4), torch.zeros(4)), "expected wattless.workloads.Split"),
    ({"x": torch.zeros(4, 8)}, "Workload.from_loaders"),
])
def test_what_cannot_be_a_split_is_refused_naming_the_fix(source, message):
    with pytest.raises(WorkloadError, match=message):
        _workload(source)


def test_from_loaders_refuses_a_dataset_of_rows_and_a_used_up_generator():
    x, y = _data(8, 1)
    with pytest.raises(WorkloadError, match=r"DataLoader\(dataset, batch_size"):
        Batches(TensorDataset(x, y))
    with pytest.raises(WorkloadError, match="pass the function that makes it"):
        Workload.from_loaders("g", _build, train=((x, y) for _ in range(2)), val=[(x, y)], test=[(x, y)])


def test_a_loss_that_is_not_a_scalar_is_refused_naming_the_fix():
    x, y = _data(32, 1)
    wl = Workload.from_loaders("v", _build, train=[(x, y)], val=[(x, y)], test=[(x, y)],
                               loss=lambda out, b: F.cross_entropy(out, b[1], reduction="none"))
    with pytest.raises(TrainingError, match="one scalar tensor"):
        train(_build(), wl, TrainSettings(epochs=1, lr=1e-2, batch_size=8), progress=False)


def test_a_dataloader_workload_optimizes_quantized_exports_with_parity_and_searches(tmp_path, monkeypatch):
    from wattless.export import export_run
    from wattless.optimize import optimize
    from wattless.recipe import parse_recipe
    from wattless.search import SearchSpace, search
    from wattless.search.study import default_sampler

    monkeypatch.setenv("WATTLESS_CACHE", str(tmp_path / "cache"))
    recipe = parse_recipe({"name": "q8", "train": {"epochs": 1, "lr": 3e-3},
                           "quantize": {"weight_bits": 8, "act_bits": 8}})
    metrics = optimize(SPEC, recipe, tmp_path / "run", progress=False, baselines=False, energy_inputs=8)
    assert metrics["metric_name"] == "top1" and metrics["accuracy"] > 0.9
    assert metrics["training"]["steps"] == 8  # 512 rows in the loader's batches of 64
    assert metrics["techniques"]["quantize"]["mean_weight_bits"] == 8
    report = export_run(tmp_path / "run", tmp_path / "q8.onnx", workload=SPEC)
    assert report.parity.passed and report.parity.metric_name == "top1"
    found = search(SPEC, "mobile-npu", out=tmp_path / "search", trials=2, workers=1, space=SearchSpace(epochs=1),
                   seeds=[recipe], sampler=default_sampler(seed=0), baselines=("fp32",), energy_inputs=4,
                   progress=False, report=False)
    counts = found.trial_counts  # the q8 seed completes; a drawn recipe far below fp32 is pruned
    assert counts["fail"] == 0 and counts["complete"] + counts["pruned"] == 2 and counts["complete"] >= 1
    assert found.metric_name == "top1" and found.frontier


def _python_blocks(markdown: str) -> list[str]:
    return re.findall(r"```python\n(.*?)```", markdown, flags=re.S)


def test_the_workloads_doc_example_runs_as_written(tmp_path, monkeypatch):
    doc = (ROOT / "docs" / "WORKLOADS.md").read_text(encoding="utf-8")
    example = (ROOT / "docs" / "examples" / "own_loader.py").read_text(encoding="utf-8")
    assert example.strip() in doc  # the doc shows the shipped file whole
    shutil.copytree(ROOT / "docs" / "examples", tmp_path / "docs" / "examples")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("WATTLESS_CACHE", str(tmp_path / "cache"))
    for block in _python_blocks(doc):
        if block.strip() != example.strip():
            exec(compile(block, "docs/WORKLOADS.md", "exec"), {"__name__": "doc"})
    assert (tmp_path / "runs" / "blobs-q8" / "metrics.json").is_file()
