"""The side-by-side benchmark's JSON contract on a tiny model (few repetitions; no timing is asserted)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest

from wattless.bench import RUNTIMES, bench, guard_lines
from wattless.energy import builtin_targets
from wattless.errors import BenchError

SPEC = f"{Path(__file__).parent / 'tiny_workload.py'}:tiny"
ROW_KEYS = {"runtime", "batch", "latency_ms_p50", "latency_ms_p95", "throughput_per_s", "peak_rss_mb", "size_mb",
            "metric", "energy_j"}


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    from wattless.optimize import optimize
    from wattless.recipe import parse_recipe

    root = tmp_path_factory.mktemp("bench")
    recipe = parse_recipe({"name": "tiny-bench", "train": {"epochs": 1, "lr": 3e-3},
                           "quantize": {"weight_bits": 8, "act_bits": 8}})
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("WATTLESS_CACHE", str(root / "cache"))
        optimize(SPEC, recipe, root / "run", progress=False, baselines=False)
    return root


@pytest.fixture(autouse=True)
def _cache(run_dir, monkeypatch):
    monkeypatch.setenv("WATTLESS_CACHE", str(run_dir / "cache"))  # the baseline the run trained


def test_bench_json_contract(run_dir, tmp_path):
    out = tmp_path / "bench.json"
    result = bench(SPEC, run=run_dir / "run", batches=(1, 4), threads=1, warmup=1, repeats=3, rounds=2,
                   isolate=False, measure=False, json_path=out)
    assert json.loads(out.read_text()) == json.loads(json.dumps(result))
    rows = result["rows"]
    assert [(r["runtime"], r["batch"]) for r in rows] == [(name, b) for name in RUNTIMES for b in (1, 4)]
    for r in rows:
        assert ROW_KEYS <= set(r)
        assert r["latency_ms_p95"] >= r["latency_ms_p50"] > 0 and r["throughput_per_s"] > 0
        assert r["size_mb"] > 0 and 0 <= r["metric"] <= 1
        assert set(r["energy_j"]) == set(builtin_targets()) and all(v > 0 for v in r["energy_j"].values())
        assert r["peak_rss_mb"] is None  # one shared process: no per-runtime peak is claimed
        assert r["rounds"] == 2 and r["repeats"] == 3
    assert result["threads"] == 1 and result["energy_kind"] == "estimated"
    assert set(result["guard"]) == {"1", "4"}
    for batch, g in result["guard"].items():
        mine = next(r for r in rows if r["runtime"] == "wattless" and r["batch"] == int(batch))
        assert mine["slower_than_ort_fp32"] == g["slower_than_ort_fp32"] == (g["speedup_vs_ort_fp32"] < 1)
    assert all(("SLOWER" in line) == result["guard"][line.split()[1].rstrip(":")]["slower_than_ort_fp32"]
               for line in guard_lines(result))
    fp32, wattless = (next(r for r in rows if r["runtime"] == n and r["batch"] == 1) for n in ("ort-fp32", "wattless"))
    assert wattless["energy_j"]["mobile-npu"] < fp32["energy_j"]["mobile-npu"]  # int8 beats fp32, estimated
    assert result["export"]["parity"]["passed"]


def test_each_runtime_runs_in_its_own_process_with_its_peak_memory(run_dir):
    result = bench(SPEC, run=run_dir / "run", runtimes=("wattless",), batches=(1, 2), threads=1, warmup=1, repeats=3,
                   measure=False)
    assert [(r["runtime"], r["batch"]) for r in result["rows"]] == [("wattless", 1), ("wattless", 2)]
    for r in result["rows"]:
        assert r["peak_rss_mb"] >= r["rss_before_load_mb"] > 10


def test_without_an_energy_counter_the_bench_says_so(run_dir, monkeypatch):
    from wattless.errors import MeasurementUnavailable

    def no_counter():
        raise MeasurementUnavailable("no energy counter on this machine")

    monkeypatch.setattr(sys.modules["wattless.energy.measure"], "default_meter", no_counter)
    result = bench(SPEC, runtimes=("torch-fp32",), batches=(1,), threads=1, warmup=0, repeats=2, isolate=False)
    assert result["measured_note"] == "no energy counter on this machine"
    assert result["rows"][0]["measured_energy"] is None


def test_without_a_run_the_wattless_row_is_left_out(run_dir):
    result = bench(SPEC, runtimes=("torch-fp32", "wattless"), batches=(2,), threads=1, warmup=0, repeats=2,
                   isolate=False, measure=False)
    assert result["measured_note"] is None
    assert [r["runtime"] for r in result["rows"]] == ["torch-fp32"] and result["guard"] == {}


@pytest.mark.parametrize("kwargs, message", [
    ({"runtimes": ("tensorrt",)}, "unknown runtime"),
    ({"batches": (0,)}, "positive integers"),
    ({"run": "{run}/../cache"}, "not a `wattless optimize` run directory"),
])
def test_bad_bench_requests_are_refused(run_dir, kwargs, message):
    kwargs = {k: v.replace("{run}", str(run_dir / "run")) if isinstance(v, str) else v for k, v in kwargs.items()}
    with pytest.raises(BenchError, match=message):
        bench(SPEC, **kwargs)


def test_bench_command_line_errors_exit_2(capsys, monkeypatch):
    from wattless.cli import main

    monkeypatch.setattr(sys, "argv", ["wattless", "bench", "--workload", "mnist1d", "--batches", "1,x"])
    with pytest.raises(SystemExit) as done:
        main()
    assert done.value.code == 2 and "--batches takes comma-separated integers" in capsys.readouterr().err


def test_operator_times_counts_each_operator_type_per_call():
    from onnx import TensorProto, helper

    from wattless.bench import operator_times

    nodes = [helper.make_node("Relu", ["x"], ["r"]), helper.make_node("Add", ["r", "x"], ["a"]),
             helper.make_node("Add", ["a", "x"], ["y"])]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [4, 8])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [4, 8])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    model.ir_version = 10
    times = operator_times(model.SerializeToString(), {"x": np.ones((4, 8), np.float32)}, threads=1, runs=5, warmup=2)
    assert {op: t.nodes for op, t in times.by_op.items()} == {"Add": 2, "Relu": 1}
    assert times.kernel_ms == pytest.approx(sum(t.ms_per_run for t in times.by_op.values()))
    assert set(times.to_json()) == {"run_ms", "kernel_ms", "by_op"}
