"""The wattless export of all-MiniLM-L6-v2 (int8 QAT with distillation, `recipes/minilm-fast.toml`: per-token
symmetric activations) timed beside PyTorch and ONNX Runtime on 64-token inputs.

Goals (issues 5 and 15): at batch 1 the export runs faster than ONNX Runtime's own `quantize_dynamic` on every
kind of CPU (the JSON's `machine.cpu_features` and `machine.u8s8_exact` say which kind this one is) and at least
3 times faster than ONNX Runtime fp32, with mean sentence cosine >= 0.99 and nearest-neighbour agreement >= 0.95
against fp32 (256 test sentences); estimated energy on mobile-npu and server-cpu beside every row. Every runtime
runs in its own process on the same token ids (no padding) and thread count. Where the time goes, per operator
type: bench/profile_minilm.py.

    python bench/export_minilm.py [--run bench/out/minilm-fast] [--json bench/out/export_minilm.json]
                                  [--batches 1] [--runtimes ort-fp32 ort-dynamic-int8 wattless] [--rounds 3]

--run is a finished `wattless optimize -w minilm` run; `python bench/optimize_minilm.py --recipe
recipes/minilm-fast.toml --out bench/out/minilm-fast` writes one at the default place.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from rich.console import Console

from wattless.bench import AS_WRITTEN, RUNTIMES, bench, print_table


def verdict(result: dict) -> tuple[bool, str]:
    row = {(r["runtime"], r["batch"]): r for r in result["rows"]}
    mine, fp32, dyn = row[("wattless", 1)], row[("ort-fp32", 1)], row[("ort-dynamic-int8", 1)]
    speedup = fp32["latency_ms_p50"] / mine["latency_ms_p50"]
    beats_dynamic = mine["latency_ms_p50"] < dyn["latency_ms_p50"]
    cos, agree = mine["metrics"]["cosine"], mine["metrics"]["nn_agreement"]
    ok = speedup >= 3 and beats_dynamic and cos >= 0.99 and agree >= 0.95
    kind = "u8 x s8 exact (VNNI/AMX class)" if result["machine"].get("u8s8_exact") else "u8 x s8 saturates (AVX2 without VNNI)"
    return ok, (f"{kind}; batch 1, {result['seq_len']} tokens: {mine['latency_ms_p50']:.2f} ms, {speedup:.2f}x ONNX Runtime "
                f"fp32 ({fp32['latency_ms_p50']:.2f} ms; goal >= 3x), {dyn['latency_ms_p50'] / mine['latency_ms_p50']:.2f}x "
                f"ONNX Runtime quantize_dynamic ({dyn['latency_ms_p50']:.2f} ms; goal > 1x); cosine {cos:.4f} "
                f"(goal >= 0.99), agreement {agree:.3f} (goal >= 0.95): {'met' if ok else 'NOT met'}")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--run", default="bench/out/minilm-fast")
    parser.add_argument("--export", default=None, help="an existing export of the run (skips exporting again)")
    parser.add_argument("--json", default="bench/out/export_minilm.json")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=200)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 32], help="the goals are at batch 1")
    parser.add_argument("--runtimes", nargs="+", default=[*RUNTIMES, AS_WRITTEN],
                        help="ort-fp32, ort-dynamic-int8 and wattless at least (the verdict reads them)")
    args = parser.parse_args()
    console = Console(width=max(Console().width, 150))
    if not (Path(args.run) / "model.safetensors").is_file():
        sys.exit(f"no finished minilm run at {args.run}: run `python bench/optimize_minilm.py` (or "
                 "`wattless optimize -w minilm -r recipes/minilm-fast.toml -o DIR`) first, or pass --run DIR")
    result = bench("minilm", run=args.run, export=args.export, batches=tuple(args.batches), threads=args.threads,
                   repeats=args.repeats, warmup=20, seq_len=64, energy_samples=4, rounds=args.rounds, max_seconds=30,
                   runtimes=tuple(args.runtimes),
                   json_path=args.json,
                   log=lambda msg: console.print(f"[dim]{msg}[/]"))
    print_table(result, console, ("mobile-npu", "server-cpu"))
    ok, text = verdict(result)
    console.print(("[green]" if ok else "[bold red]") + text)
    console.print(f"written to {args.json}")


if __name__ == "__main__":
    main()
