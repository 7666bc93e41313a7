"""`wattless export` and `wattless bench`: over wattless.export and wattless.bench."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.markup import escape
from rich.table import Table
from rich.text import Text

from wattless.cli.console import console, print_json
from wattless.errors import BenchError, ExportError

__all__ = ["register", "export", "bench"]


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
    from wattless.export import export_run

    _check_export(run_dir, out, int8_kernel)
    report = export_run(run_dir, out, workload=workload, requantize=requantize, int8_kernel=int8_kernel)
    if as_json:
        print_json(report.to_json(), strict=False)
    elif report.kind == "decoder-lm":
        _print_decoder_export(report)
    else:
        _print_export(report)


def _print_decoder_export(report) -> None:
    kinds: dict[str, int] = {}
    for kernel in report.layers.values():
        kinds[kernel] = kinds.get(kernel, 0) + 1
    console.print(Text(f"decoder exported to {report.path} ({report.size_bytes / 1e6:.1f} MB) with its KV cache "
                       "(past/present inputs and outputs)"), highlight=False)
    for kernel, n in kinds.items():
        console.print(Text(f"  {n} Linear layers: {kernel}"), highlight=False)
    p = report.parity
    if p is not None:
        console.print(Text(f"parity passed: perplexity {p['perplexity_onnx']:.4f} (ONNX) vs {p['perplexity_torch']:.4f} "
                           f"(PyTorch) on {p['tokens']} held-out tokens, top-1 agreement {p['top1_agreement']:.4f}"),
                      highlight=False)
        for g in p["greedy"]:
            line = (f"greedy {g['tokens']} tokens: equal to PyTorch's" if g["equal"] else
                    f"greedy {g['tokens']} tokens: differs from position {g['first_difference']} ({g['why']})")
            console.print(Text("  " + line), highlight=False)


def _check_export(run_dir: Path, out: Path, int8_kernel: str) -> None:
    from wattless.files import check_output_file
    from wattless.kernels import INT8_KERNELS

    if int8_kernel not in INT8_KERNELS:
        raise ExportError(f"--int8-kernel {int8_kernel!r}: choose one of {', '.join(INT8_KERNELS)}")
    if not run_dir.is_dir():
        raise ExportError(f"run directory {run_dir} does not exist; run `wattless optimize ... --out {run_dir}` first")
    check_output_file(out, "--out", ExportError)


def _print_export(report) -> None:
    """Where each layer runs, then what the export removed, skips or routes, and the parity check."""
    table = Table(title=escape(f"{report.workload} exported to {report.path} ({report.size_bytes / 1e6:.2f} MB, "
                               f"{report.kind})"))
    table.add_column("layer")
    table.add_column("runs on")
    for layer, kernel in report.layers.items():
        table.add_row(Text(layer), Text(kernel))
    console.print(table)
    lines = [f"removed: {group} keeps {units['kept']} of {units['total']} units" for group, units in report.removed.items()]
    if report.exits:
        lines.append(f"early exits after {', '.join(e['after'] for e in report.exits)} (ONNX If: later "
                     "blocks run only on the rows still going)")
    lines += [f"mixture of experts {block}: {experts} experts, each runs only on its tokens"
              for block, experts in report.routes.items()]
    for line in lines:
        console.print(Text(line), highlight=False)
    if report.parity is not None:
        console.print(f"[green]parity passed:[/] {escape(report.parity.describe())}", highlight=False)
    for note in report.notes:
        console.print(f"[dim]note: {escape(note)}[/]", highlight=False)


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
    """Time the export beside PyTorch and ONNX Runtime (fp32, post-training int8) on this machine; for
    smollm2: PyTorch fp32, ONNX Runtime fp32 and its own int4 quantizer, llama.cpp, and the export."""
    from wattless.bench import bench as run_bench, print_table

    _check_bench(target, run, export_file)
    if workload == "smollm2":
        _bench_lm(run, export_file, json_file, threads, rounds)
        return
    result = run_bench(workload, run=run, export=export_file, batches=_batches(batches), threads=threads,
                       repeats=repeats, warmup=warmup, seq_len=seq_len, rounds=rounds, json_path=json_file,
                       log=lambda msg: console.print(Text(msg, style="dim"), highlight=False))
    print_table(result, console, target)
    if json_file is not None:
        console.print(Text(f"written to {json_file}"), highlight=False)


def _bench_lm(run: Path | None, export_file: Path | None, json_file: Path | None, threads: int, rounds: int) -> None:
    import tempfile

    from wattless.bench.lm import bench_lm, print_lm_table
    from wattless.export import export_run

    say = lambda msg: console.print(Text(msg, style="dim"), highlight=False)  # noqa: E731
    with tempfile.TemporaryDirectory(prefix="wattless-lm-export-") as tmp:
        if export_file is None and run is not None:
            say(f"exporting {run}")
            export_file = export_run(run, Path(tmp) / "wattless.onnx").path
        result = bench_lm("smollm2", export=export_file, threads=threads, rounds=max(rounds, 2), json_path=json_file,
                          log=say)
    print_lm_table(result, console)
    if json_file is not None:
        console.print(Text(f"written to {json_file}"), highlight=False)


def _check_bench(target: str, run: Path | None, export_file: Path | None) -> None:
    from wattless.energy import builtin_targets

    if target not in builtin_targets():
        raise BenchError(f"unknown target {target!r} for the table: use one of {', '.join(builtin_targets())}")
    if run is not None and not run.is_dir():
        raise BenchError(f"--run {run} does not exist")
    if export_file is not None and not export_file.is_file():
        raise BenchError(f"--export {export_file} does not exist")


def _batches(text: str) -> list[int]:
    try:
        return [int(b) for b in text.split(",") if b.strip()]
    except ValueError:
        raise BenchError(f"--batches takes comma-separated integers such as 1,32; got {text!r}") from None


def register(app: typer.Typer) -> None:
    """Add `export` and `bench` to the wattless command line."""
    app.command(name="export")(export)
    app.command(name="bench")(bench)
