"""`wattless optimize`: apply a recipe to a workload through wattless.optimize, print what it saved."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.markup import escape
from rich.table import Table
from rich.text import Text

from wattless.cli.console import console, print_json
from wattless.units import format_joules

__all__ = ["register", "optimize", "analog_table", "spiking_table"]


def optimize(
    workload: Annotated[str, typer.Option("--workload", "-w", help="mnist1d, digits, minilm, or path/to/file.py:factory")],
    recipe: Annotated[Path, typer.Option("--recipe", "-r", help="recipe TOML file")],
    out: Annotated[Path, typer.Option("--out", "-o", help="run directory (resumed if it holds this run)")],
    target: Annotated[Optional[str], typer.Option("--target", "-t", help="override the recipe's target")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="print metrics.json on stdout")] = False,
    no_progress: Annotated[bool, typer.Option("--no-progress", help="no progress bars")] = False,
) -> None:
    """Train the baseline if none is cached, apply a recipe under the energy objective, write the run."""
    from wattless.optimize import optimize as run_optimize

    metrics = run_optimize(workload, recipe, out, target=target, progress=not no_progress and not as_json)
    if as_json:
        print_json(metrics)
        return
    if metrics.get("already_done"):
        console.print(Text(f"{out} holds this run, finished: left as it is (remove it to train again)"))
    console.print(_savings_table(metrics))
    if metrics.get("analog"):
        console.print(analog_table(metrics))
    if metrics.get("spiking"):
        console.print(spiking_table(metrics))
    console.print(Text(f"written to {out} (model.safetensors, recipe.toml, metrics.json)"))


def _savings_table(metrics: dict) -> Table:
    """The fp32 baseline, the best post-training int8 and this run, on the recipe's target."""
    t = metrics["target"]
    table = Table(title=f"{escape(metrics['workload'])} with {escape(metrics['recipe'])}: energy per inference, "
                        f"estimated on {escape(t)}")
    for col in ("model", metrics["metric_name"], f"energy on {t}", "vs fp32"):
        table.add_column(col, justify="right")
    base = metrics["baseline_energy_j"][t]
    table.add_row("dense fp32 baseline", f"{metrics['baseline_accuracy']:.4f}", format_joules(base), "1x")
    p = metrics.get("ptq_int8") or {}
    if p.get("accuracy") is not None:
        within = "" if p.get("within_tolerance", True) else ", none within 1 point: the most accurate"
        table.add_row(f"post-training int8 ({p.get('name', 'best')}{within})", f"{p['accuracy']:.4f}",
                      format_joules(p["energy_j"][t]), f"{base / p['energy_j'][t]:.1f}x lower")
    table.add_row("wattless (this run)", f"{metrics['accuracy']:.4f}", format_joules(metrics["energy_j"][t]),
                  f"{metrics['energy_ratio'][t]:.1f}x lower")
    return table


_TIME_NAMES = {"1": "1 s", "3600": "1 hour", "86400": "1 day", "2592000": "1 month", "31536000": "1 year"}


def analog_table(metrics: dict) -> Table:
    """Accuracy against time after programming, with and without hardware-aware training."""
    a = metrics["analog"]
    table = Table(title=f"{metrics['metric_name']} on {escape(a['target'])} after programming (simulated: PCM noise "
                        f"and drift, {a['seeds']} seeds, mean ± std); digital fp32 baseline "
                        f"{metrics['baseline_accuracy']:.4f}; energy {format_joules(a['energy_j'][a['target']])} "
                        "per inference, estimated")
    without = a.get("accuracy_without_hwa")
    for col in ("time", "with hardware-aware training" if a["hwa"] else "this run (no HWA)",
                *(["without it"] if without else []), "vs digital fp32"):
        table.add_column(col, justify="right")
    for t, v in a["accuracy"].items():
        cells = [_TIME_NAMES.get(t, f"{t} s"), f"{v['mean']:.4f} ± {v['std']:.4f}"]
        if without:
            w = without.get(t)
            cells.append(f"{w['mean']:.4f} ± {w['std']:.4f}" if w else "")
        cells.append(f"{(v['mean'] - metrics['baseline_accuracy']) * 100:+.2f} points")
        table.add_row(*cells)
    return table


def spiking_table(metrics: dict) -> Table:
    """The converted network over T: accuracy, counted synaptic events and joules, beside the ANN."""
    s = metrics["spiking"]
    target = s["target"]
    (ann_target, ann_j), = s["ann_energy_j"].items()
    table = Table(title=f"spiking on {escape(target)} (simulated, spikes counted; energy estimated) beside the ANN "
                        f"({s['ann_accuracy']:.4f}, {format_joules(ann_j)} as int8 on {escape(ann_target)})")
    for col in ("T", metrics["metric_name"], "vs ANN", "synaptic events", f"energy on {target}",
                f"vs ANN on {ann_target}"):
        table.add_column(col, justify="right")
    for t, row in s["steps"].items():
        j = row["energy_j"][target]
        mark = " (best)" if t == s.get("best_steps") else ""
        table.add_row(f"{t}{mark}", f"{row['accuracy']:.4f}", f"{(row['accuracy'] - s['ann_accuracy']) * 100:+.2f}",
                      f"{row['synaptic_events']:.3g}", format_joules(j),
                      f"{ann_j / j:.2f}x lower" if j < ann_j else f"{j / ann_j:.1f}x higher")
    return table


def register(app: typer.Typer) -> None:
    """Add `optimize` to the wattless command line."""
    app.command()(optimize)
