"""The baselines, defined once: search and bench give each the same metric and joules on the same data; the
static quantizer tries every calibration; the pricing declares what the runtime's graph runs in integers."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import pytest

from wattless import baselines as bl

from tests.tiny_workload import tiny

SPEC = f"{Path(__file__).parent / 'tiny_workload.py'}:tiny"


pytestmark = pytest.mark.usefixtures("fresh_cache_one_thread")


def test_bench_and_search_give_each_baseline_the_same_metric_and_joules(tmp_path):
    from wattless.bench import bench
    from wattless.search import BASELINES, SearchSpace, search

    search(SPEC, "mobile-npu", out=tmp_path / "s", trials=1, space=SearchSpace(epochs=1), progress=False,
           report=False)
    searched = json.loads((tmp_path / "s" / "results.json").read_text())["baselines"]
    benched = bench(SPEC, runtimes=("torch-fp32", "torch-dynamic-int8", "ort-fp32", "ort-dynamic-int8",
                                    "ort-static-int8"),
                    batches=(1,), threads=1, warmup=0, repeats=2, isolate=False, measure=False)["rows"]
    by_name = {r["baseline"]: r for r in benched}
    assert set(BASELINES) <= set(by_name)
    for name in BASELINES:
        assert searched[name]["metric"] is not None, name
        assert by_name[name]["metric"] == searched[name]["metric"], name
        assert by_name[name]["energy_j"] == searched[name]["energy_j"], name  # every target, to the last digit
        assert by_name[name]["note"] == searched[name]["note"], name
    assert by_name["fp32"]["runtime"] == "torch-fp32"


def test_static_quantization_tries_every_calibration_and_names_the_winner(tmp_path):
    from wattless.optimize import baseline_model, eval_samples

    wl = tiny()
    model, _ = baseline_model(wl, progress=False)
    row = bl.run_baselines(wl, model, ("fp32", "ort-static-int8"), tmp_path, eval_samples(wl, 4))["ort-static-int8"]
    assert row["calibration"] in bl.CALIBRATION_METHODS
    assert f"{row['calibration']} won on the val split" in row["note"]
    assert all((tmp_path / f"static-int8-{m.lower()}.onnx").exists() for m in bl.CALIBRATION_METHODS)
    assert row["file"] == str(tmp_path / "static-int8.onnx") and row["metric"] > 0.5


def _integer_layers(path: str) -> int:
    """Conv/Gemm/MatMul layers that run on int8 codes in an ONNX file: integer kernels, or a float op whose
    weight and input both come through DequantizeLinear (QDQ, fused by ONNX Runtime)."""
    import onnx

    graph = onnx.load(path).graph
    made_by = {o: n.op_type for n in graph.node for o in n.output}
    ops = Counter(n.op_type for n in graph.node)
    qdq = sum(1 for n in graph.node if n.op_type in ("Conv", "Gemm", "MatMul")
              and all(made_by.get(i) == "DequantizeLinear" for i in n.input[:2]))
    return ops["ConvInteger"] + ops["MatMulInteger"] + qdq


@pytest.mark.parametrize("name", ["ort-dynamic-int8", "ort-static-int8"])
def test_pricing_declares_the_layers_the_runtime_runs_in_int8(tmp_path, name):
    from wattless.workloads import get_workload

    wl = get_workload("mnist1d")  # convolutions and a Linear; untrained is enough to read the graph
    model = wl.build_model().eval()
    row = bl.run_baselines(wl, model, ("fp32", name), tmp_path, [wl.example_input(1)])[name]
    priced = bl.get(name).priced_as
    declared = [m for m in priced.apply(model).modules() if getattr(m, "wattless_act_precision", None) == "int8"]
    assert len(declared) == _integer_layers(row["file"]) == 4  # conv1..3 and fc


def test_old_names_read_as_the_baseline_they_name():
    assert bl.get("ort-static-qdq") is bl.get("ort-static-int8") and bl.canonical("torch-fp32") == "fp32"
    assert set(bl.PTQ) == {"torch-dynamic-int8", "ort-dynamic-int8", "ort-static-int8"}
    with pytest.raises(Exception, match="choose among"):
        bl.get("tensorrt-int8")


def _rows(**metrics_and_nj):
    return {name.replace("_", "-"): {"metric": m, "energy_j": {"mobile-npu": nj * 1e-9}}
            for name, (m, nj) in metrics_and_nj.items()}


def test_the_best_ptq_is_the_cheapest_within_the_tolerance():
    rows = _rows(fp32=(0.955, 97.3), torch_dynamic_int8=(0.954, 90.0), ort_dynamic_int8=(0.950, 33.0),
                 ort_static_int8=(0.910, 30.0))
    got = bl.choose_ptq(rows, "mobile-npu", 0.955, 0.01)
    assert got["best_ptq"] == "ort-dynamic-int8" and got["best_ptq_within"] is True
    assert got["best_ptq_energy_j"] == pytest.approx(33e-9) and got["most_accurate_ptq"] == "torch-dynamic-int8"


def test_no_ptq_within_the_tolerance_is_said_and_the_most_accurate_stands_beside():
    rows = _rows(fp32=(0.955, 97.3), ort_static_int8=(0.910, 30.0), ort_dynamic_int8=(0.930, 33.0))
    got = bl.choose_ptq(rows, "mobile-npu", 0.955, 0.01)
    assert got["best_ptq"] is None and got["best_ptq_within"] is False
    assert "no post-training quantization baseline is within 1 point of fp32" in got["best_ptq_note"]
    assert got["most_accurate_ptq"] == "ort-dynamic-int8" and got["most_accurate_ptq_metric"] == 0.930
