"""Beyond von Neumann on MNIST-1D (issue 17): `recipes/mnist1d-analog.toml` on a PCM chip over time, with and
without hardware-aware training, and `recipes/mnist1d-spiking.toml` on Loihi over T, beside the ANN as int8
on mobile-npu; then `wattless compare` of each run (one model on the three kinds of hardware).

Goals: analog, accuracy one day after programming within 1 point of the digital fp32 baseline (mean of 10
noise seeds) with hardware-aware training; spiking, the converted network within 1 point of its ANN at some
T, its energy on loihi from the counted spikes. Accuracy is measured by simulation (PCM statistical model;
spikes); every joule is estimated on the named target, never measured.

    python bench/beyond_mnist1d.py [--out bench/out/beyond] [--json bench/out/beyond_mnist1d.json] [--reuse]
"""

from __future__ import annotations

import argparse
import json
import shutil
import time
from pathlib import Path

from rich.console import Console

from wattless.cli.compare import compare_table
from wattless.cli.train import analog_table, spiking_table
from wattless.compare import compare, plot_compare
from wattless.optimize import optimize

RECIPES = Path(__file__).parents[1] / "recipes"


def run(name: str, out: Path, reuse: bool, energy_inputs: int) -> tuple[dict, float | None]:
    folder = out / name
    if reuse and (folder / "metrics.json").is_file():
        return json.loads((folder / "metrics.json").read_text()), None
    shutil.rmtree(folder, ignore_errors=True)
    start = time.perf_counter()
    metrics = optimize("mnist1d", RECIPES / f"{name}.toml", folder, progress=False, baselines=False,
                       energy_inputs=energy_inputs)
    return metrics, time.perf_counter() - start


def goals(analog_m: dict, spiking_m: dict) -> dict:
    base = analog_m["baseline_accuracy"]
    day = analog_m["analog"]["accuracy"]["86400"]["mean"]
    s = spiking_m["spiking"]
    best = max(s["steps"].items(), key=lambda kv: kv[1]["accuracy"])
    return {
        "analog_one_day_mean": day, "digital_fp32_baseline": base, "analog_gap_points": (base - day) * 100,
        "analog_goal_met": day >= base - 0.01,
        "analog_one_day_without_hwa": (analog_m["analog"].get("accuracy_without_hwa") or {}).get("86400", {}).get("mean"),
        "spiking_ann": s["ann_accuracy"], "spiking_best_T": int(best[0]), "spiking_best_accuracy": best[1]["accuracy"],
        "spiking_goal_met": best[1]["accuracy"] >= s["ann_accuracy"] - 0.01,
        "spiking_best_T_energy_j_loihi": best[1]["energy_j"]["loihi"],
        "ann_energy_j_mobile_npu_int8": s["ann_energy_j"]["mobile-npu"],
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", default="bench/out/beyond")
    parser.add_argument("--json", default="bench/out/beyond_mnist1d.json")
    parser.add_argument("--energy-inputs", type=int, default=64)
    parser.add_argument("--reuse", action="store_true", help="report finished runs in --out instead of training")
    args = parser.parse_args()
    out = Path(args.out)
    console = Console()
    analog_m, analog_s = run("mnist1d-analog", out, args.reuse, args.energy_inputs)
    spiking_m, spiking_s = run("mnist1d-spiking", out, args.reuse, args.energy_inputs)
    console.print(analog_table(analog_m))
    console.print(spiking_table(spiking_m))
    comparisons = {}
    for name in ("mnist1d-analog", "mnist1d-spiking"):
        result = compare(out / name)
        plot_compare(result, out / name / "compare.png")
        console.print(compare_table(result))
        comparisons[name] = result
    summary = goals(analog_m, spiking_m)
    console.print(summary)
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps({
        "goals": summary, "analog": analog_m["analog"], "spiking": spiking_m["spiking"],
        "baseline_accuracy": analog_m["baseline_accuracy"], "compare": comparisons,
        "wall_s": {"analog": analog_s, "spiking": spiking_s}, "energy_kind": "estimated",
    }, indent=2))
    console.print(f"written {args.json}")


if __name__ == "__main__":
    main()
