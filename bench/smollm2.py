"""SmolLM2-135M-Instruct made lean with `recipes/smollm2-int4.toml`, exported with its KV cache, and timed
beside PyTorch fp32 (transformers generate), ONNX Runtime fp32, ONNX Runtime's own 4-bit quantizer
(MatMulNBits, default algorithm, same bits and group size) and llama.cpp on the package's Q4_1 GGUF.

Goals (issue 14): perplexity within 5 % of the float reference and below ONNX Runtime's 4-bit quantizer's;
decode at batch 1 on 2 cores at least 2x ONNX Runtime fp32 and at least llama.cpp's speed at equal or better
perplexity; estimated joules per decode token on mobile-npu and datacenter-gpu at least 4x below the float
reference. Every runtime runs in its own process, round-robin, the best round kept.

    python bench/smollm2.py [--export bench/out/smollm2-int4.onnx] [--json bench/out/smollm2.json] [--rounds 2]

Without --export (or when the file is missing) the recipe is applied to the reference (GPTQ on the
calibration windows) and exported to bench/out/smollm2-int4.onnx, parity checked. llama.cpp needs
llama-cpp-python (README: `CMAKE_ARGS="-DGGML_NATIVE=ON" pip install llama-cpp-python`); without it that row is
skipped with a note.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from rich.console import Console

from wattless.bench.lm import LM_RUNTIMES, bench_lm, print_lm_table


def build_export(out: Path, recipe: str, accuracy_level: int, console: Console) -> None:
    from wattless.export.lm import export_decoder
    from wattless.optimize import apply_context
    from wattless.recipe import apply_recipe, load_recipe
    from wattless.workloads import get_workload

    wl = get_workload("smollm2")
    model = wl.build_model()
    t0 = time.perf_counter()
    apply_recipe(model, load_recipe(recipe), apply_context(wl))
    console.print(f"recipe {recipe} applied in {time.perf_counter() - t0:.0f} s")
    report = export_decoder(model, out, windows=wl.test.inputs, tokenizer="smollm2", workload="smollm2",
                            accuracy_level=accuracy_level)
    p = report.parity
    console.print(f"exported {out} ({report.size_bytes / 2**20:.1f} MB): perplexity {p['perplexity_onnx']:.4f} (ONNX) vs "
                  f"{p['perplexity_torch']:.4f} (PyTorch), top-1 agreement {p['top1_agreement']:.4f}, greedy "
                  f"{[g['equal'] for g in p['greedy']]}")


def verdict(result: dict) -> list[str]:
    rows = {r["runtime"]: r for r in result["rows"]}
    mine, ref = rows.get("wattless"), rows.get("torch-fp32")
    if mine is None or ref is None:
        return ["no wattless or torch-fp32 row: no verdict"]
    lines = []
    ppl_ratio = mine["perplexity"] / ref["perplexity"]
    lines.append(f"perplexity {mine['perplexity']:.4f} vs float {ref['perplexity']:.4f} ({ppl_ratio - 1:+.2%}; goal within 5 %): "
                 f"{'met' if ppl_ratio <= 1.05 else 'NOT met'}")
    if "ort-int4" in rows:
        o = rows["ort-int4"]
        lines.append(f"ONNX Runtime int4 perplexity {o['perplexity']:.4f}: wattless {'lower (met)' if mine['perplexity'] < o['perplexity'] else 'NOT lower'}")
    if "ort-fp32" in rows:
        s = mine["decode_speedup_vs_ort_fp32"]
        lines.append(f"decode {mine['decode_tokens_per_s']:.1f} tok/s = {s:.2f}x ONNX Runtime fp32 "
                     f"({rows['ort-fp32']['decode_tokens_per_s']:.1f}; goal >= 2x): {'met' if s >= 2 else 'NOT met'}")
    if "llama-cpp" in rows:
        ll = rows["llama-cpp"]
        s = mine["decode_speedup_vs_llama_cpp"]
        lines.append(f"decode {s:.2f}x llama.cpp ({ll['decode_tokens_per_s']:.1f} tok/s, perplexity {ll['perplexity']:.4f}); "
                     f"goal >= 1x at equal or better perplexity: "
                     f"{'met' if s >= 1 and mine['perplexity'] <= ll['perplexity'] * 1.001 else 'NOT met'}")
    for t in ("mobile-npu", "datacenter-gpu"):
        r = mine.get("energy_ratio_vs_fp32", {}).get(t)
        if r is not None:
            lines.append(f"estimated J/token on {t}: {r:.2f}x below float (goal >= 4x): {'met' if r >= 4 else 'NOT met'}")
    return lines


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--export", default="bench/out/smollm2-int4.onnx")
    parser.add_argument("--recipe", default="recipes/smollm2-int4.toml")
    parser.add_argument("--json", default="bench/out/smollm2.json")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--accuracy-level", type=int, default=4)
    parser.add_argument("--runtimes", default=",".join(LM_RUNTIMES))
    parser.add_argument("--no-energy", action="store_true")
    parser.add_argument("--sleep", action="store_true",
                        help="idle threads sleep instead of spinning, every runtime (faster on cores shared with other work)")
    parser.add_argument("--spin", action="store_true", help="idle threads spin, every runtime (the default)")
    parser.add_argument("--metric-windows", type=int, default=None, help="test windows scored (default: all 16)")
    args = parser.parse_args()
    console = Console()
    out = Path(args.export)
    if not out.is_file():
        build_export(out, args.recipe, args.accuracy_level, console)
    result = bench_lm("smollm2", export=out, runtimes=tuple(args.runtimes.split(",")), threads=args.threads,
                      repeats=args.repeats, rounds=args.rounds, accuracy_level=args.accuracy_level,
                      energy=not args.no_energy, json_path=args.json, metric_windows=args.metric_windows, spin=not args.sleep,
                      log=lambda m: console.print(f"[dim]{m}[/]"))
    print_lm_table(result, console)
    for line in verdict(result):
        console.print(line, highlight=False)
    console.print(f"written to {args.json}")


if __name__ == "__main__":
    sys.exit(main())
