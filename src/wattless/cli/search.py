"""`wattless search`, `wattless report DIR`, `wattless demo`: over wattless.search, .report and .demo.

Bad input raises a WattlessError (one line and exit code 2 from main); Ctrl-C prints how to continue and
exits with 130.
"""

from __future__ import annotations

import math
import shlex
import sys
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.text import Text

from wattless.cli.console import console, err_console, print_json

__all__ = ["register", "search_command", "report_command", "demo_command"]


def search_command(
    workload: Annotated[str, typer.Option("--workload", "-w", help="mnist1d, digits, minilm, or path/to/file.py:factory")],
    target: Annotated[str, typer.Option("--target", "-t", help="target name or .toml file the energy is estimated on")],
    out: Annotated[Path, typer.Option("--out", "-o", help="search folder (results, report, trial runs, default storage)")],
    trials: Annotated[Optional[int], typer.Option("--trials", help="finished trials the study should hold")] = None,
    minutes: Annotated[Optional[float], typer.Option("--minutes", help="time for this run; a trial still running then resumes next run")] = None,
    storage: Annotated[Optional[str], typer.Option("--storage", help="Optuna storage URL (default sqlite:///OUT/study.db), e.g. postgresql://user:pw@host/db")] = None,
    max_size_kib: Annotated[Optional[float], typer.Option("--max-size-kib", help="constraint: weights at their precision")] = None,
    max_latency_ms: Annotated[Optional[float], typer.Option("--max-latency-ms", help="constraint: estimated latency on the target")] = None,
    budget_uj: Annotated[Optional[float], typer.Option("--budget-uj", help="constraint: estimated microjoules per inference")] = None,
    seed_recipe: Annotated[Optional[list[Path]], typer.Option("--seed-recipe", help="recipe TOML tried first; repeat (default: recipes/WORKLOAD-*.toml for the target)")] = None,
    epochs: Annotated[Optional[int], typer.Option("--epochs", help="epochs of each drawn recipe (seed recipes keep theirs)")] = None,
    workers: Annotated[int, typer.Option("--workers", help="processes on this machine sharing the study")] = 1,
    energy_inputs: Annotated[int, typer.Option("--energy-inputs", help="test inputs each model's energy is counted on")] = 64,
    as_json: Annotated[bool, typer.Option("--json", help="print one JSON object")] = False,
    no_progress: Annotated[bool, typer.Option("--no-progress", help="no progress bars")] = False,
) -> None:
    """Search recipes for the accuracy-versus-energy frontier on a target (resumable; shareable storage); for a
    decoder (smollm2) the perplexity-versus-joules-per-token frontier over bits, group size, sparsity and KV."""
    from wattless.recipe import load_recipe
    from wattless.search import search
    from wattless.search.decoder import is_decoder_workload

    if is_decoder_workload(workload):
        return _decoder_search(workload, target, out, trials, storage, as_json)

    space = _space(epochs)
    constraints = _constraints(max_size_kib, max_latency_ms, budget_uj)
    seeds = [load_recipe(p) for p in seed_recipe] if seed_recipe else None
    try:
        result = search(workload, target, out=out, trials=trials, minutes=minutes, storage=storage,
                        constraints=constraints, space=space, seeds=seeds, workers=workers,
                        energy_inputs=energy_inputs, progress=not (no_progress or as_json), console=console)
    except KeyboardInterrupt:
        _interrupted(out)
    _print_result(result, as_json)


