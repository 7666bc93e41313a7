"""`recipes/mnist1d-npu.toml` against the dense fp32 baseline and post-training int8, on target mobile-npu.

Goal (issue 3): accuracy within 1 point of fp32, estimated energy >= 50x lower than fp32 and >= 3x lower
than the best post-training int8 quantization of the same baseline. Energies are estimates on mobile-npu
(each test input's executed path counted and priced), never measurements.

    python bench/optimize_mnist1d.py [--out bench/out/mnist1d-npu] [--json bench/out/optimize_mnist1d.json]
"""

from __future__ import annotations

import argparse
import copy
import json
import shutil
import time
from pathlib import Path

from rich.console import Console
from rich.table import Table

from wattless.optimize import baseline_model, energy_by_target, eval_samples, load_run, optimize
from wattless.recipe import load_recipe
from wattless.techniques.quantize import ptq_int8_
from wattless.workloads import get_workload

TARGET = "mobile-npu"
RECIPE = Path(__file__).parents[1] / "recipes" / "mnist1d-npu.toml"


def ptq_variants(wl, baseline, samples) -> list[dict]:
    """Post-training int8 as a user would run it, with the calibrations they would try."""
    calib = wl.prepare_inputs(wl.train.take(slice(0, 512)).inputs)
    rows = []
    for act_range in ("max", "percentile"):
        model = copy.deepcopy(baseline)
        ptq_int8_(model, calib, act_range=act_range)
        energy, _ = energy_by_target(model, samples)
        rows.append({"name": f"post-training int8 ({act_range} calibration)",
                     "accuracy": wl.evaluate(model, wl.test)["accuracy"], "energy_j": energy[TARGET]["energy_j"]})
    return rows


def reuse(run: Path, n: int) -> dict:
    """The metrics of an existing run, re-priced on n test inputs; refused unless it ran this very recipe."""
    if load_recipe(run / "recipe.toml").model_dump(exclude={"name", "description"}) != load_recipe(RECIPE).model_dump(
            exclude={"name", "description"}):
        raise SystemExit(f"{run} did not run {RECIPE}; train it with this script instead")
    model, _, wl = load_run(run)
    samples = eval_samples(wl, n)
    metrics = json.loads((run / "metrics.json").read_text())
    energy, _ = energy_by_target(model, samples)
    baseline, _ = baseline_model(wl, progress=False)
    base_energy, _ = energy_by_target(baseline, samples)
    metrics["energy_j"] = {k: v["energy_j"] for k, v in energy.items()}
    metrics["baseline_energy_j"] = {k: v["energy_j"] for k, v in base_energy.items()}
    metrics["accuracy"] = wl.evaluate(model, wl.test)["accuracy"]
    return metrics


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", default="bench/out/mnist1d-npu")
    parser.add_argument("--json", default="bench/out/optimize_mnist1d.json")
    parser.add_argument("--energy-inputs", type=int, default=256)
    parser.add_argument("--run", help="report an existing run of this recipe instead of training again")
    args = parser.parse_args()
    if args.run:
        metrics, wall_s = reuse(Path(args.run), args.energy_inputs), None
    else:
        shutil.rmtree(args.out, ignore_errors=True)
        start = time.perf_counter()
        metrics = optimize("mnist1d", RECIPE, args.out, energy_inputs=args.energy_inputs, baselines=False)
        wall_s = time.perf_counter() - start
    wl = get_workload("mnist1d")
    baseline, base_metrics = baseline_model(wl, progress=False)
    samples = eval_samples(wl, args.energy_inputs)
    ptq = ptq_variants(wl, baseline, samples)
    best_ptq = min(ptq, key=lambda r: r["energy_j"])
    fp32 = {"name": "dense fp32 baseline", "accuracy": metrics["baseline_accuracy"],
            "energy_j": metrics["baseline_energy_j"][TARGET]}
    ours = {"name": "wattless mnist1d-npu", "accuracy": metrics["accuracy"], "energy_j": metrics["energy_j"][TARGET]}
    rows = [fp32, *ptq, ours]
    result = {
        "target": TARGET, "energy_kind": "estimated", "rows": rows, "wall_s": wall_s,
        "accuracy_drop_points": 100 * (fp32["accuracy"] - ours["accuracy"]),
        "ratio_vs_fp32": fp32["energy_j"] / ours["energy_j"],
        "ratio_vs_best_ptq": best_ptq["energy_j"] / ours["energy_j"],
        "goals": {"accuracy_drop_points": "<= 1", "ratio_vs_fp32": ">= 50", "ratio_vs_best_ptq": ">= 3"},
        "techniques": metrics["techniques"], "objective": metrics["objective"],
    }
    table = Table(title=f"MNIST-1D on {TARGET}: joules per inference, estimated")
    for col in ("model", "accuracy", "energy", "fp32 / this"):
        table.add_column(col, justify="right")
    for r in rows:
        table.add_row(r["name"], f"{100 * r['accuracy']:.1f}%", f"{r['energy_j'] * 1e9:.3g} nJ",
                      f"{fp32['energy_j'] / r['energy_j']:.1f}x")
    console = Console()
    console.print(table)
    console.print(f"accuracy drop {result['accuracy_drop_points']:.2f} points (goal <= 1); "
                  f"{result['ratio_vs_fp32']:.1f}x below fp32 (goal >= 50); "
                  f"{result['ratio_vs_best_ptq']:.1f}x below the best post-training int8 (goal >= 3); "
                  + (f"optimize took {wall_s:.0f} s" if wall_s else f"(reported from {args.run})"))
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps(result, indent=2))
    console.print(f"written to {args.json}")


if __name__ == "__main__":
    main()
