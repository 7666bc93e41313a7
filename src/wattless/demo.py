"""`wattless demo`: the main job on the embedded default, sized to finish within 10 minutes on 2 cores.

    result = demo("wattless-demo")
    result.summary["ratio_vs_fp32"], result.report_path

MNIST-1D on the `mobile-npu` target: train the dense fp32 baseline (cached afterwards), run the baselines a
user would reach for instead (PyTorch and ONNX Runtime post-training quantization), and search recipes
for the accuracy-versus-energy frontier, seeded with the hand-tuned `recipes/mnist1d-npu.toml`. Every
figure is an estimate on the target, never a measurement. Ctrl-C leaves the study resumable (the same
command continues) and a partial report.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

from rich.markup import escape
from rich.table import Table
from rich.text import Text

from wattless.baselines import describe_ptq
from wattless.search import PTQ_BASELINES, SearchResult, search
from wattless.units import format_joules, format_kib

__all__ = ["demo", "summary_table", "DEMO_WORKLOAD", "DEMO_TARGET", "DEMO_SECONDS", "DEMO_TRIALS"]

DEMO_WORKLOAD = "mnist1d"
DEMO_TARGET = "mobile-npu"
DEMO_SECONDS = 600  # the whole job, baseline training included, on a 2-core machine
DEMO_TRIALS = 16  # what two workers finish in that time; the deadline stops the search sooner if needed
_RESERVE_S = 30  # the last report and the summary, after the search


def demo(out: str | Path = "wattless-demo", *, seconds: float = DEMO_SECONDS, trials: int = DEMO_TRIALS,
         workers: int | None = None, progress: bool = True, console=None) -> SearchResult:
    """Run the demo into ``out``: the baselines and a search of ``trials`` trials or ``seconds`` in all,
    whichever ends first, with ``workers`` processes (default: one per core, at most 4). Run again on the
    same folder, it continues the study."""
    started = time.monotonic()
    workers = workers or max(1, min(os.cpu_count() or 1, 4))
    minutes = max(seconds - _RESERVE_S - (time.monotonic() - started), 30) / 60
    return search(DEMO_WORKLOAD, DEMO_TARGET, out=out, trials=trials, minutes=minutes, workers=workers,
                  progress=progress, console=console)


def summary_table(result: SearchResult) -> Table:
    """fp32, the post-training quantization baselines and the chosen frontier point side by side."""
    t, s = result.target, result.summary
    table = Table(title=escape(f"{result.study_name}: {result.metric_name} and energy per inference, estimated on {t}"))
    for col in ("model", result.metric_name, f"energy on {t}", "fp32 / this", "size"):
        table.add_column(Text(col), justify="right")
    fp32 = result.baselines.get("fp32")
    base_j = fp32["energy_j"][t] if fp32 else None
    rows = [(name, b) for name, b in result.baselines.items() if name == "fp32" or name in PTQ_BASELINES]
    chosen = next((p for p in result.frontier if p["trial"] == s.get("chosen_trial")), None)
    if chosen is not None:
        rows.append((f"wattless (trial {chosen['trial']}{', seed ' + chosen['seed'] if chosen.get('seed') else ''})", chosen))
    for name, row in rows:
        if row.get("metric") is None:
            table.add_row(Text(name), "-", "-", "-", Text(f"not run: {row.get('error', '')}"))
            continue
        e = row["energy_j"][t]
        name += " (best PTQ)" if name == s.get("best_ptq") else ""
        table.add_row(Text(name), f"{100 * row['metric']:.1f}%" if result.metric_name == "accuracy" else f"{row['metric']:.4f}",
                      format_joules(e), f"{base_j / e:.1f}x" if base_j else "-", format_kib(row["size_bytes"]))
    return table


def summary_line(result: SearchResult) -> str:
    s = result.summary
    if s.get("chosen_trial") is None:
        return (f"no frontier point within {100 * s['within']:.0f} point of fp32 yet "
                f"({result.trial_counts.get('complete', 0)} trials complete); run again to continue the search")
    return (f"best point within {100 * s['within']:.0f} point of fp32: trial {s['chosen_trial']}, "
            f"{s['metric_drop_points']:.2f} points below fp32, {s['ratio_vs_fp32']:.1f}x lower estimated energy than "
            f"fp32; {describe_ptq(s, result.metric_name)}")
