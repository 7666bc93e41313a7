"""The baseline cache is keyed by what the baseline depends on: a workload whose data, model or training
settings changed under the same name and shapes trains its baseline again instead of reusing a stale one."""

from __future__ import annotations

import dataclasses

import pytest
import torch
from torch import nn

from wattless import fingerprint
from wattless.optimize import baseline_model
from wattless.workloads import Split

from tests.tiny_workload import tiny


def _cached(tmp_path) -> list[str]:
    return sorted(p.name for p in (tmp_path / "baselines").glob("*.safetensors"))


def test_new_data_under_the_same_name_and_shapes_is_not_the_cached_baseline(tmp_path):
    wl = tiny()
    _, first = baseline_model(wl, progress=False, cache=tmp_path)
    gen = torch.Generator().manual_seed(5)
    scrambled = Split(wl.train.inputs, wl.train.targets[torch.randperm(len(wl.train), generator=gen)])
    _, second = baseline_model(dataclasses.replace(wl, train=scrambled), progress=False, cache=tmp_path)
    assert len(_cached(tmp_path)) == 2
    assert second["accuracy"] < first["accuracy"] - 0.2  # trained on noise, not the cached baseline's 0.9


@pytest.mark.parametrize("change", [
    lambda wl: dataclasses.replace(wl, default_lr=wl.default_lr / 2),
    lambda wl: dataclasses.replace(wl, batch_size=32),
    lambda wl: dataclasses.replace(wl, train_threads=1),
    lambda wl: dataclasses.replace(wl, test=Split(wl.test.inputs + 1.0, wl.test.targets)),
    lambda wl: dataclasses.replace(wl, build_model=lambda: nn.Sequential(
        nn.Linear(16, 64), nn.SiLU(), nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 4))),
], ids=["lr", "batch-size", "threads", "test-data", "activation"])
def test_each_thing_a_baseline_depends_on_changes_its_key(change):
    wl = tiny()
    settings = {"epochs": 1}
    before = fingerprint.baseline_key(wl, wl.build_model(), settings)
    other = change(wl)
    after = fingerprint.baseline_key(other, other.build_model(), {**settings, "lr": other.default_lr,
                                                                  "batch_size": other.batch_size,
                                                                  "threads": other.train_threads})
    assert before != after


def test_the_same_workload_built_twice_has_one_key():
    a, b = tiny(), tiny()
    assert fingerprint.baseline_key(a, a.build_model(), {}) == fingerprint.baseline_key(b, b.build_model(), {})


def test_big_data_is_keyed_by_a_sample_and_its_size(monkeypatch):
    monkeypatch.setattr(fingerprint, "FULL_BYTES", 1024)
    x = torch.randn(10_000, 8)
    base = fingerprint.split_digest(Split(x))
    sampled = torch.linspace(0, 9_999, fingerprint.SAMPLE_ROWS).round().long().unique()
    y = x.clone()
    y[sampled[3]] += 1.0
    assert fingerprint.split_digest(Split(y)) != base
    assert fingerprint.split_digest(Split(x[:-1])) != base


def test_data_without_a_reliable_digest_has_no_key():
    wl = tiny()

    class Rows(list):  # neither a tensor nor a list of strings
        pass

    odd = dataclasses.replace(wl, test=Split(Rows(wl.test.inputs), wl.test.targets))
    assert fingerprint.baseline_key(odd, odd.build_model(), {}) is None
