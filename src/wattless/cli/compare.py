"""`wattless compare RUN_DIR`: one optimized model on a digital NPU, a PCM analog chip and Loihi, through
wattless.compare: a table, compare.json and compare.png."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.markup import escape
from rich.table import Table
from rich.text import Text

from wattless.cli.console import console, print_json
from wattless.units import format_joules

__all__ = ["register", "compare_command", "compare_table"]


def compare_command(
    run_dir: Annotated[Path, typer.Argument(help="a `wattless optimize` run directory")],
    plot: Annotated[Optional[Path], typer.Option("--plot", help="PNG to write (default RUN_DIR/compare.png)")] = None,
    seeds: Annotated[int, typer.Option("--seeds", min=1, max=1000, help="noise seeds, where the run has no analog section")] = 10,
    as_json: Annotated[bool, typer.Option("--json", help="print the comparison as JSON on stdout")] = False,
) -> None:
    """The same model on mobile-npu, analog-pcm (1 day after programming) and loihi (best T): accuracy and
    estimated joules per inference, in one table and one plot."""
    from wattless.compare import compare, plot_compare
    from wattless.errors import TrainingError
    from wattless.files import atomic_write, check_output_file

    plot = plot or run_dir / "compare.png"
    check_output_file(plot, "plot file", TrainingError)
    check_output_file(run_dir / "compare.json", "comparison file", TrainingError)
    result = compare(run_dir, seeds=seeds)
    atomic_write(run_dir / "compare.json", json.dumps(result, indent=2, allow_nan=False))
    plot_compare(result, plot)
    if as_json:
        print_json(result)
        return
    console.print(compare_table(result))
    console.print(Text(f"written: {run_dir / 'compare.json'}, {plot}"))


def compare_table(result: dict) -> Table:
    table = Table(title=f"{escape(str(result['workload']))} with {escape(result['recipe'])}: one model, three kinds "
                        "of hardware (energy estimated per inference on each target)")
    for col in ("hardware", "target", result["metric_name"], "energy per inference", "vs digital", "what"):
        table.add_column(col, justify="left" if col == "what" else "right")
    digital = result["rows"][0]["energy_j"]
    for row in result["rows"]:
        acc = f"{row['accuracy']:.4f}" + (f" ± {row['accuracy_std']:.4f}" if row.get("accuracy_std") is not None else "")
        ratio = digital / row["energy_j"] if row["energy_j"] else float("nan")
        table.add_row(row["hardware"], row["target"], acc, format_joules(row["energy_j"]),
                      f"{ratio:.2f}x lower" if ratio >= 1 else f"{1 / ratio:.2f}x higher",
                      Text(f"{row['detail']}; {row['how']}"))
    return table


def register(app: typer.Typer) -> None:
    """Add `compare` to the wattless command line."""
    app.command("compare")(compare_command)