def _decoder_search(workload: str, target: str, out: Path, trials: int | None, storage: str | None,
                    as_json: bool) -> None:
    from rich.table import Table

    from wattless.errors import SearchError
    from wattless.search.decoder import search_decoder

    if trials is None:
        raise SearchError("the decoder search needs --trials N (finished trials the study should hold)")
    say = (lambda m: None) if as_json else (lambda m: console.print(Text(m, style="dim"), highlight=False))
    result = search_decoder(workload, target, out=out, trials=trials, storage=storage, log=say)
    if as_json:
        print_json({"results": str(out / "results.json"), "reference": result["reference"],
                    "frontier": result["frontier"]}, strict=False)
        return
    ref = result["reference"]
    table = Table(title=f"{result['workload']}: perplexity vs joules per decode token on {target} (estimated)")
    for col in ("trial", "bits", "group", "zero points", "sparsity", "KV bits", "perplexity", "mJ/token", "x below float"):
        table.add_column(col, justify="right")
    for p in result["frontier"]:
        q = p["params"]
        zero = "int" if q["sparsity"] != "none" else q["zero_point"]  # a sparse draw takes integer zero points
        table.add_row(str(p["trial"]), str(q["bits"]), str(q["group_size"]), zero, q["sparsity"],
                      str(q["kv_bits"]), f"{p['perplexity']:.3f}", f"{p['energy_j_per_token'][target] * 1e3:.4f}",
                      f"{p['energy_ratio'][target]:.2f}")
    console.print(table)
    console.print(Text(f"float reference: perplexity {ref['perplexity']:.3f}, "
                       f"{ref['energy_j_per_token'][target] * 1e3:.4f} mJ/token; results: {out / 'results.json'}"),
                  highlight=False)


def _space(epochs: int | None):
    from wattless.errors import SearchError
    from wattless.search import SearchSpace

    if epochs is not None and epochs < 1:
        raise SearchError(f"--epochs must be >= 1 (epochs of each drawn recipe), got {epochs}")
    return SearchSpace(epochs=epochs)


def _constraints(max_size_kib: float | None, max_latency_ms: float | None, budget_uj: float | None):
    from wattless.errors import SearchError
    from wattless.search import Constraints

    for flag, value in (("--max-size-kib", max_size_kib), ("--max-latency-ms", max_latency_ms), ("--budget-uj", budget_uj)):
        if value is not None and not (math.isfinite(value) and value > 0):
            raise SearchError(f"{flag} must be a finite number > 0, got {value}")
    return Constraints(max_size_bytes=max_size_kib * 1024 if max_size_kib else None,
                       max_latency_s=max_latency_ms / 1000 if max_latency_ms else None,
                       energy_budget_uj=budget_uj)


def report_command(
    out: Annotated[Path, typer.Argument(help="a search folder holding results.json")],
) -> None:
    """Rebuild DIR/report.html (and its PNG plots) from DIR/results.json, without re-running anything."""
    from wattless.report import build_report

    console.print(Text(f"report: {build_report(out)}"), highlight=False)


def demo_command(
    out: Annotated[Path, typer.Option("--out", "-o", help="demo folder (continued if it holds the demo's study)")] = Path("wattless-demo"),
    no_progress: Annotated[bool, typer.Option("--no-progress", help="no progress bars")] = False,
) -> None:
    """The main job: MNIST-1D on mobile-npu, baselines and a ~10-minute Pareto search, a summary and a report."""
    from wattless.files import check_output_dir
    from wattless.demo import demo
    from wattless.errors import SearchError

    check_output_dir(out, "--out", SearchError)
    try:
        result = demo(out, progress=not no_progress, console=console)
    except KeyboardInterrupt:
        _interrupted(out)
    _print_result(result, as_json=False)


def this_command() -> str:
    """The command line as the user typed it, quoted so it can be pasted back."""
    return shlex.join(["wattless", *sys.argv[1:]])


def _interrupted(out: Path) -> None:
    err_console.print(Text.assemble(
        ("interrupted:", "yellow"), " the study is kept (finished trials and the running one's checkpoint); "
        f"run `{this_command()}` again to continue. Partial report: {out / 'report.html'}"), highlight=False, soft_wrap=True)
    raise typer.Exit(code=130)


def _print_result(result, as_json: bool) -> None:
    from wattless.demo import summary_line, summary_table

    if as_json:
        print_json({"results": str(result.results_path), "report": str(result.report_path),
                    "trial_counts": result.trial_counts, "summary": result.summary,
                    "frontier": [{k: p[k] for k in ("trial", "metric", "energy_j", "recipe")} for p in result.frontier]},
                   strict=False)
        return
    console.print(summary_table(result))  # its cells are escaped where they quote user text
    console.print(Text(summary_line(result)), highlight=False)
    console.print(Text(f"results: {result.results_path}\nreport:  {result.report_path}"), highlight=False)


def register(app: typer.Typer) -> None:
    """Add `search`, `report` and `demo` to the wattless command line."""
    app.command("search")(search_command)
    app.command("report")(report_command)
    app.command("demo")(demo_command)
