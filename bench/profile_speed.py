"""How long profiling takes: BERT-base at sequence 128 (goal: under 5 s on a 2-core machine).

Side by side in one process: torch's own FlopCounterMode (the tool a user would reach for, which counts
FLOPs only) and wattless (counts, sparsity, bytes, events, and estimates on every built-in target).
Also the whole command line, `wattless profile bert-base --json`, in a fresh process (imports included).

    python bench/profile_speed.py [--json bench/out/profile_speed.json]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch
from rich.console import Console
from rich.table import Table
from torch.utils.flop_counter import FlopCounterMode

from wattless.energy import builtin_targets, count, estimate
from wattless.models import bert_base, resnet50


def timed(fn, repeats: int = 3) -> tuple[float, object]:
    times, out = [], None
    for _ in range(repeats):
        t0 = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times), out


def torch_flops(model, inputs) -> float:
    counter = FlopCounterMode(display=False)
    with torch.no_grad(), counter:
        model(**inputs) if isinstance(inputs, dict) else model(inputs)
    return counter.get_total_flops() / 2


def wattless_profile(model, inputs):
    counts = count(model, inputs)
    return counts, {name: estimate(counts, t) for name, t in builtin_targets().items()}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--json", default="bench/out/profile_speed.json")
    args = parser.parse_args()
    rows = []
    for label, factory in [("bert-base seq 128", bert_base), ("resnet50 224", resnet50)]:
        build_s, (model, inputs) = timed(factory, repeats=1)
        model.eval()
        torch_s, macs_torch = timed(lambda: torch_flops(model, inputs))
        ours_s, (counts, ests) = timed(lambda: wattless_profile(model, inputs))
        rows.append({
            "model": label, "build_s": build_s, "torch_flopcounter_s": torch_s, "wattless_profile_s": ours_s,
            "macs_torch": macs_torch, "macs_wattless": counts.total("macs")[0], "targets": len(ests),
        })
    t0 = time.perf_counter()
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    proc = subprocess.run([sys.executable, "-m", "wattless.cli", "profile", "bert-base", "--json"],
                          capture_output=True, text=True, check=True)
    cli_s = time.perf_counter() - t0
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cli_cpu_s = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    json.loads(proc.stdout)
    load = os.getloadavg()[0]

    table = Table(title=f"profiling speed ({os.cpu_count()} cores, torch threads {torch.get_num_threads()})")
    for col in ("model", "build model", "torch FlopCounterMode", "wattless count+estimate (7 targets)",
                "MACs (torch)", "MACs (wattless)"):
        table.add_column(col, justify="right")
    for r in rows:
        table.add_row(r["model"], f"{r['build_s']:.2f} s", f"{r['torch_flopcounter_s']:.2f} s",
                      f"{r['wattless_profile_s']:.2f} s", f"{r['macs_torch'] / 1e9:.3f} G",
                      f"{r['macs_wattless'] / 1e9:.3f} G")
    console = Console()
    console.print(table)
    goal = 5.0
    bert_s = rows[0]["wattless_profile_s"]
    console.print(f"profiling BERT-base at sequence 128 (count every op, price on 7 targets): {bert_s:.2f} s "
                  f"(goal < {goal:.0f} s: {'met' if bert_s < goal else 'NOT met'})")
    console.print(f"the whole command `wattless profile bert-base --json` in a fresh process: {cli_s:.2f} s wall, "
                  f"{cli_cpu_s:.2f} s CPU, most of it importing torch and transformers and building the 110 M "
                  f"parameter model (load average {load:.1f} on {os.cpu_count()} cores)")
    out = Path(args.json)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"rows": rows, "cli_bert_base_s": cli_s, "cli_bert_base_cpu_s": cli_cpu_s,
                               "load_average": load, "goal_s": goal, "cores": os.cpu_count()}, indent=2))
    console.print(f"written to {out}")


if __name__ == "__main__":
    main()
