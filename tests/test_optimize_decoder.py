"""optimize -> export for a decoder workload (tiny Llama): no training, weight-only bits, joules per token."""

from __future__ import annotations

import pytest
import torch

from wattless.export import export_model
from wattless.optimize import load_run, optimize
from wattless.recipe import parse_recipe
from wattless.testing import tiny_llama
from wattless.workloads import Split, Workload
from wattless.workloads.smollm2 import decoder_metrics, top1

IDS = torch.randint(0, 96, (12, 32), generator=torch.Generator().manual_seed(0))
REFERENCE = top1(tiny_llama(), IDS[8:])


def _workload() -> Workload:
    return Workload(name="tiny-lm", metric_name="next_token_agreement", build_model=tiny_llama,
                    train=Split(IDS[:6]), val=Split(IDS[6:8]), test=Split(IDS[8:]),
                    example_input=lambda n: IDS[:n, :16], needs_training=False, default_epochs=0, batch_size=4,
                    evaluate=lambda m, split: decoder_metrics(m, split.inputs, REFERENCE))


def test_a_weight_only_recipe_runs_exports_and_prices_tokens(tmp_path, fresh_cache_one_thread):
    recipe = parse_recipe({"name": "tiny-int4", "train": {"epochs": 0},
                           "weight_only": {"bits": 4, "group_size": 32, "zero_point": "float",
                                           "overrides": {"lm_head": {"bits": 8, "group_size": 32, "symmetric": True}}}})
    wl = _workload()
    metrics = optimize(wl, recipe, tmp_path / "run", progress=False)
    assert metrics["techniques"]["weight_only"]["layers"] == 2 * 7 + 1
    assert 0.5 < metrics["metrics"]["next_token_agreement"] <= 1.0
    decode = metrics["decode"]
    assert decode["energy_kind"] == "estimated" and decode["energy_ratio"]["mobile-npu"] > 1.5
    model, _, _ = load_run(tmp_path / "run", wl)
    report = export_model(model, wl, tmp_path / "lm.onnx")
    assert report.kind == "decoder-lm" and report.parity["passed"]
    assert report.parity["perplexity_onnx"] == pytest.approx(metrics["metrics"]["perplexity"], rel=0.01)
