"""`wattless export` and `wattless bench`: parse, call wattless.export / wattless.bench, print.

cli.py adds them with ``register(app)``. Errors the user can fix are WattlessError subclasses; the
command line's main() prints them in one line and exits with code 2.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table
from rich.text import Text

from wattless.errors import BenchError, ExportError

__all__ = ["export", "bench", "register", "main"]

_console = Console(width=None if sys.stdout.isatty() else 160)


def export(
    run_dir: Annotated[Path, typer.Argument(help="a `wattless optimize` run directory")],
    out: Annotated[Path, typer.Option("--out", "-o", help="the ONNX file to write, e.g. model.onnx")],
    workload: Annotated[Optional[str], typer.Option("--workload", "-w", help="the run's workload spec, for "
                                                    "user workloads (path/to/file.py:factory)")] = None,
    requantize: Annotated[Optional[bool], typer.Option("--requantize/--exact", help="force or forbid fused integer "
                                                       "requantization (default: kept if parity holds)")] = None,
    int8_kernel: Annotated[str, typer.Option("--int8-kernel", help="portable: exact on every CPU (u8 weights where "
                                             "u8 x s8 sums could saturate); vnni: s8 weights, exact only on CPUs "
                                             "with VNNI or AMX")] = "portable",
    as_json: Annotated[bool, typer.Option("--json", help="print the export report as one JSON object")] = False,
) -> None:
    """Export an optimized run to ONNX with integer kernels, checked against the PyTorch model."""
    from wattless._files import check_output_file
    from wattless.export import export_run
    from wattless.kernels import INT8_KERNELS

    if int8_kernel not in INT8_KERNELS:
        raise ExportError(f"--int8-kernel {int8_kernel!r}: choose one of {', '.join(INT8_KERNELS)}")
    if not run_dir.is_dir():
        raise ExportError(f"run directory {run_dir} does not exist; run `wattless optimize ... --out {run_dir}` first")
    check_output_file(out, "--out", ExportError)
    report = export_run(run_dir, out, workload=workload, requantize=requantize, int8_kernel=int8_kernel)
    if as_json:
        sys.stdout.write(json.dumps(report.to_json()) + "\n")
        return
    table = Table(title=escape(f"{report.workload} exported to {report.path} ({report.size_bytes / 1e6:.2f} MB, "
                               f"{report.kind})"))
    table.add_column("layer")
    table.add_column("runs on")
    for layer, kernel in report.layers.items():
        table.add_row(Text(layer), Text(kernel))
    _console.print(table)
    for group, units in report.removed.items():
        _console.print(Text(f"removed: {group} keeps {units['kept']} of {units['total']} units"), highlight=False)
    if report.exits:
        _console.print(Text(f"early exits after {', '.join(e['after'] for e in report.exits)} (ONNX If: later "
                            "blocks run only on the rows still going)"), highlight=False)
    for block, experts in report.routes.items():
        _console.print(Text(f"mixture of experts {block}: {experts} experts, each runs only on its tokens"),
                       highlight=False)
    if report.parity is not None:
        _console.print(f"[green]parity passed:[/] {escape(report.parity.describe())}", highlight=False)
    for note in report.notes:
        _console.print(f"[dim]note: {escape(note)}[/]", highlight=False)


def _batches(text: str) -> list[int]:
    try:
        return [int(b) for b in text.split(",") if b.strip()]
    except ValueError:
        raise BenchError(f"--batches takes comma-separated integers such as 1,32; got {text!r}") from None


def bench(
    workload: Annotated[str, typer.Option("--workload", "-w", help="mnist1d, digits, minilm, or path/to/file.py:factory")],
    run: Annotated[Optional[Path], typer.Option("--run", "-r", help="run directory to export and bench")] = None,
    export_file: Annotated[Optional[Path], typer.Option("--export", help="an existing export of the run instead "
                                                        "of exporting it again")] = None,
    json_file: Annotated[Optional[Path], typer.Option("--json", help="write the result object to this file")] = None,
    batches: Annotated[str, typer.Option("--batches", help="batch sizes, comma-separated")] = "1,32",
    threads: Annotated[int, typer.Option("--threads", help="threads every runtime may use")] = 2,
    repeats: Annotated[int, typer.Option("--repeats", help="timed calls per runtime and batch")] = 200,
    warmup: Annotated[int, typer.Option("--warmup", help="untimed calls first")] = 20,
    seq_len: Annotated[int, typer.Option("--seq-len", help="tokens per input (sentence encoders)")] = 64,
    rounds: Annotated[int, typer.Option("--rounds", help="time every runtime this many times, keep its best")] = 1,
    target: Annotated[str, typer.Option("--target", "-t", help="target whose estimated joules the table shows")] = "mobile-npu",
) -> None:
    """Time the export beside PyTorch and ONNX Runtime (fp32, post-training int8) on this machine."""
    from wattless.bench import bench as run_bench, print_table
    from wattless.energy import builtin_targets

    if target not in builtin_targets():
        raise BenchError(f"unknown target {target!r} for the table: use one of {', '.join(builtin_targets())}")
    if run is not None and not run.is_dir():
        raise BenchError(f"--run {run} does not exist")
    if export_file is not None and not export_file.is_file():
        raise BenchError(f"--export {export_file} does not exist")
    result = run_bench(workload, run=run, export=export_file, batches=_batches(batches), threads=threads,
                       repeats=repeats, warmup=warmup, seq_len=seq_len, rounds=rounds, json_path=json_file,
                       log=lambda msg: _console.print(Text(msg, style="dim"), highlight=False))
    print_table(result, _console, target)
    if json_file is not None:
        _console.print(Text(f"written to {json_file}"), highlight=False)


def register(app: typer.Typer) -> None:
    """Add `export` and `bench` to the wattless command line."""
    app.command(name="export")(export)
    app.command(name="bench")(bench)


def main() -> None:
    """Run these two commands alone (until cli.py registers them): python -m wattless.commands_export ..."""
    from wattless.cli import print_error
    from wattless.errors import WattlessError

    app = typer.Typer(no_args_is_help=True, add_completion=False, pretty_exceptions_enable=False)
    register(app)
    try:
        app()
    except WattlessError as exc:
        print_error(str(exc))
        sys.exit(2)


if __name__ == "__main__":
    main()
