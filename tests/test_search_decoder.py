"""The decoder search on a tiny Llama: two trials, each a perplexity and joules per token, and a frontier."""

from __future__ import annotations

import json

import optuna
import torch

from wattless.search.decoder import DecoderSpace, decoder_recipe, frontier, search_decoder
from wattless.testing import tiny_llama
from wattless.workloads import Split, Workload
from wattless.workloads.smollm2 import decoder_metrics, top1

IDS = torch.randint(0, 96, (10, 24), generator=torch.Generator().manual_seed(0))


def _workload() -> Workload:
    reference = top1(tiny_llama(), IDS[8:])
    return Workload(name="tiny-lm", metric_name="next_token_agreement", build_model=tiny_llama,
                    train=Split(IDS[:6]), val=Split(IDS[6:8]), test=Split(IDS[8:]),
                    example_input=lambda n: IDS[:n, :16], needs_training=False, default_epochs=0, batch_size=4,
                    evaluate=lambda m, split: decoder_metrics(m, split.inputs, reference[: len(split.inputs)]))


def test_two_trials_give_points_a_frontier_and_continue(tmp_path, fresh_cache_one_thread):
    space = DecoderSpace(group_sizes=(32,), calibration_windows=2, test_windows=2, method="rtn")
    result = search_decoder(_workload(), "mobile-npu", out=tmp_path / "s", trials=2, space=space,
                            sampler=optuna.samplers.RandomSampler(seed=1))
    assert len(result["points"]) == 2 and result["points"][0]["params"]["bits"] == 4  # the shipped grid first
    for p in result["points"]:
        assert p["perplexity"] > 1 and p["energy_j_per_token"]["mobile-npu"] > 0
        assert p["energy_ratio"]["datacenter-gpu"] > 1  # below the float reference
    assert result["frontier"] and result["reference"]["perplexity"] > 1
    assert json.loads((tmp_path / "s" / "results.json").read_text())["frontier"] == result["frontier"]
    again = search_decoder(_workload(), "mobile-npu", out=tmp_path / "s", trials=2, space=space)
    assert len(again["points"]) == 2  # the study already holds them: nothing reruns


def test_a_sparse_draw_takes_integer_zero_points_and_the_frontier_is_pareto():
    recipe = decoder_recipe({"bits": 3, "group_size": 64, "zero_point": "float", "sparsity": "2:4", "kv_bits": 8},
                            DecoderSpace())
    assert recipe["weight_only"]["zero_point"] == "int" and recipe["sparsify"]["pattern"] == "2:4"
    assert recipe["kv_cache"] == {"bits": 8}
    pts = [{"perplexity": p, "energy_j_per_token": {"t": e}} for p, e in ((10, 3.0), (12, 1.0), (11, 2.0), (13, 2.5))]
    assert [p["perplexity"] for p in frontier(pts, "t")] == [12, 11, 10]


def test_the_cli_routes_a_decoder_workload_and_asks_for_trials(tmp_path, capsys, monkeypatch):
    import sys

    import pytest

    from wattless.cli import main
    from wattless.search.decoder import is_decoder_workload

    assert is_decoder_workload("smollm2") and not is_decoder_workload("mnist1d")
    monkeypatch.setattr(sys, "argv", ["wattless", "search", "--workload", "smollm2", "--target", "mobile-npu",
                                      "--out", str(tmp_path)])
    with pytest.raises(SystemExit) as exit_info:
        main()
    assert exit_info.value.code == 2 and "--trials" in capsys.readouterr().err
