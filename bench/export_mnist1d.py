"""`recipes/mnist1d-npu.toml` exported (`wattless export`) and timed beside PyTorch and ONNX Runtime.

Goal (issue 5): at batch 1 the wattless export runs at least 5 times faster than PyTorch fp32 eager, within
1 accuracy point of fp32. Every runtime runs in its own process on the same inputs and thread count; the
table also shows batch 32, peak memory, file size, accuracy and estimated joules per inference.

    python bench/export_mnist1d.py [--run bench/out/mnist1d-npu] [--json bench/out/export_mnist1d.json]

Without a finished run at --run, the recipe is trained there first (a few minutes on 2 cores).
"""

from __future__ import annotations

import argparse
from pathlib import Path

from rich.console import Console

from wattless.bench import AS_WRITTEN, RUNTIMES, bench, print_table
from wattless.optimize import optimize

RECIPE = Path(__file__).parents[1] / "recipes" / "mnist1d-npu.toml"


def verdict(result: dict) -> tuple[bool, str]:
    row = {(r["runtime"], r["batch"]): r for r in result["rows"]}
    mine, torch_fp32 = row[("wattless", 1)], row[("torch-fp32", 1)]
    speedup = torch_fp32["latency_ms_p50"] / mine["latency_ms_p50"]
    drop = torch_fp32["metric"] - mine["metric"]
    ok = speedup >= 5 and drop <= 0.01
    return ok, (f"batch 1: {speedup:.2f}x PyTorch fp32 eager (goal >= 5x); accuracy {mine['metric']:.4f} vs fp32 "
                f"{torch_fp32['metric']:.4f} ({100 * drop:+.1f} points below; goal <= 1): "
                f"{'met' if ok else 'NOT met'}")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--run", default="bench/out/mnist1d-npu")
    parser.add_argument("--json", default="bench/out/export_mnist1d.json")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=1000)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    console = Console(width=max(Console().width, 150))
    run = Path(args.run)
    if not (run / "model.safetensors").is_file():
        console.print(f"no finished run at {run}: training {RECIPE.name} there")
        optimize("mnist1d", RECIPE, run, progress=True, baselines=False)
    result = bench("mnist1d", run=run, threads=args.threads, repeats=args.repeats, warmup=100, rounds=args.rounds,
                   runtimes=(*RUNTIMES, AS_WRITTEN),
                   json_path=args.json,
                   log=lambda msg: console.print(f"[dim]{msg}[/]"))
    print_table(result, console)
    ok, text = verdict(result)
    console.print(("[green]" if ok else "[bold red]") + text)
    console.print(f"written to {args.json}")


if __name__ == "__main__":
    main()
