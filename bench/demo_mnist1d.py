"""`wattless demo` end to end, timed: MNIST-1D on mobile-npu, baselines and the Pareto search.

Goal (issue 4): within 10 minutes on a 2-core machine, a frontier point within 1 accuracy point of the dense
fp32 baseline whose estimated energy on mobile-npu is >= 50x lower than fp32 and >= 3x lower than the best
post-training quantization baseline. Energies are estimates on the target, never measurements. The wall
time depends on what else the machine runs, so the JSON records the CPU time and the load average too.

    python bench/demo_mnist1d.py [--out bench/out/demo-mnist1d] [--json bench/out/demo_mnist1d.json]
                                 [--fresh-cache] [--keep]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import tempfile
import time
from pathlib import Path

from rich.console import Console

from wattless.demo import DEMO_TARGET, demo, summary_line, summary_table


def _cpu_s() -> float:
    own, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + kids.ru_utime + kids.ru_stime


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", default="bench/out/demo-mnist1d")
    parser.add_argument("--json", default="bench/out/demo_mnist1d.json")
    parser.add_argument("--fresh-cache", action="store_true", help="train the fp32 baseline too (empty cache)")
    parser.add_argument("--keep", action="store_true", help="continue the study in --out instead of starting afresh")
    args = parser.parse_args()
    if not args.keep:
        shutil.rmtree(args.out, ignore_errors=True)
    if args.fresh_cache:
        os.environ["WATTLESS_CACHE"] = tempfile.mkdtemp(prefix="wattless-cache-")
    load_before, start, cpu = os.getloadavg(), time.perf_counter(), _cpu_s()
    result = demo(args.out)
    wall_s, cpu_s = time.perf_counter() - start, _cpu_s() - cpu
    console = Console(width=140)
    console.print(summary_table(result))
    console.print(summary_line(result), highlight=False)
    s, t = result.summary, DEMO_TARGET
    chosen = next((p for p in result.frontier if p["trial"] == s.get("chosen_trial")), None)
    goals = {"accuracy_drop_points": "<= 1", "ratio_vs_fp32": ">= 50", "ratio_vs_best_ptq": ">= 3", "wall_s": "<= 600"}
    met = {"accuracy_drop_points": chosen is not None, "ratio_vs_fp32": s.get("ratio_vs_fp32", 0) >= 50,
           "ratio_vs_best_ptq": s.get("ratio_vs_best_ptq", 0) >= 3, "wall_s": wall_s <= 600}
    console.print(f"demo wall time {wall_s:.0f} s (goal <= 600 s on 2 cores), CPU time {cpu_s:.0f} s on "
                  f"{os.cpu_count()} cores, load average {load_before[0]:.1f} before / {os.getloadavg()[0]:.1f} after; "
                  f"trials {result.trial_counts}; goals met: {met}", highlight=False)
    data = {
        "workload": "mnist1d", "target": t, "energy_kind": "estimated", "wall_s": wall_s, "cpu_s": cpu_s,
        "cores": os.cpu_count(), "load_average": {"before": load_before[0], "after": os.getloadavg()[0]},
        "trial_counts": result.trial_counts, "summary": s, "goals": goals, "met": met,
        "baselines": {n: {"metric": b.get("metric"), "energy_j": b.get("energy_j", {}).get(t)} for n, b in result.baselines.items()},
        "chosen": None if chosen is None else {"trial": chosen["trial"], "metric": chosen["metric"],
                                               "energy_j": chosen["energy_j"][t], "recipe": chosen["recipe"]},
        "frontier": [{"trial": p["trial"], "metric": p["metric"], "energy_j": p["energy_j"][t]} for p in result.frontier],
        "report": str(result.report_path),
    }
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps(data, indent=2))
    console.print(f"written to {args.json}; report {result.report_path}", highlight=False)


if __name__ == "__main__":
    main()
