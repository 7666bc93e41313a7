"""A user's own model, exported through torch.onnx: the residual SE-CNN (SiLU, BatchNorm1d, unsqueeze, skips;
bench/secnn.py) with int8 QAT on MNIST-1D, timed beside PyTorch and ONNX Runtime fp32 at batch 1.

Goal (issue 12): the integer export is no slower than ONNX Runtime fp32 at batch 1 (it ran at 0.33x through
the old tracer). Every runtime runs in its own process on the same inputs and thread count.

    python bench/export_secnn.py [--run bench/out/secnn-int8] [--json bench/out/export_secnn.json]

Without a finished run at --run, it first trains one (`wattless optimize -w bench/secnn.py:workload -r
recipes/secnn-int8.toml`, a few minutes on 2 cores).
"""

from __future__ import annotations

import argparse
from pathlib import Path

from rich.console import Console

from wattless.bench import RUNTIMES, bench, print_table

SPEC = "bench/secnn.py:workload"


def verdict(result: dict) -> tuple[bool, str]:
    row = {(r["runtime"], r["batch"]): r for r in result["rows"]}
    mine, fp32 = row[("wattless", 1)], row[("ort-fp32", 1)]
    ratio = fp32["latency_ms_p50"] / mine["latency_ms_p50"]
    acc, ref = mine["metrics"].get("accuracy"), fp32["metrics"].get("accuracy")
    ok = ratio >= 1.0
    return ok, (f"batch 1: wattless {mine['latency_ms_p50']:.4f} ms, ONNX Runtime fp32 {fp32['latency_ms_p50']:.4f} ms: "
                f"{ratio:.2f}x (goal >= 1x); accuracy {acc} vs fp32 {ref}: {'met' if ok else 'NOT met'}")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--run", default="bench/out/secnn-int8")
    parser.add_argument("--json", default="bench/out/export_secnn.json")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=500)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    console = Console(width=max(Console().width, 150))
    if not (Path(args.run) / "model.safetensors").is_file():
        from wattless.optimize import optimize

        console.print(f"[dim]training {args.run} (recipes/secnn-int8.toml)[/]")
        optimize(SPEC, "recipes/secnn-int8.toml", args.run, progress=False, baselines=False)
    result = bench(SPEC, run=args.run, batches=(1, 32), threads=args.threads, repeats=args.repeats, warmup=50,
                   rounds=args.rounds, runtimes=RUNTIMES, json_path=args.json,
                   log=lambda msg: console.print(f"[dim]{msg}[/]"))
    print_table(result, console)
    ok, text = verdict(result)
    console.print(("[green]" if ok else "[bold red]") + text)
    console.print(f"written to {args.json}")


if __name__ == "__main__":
    main()
