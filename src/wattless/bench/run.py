"""`bench()`: every setting and file checked first, then prepare, time every runtime round-robin in its
worker, and keep each row's best round."""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from wattless.baselines import BASELINES, ENERGY_INPUTS
from wattless.bench.plan import Plan, check_args
from wattless.bench.prepare import Prepared, prepare
from wattless.bench.rows import bench_rows, result_json
from wattless.bench.runtimes import OWN, RUNTIMES
from wattless.bench.process import run_worker
from wattless.errors import BenchError, MeasurementUnavailable

__all__ = ["bench"]


def _check_files(export: str | Path | None, json_path: str | Path | None) -> None:
    """Every file bench was given, checked before minutes of timing: an export it can load, a JSON path it
    can write."""
    from wattless.files import check_output_file
    from wattless.runtime import read_metadata

    if json_path is not None:
        check_output_file(Path(json_path), "--json", BenchError)
    if export is not None:
        read_metadata(export)  # ExportError naming the file if it is not a wattless export


def bench(
    workload: str,
    *,
    run: str | Path | None = None,
    export: str | Path | None = None,
    batches: Sequence[int] = (1, 32),
    threads: int = 2,
    warmup: int = 20,
    repeats: int = 200,
    seq_len: int = 64,
    runtimes: Sequence[str] = RUNTIMES,
    energy_samples: int = ENERGY_INPUTS,
    max_seconds: float = 60.0,
    rounds: int = 1,
    isolate: bool = True,
    measure: bool = True,
    workdir: str | Path | None = None,
    json_path: str | Path | None = None,
    timeout_s: float = 1800.0,
    log: Any = None,
) -> dict[str, Any]:
    """Benchmark ``runtimes`` side by side on ``workload``; the wattless row needs ``run`` (a run directory,
    exported here) or ``export`` (a file from `wattless export`). Returns the JSON object (see docs/EXPORT.md)
    and writes it to ``json_path`` if given."""
    from wattless.workloads import get_workload

    say = log or (lambda msg: None)
    runtimes = check_args(runtimes, batches, threads, warmup, repeats, seq_len, rounds)
    _check_files(export, json_path)
    wl = get_workload(workload)
    if run is not None:
        run = Path(run)
        _check_run(run, wl.name)
    if set(OWN) & set(runtimes) and run is None and export is None:
        runtimes = [r for r in runtimes if r not in OWN]
        say("no --run given: the wattless row is left out")
    own = workdir is None
    work = Path(tempfile.mkdtemp(prefix="wattless-bench-")) if own else Path(workdir)
    work.mkdir(parents=True, exist_ok=True)
    load_start = os.getloadavg()
    measure, notes = _counter_here(measure)
    plan = Plan(runtimes, sorted({int(b) for b in batches}), threads, warmup, repeats, seq_len,
                 wl.name == "minilm", max_seconds, rounds, isolate, measure, timeout_s)
    try:
        prepared = prepare(wl, plan, work, run, export, energy_samples, say)
        firsts, timings = _time_all(workload, plan, work, prepared, say)
        rows = bench_rows(wl, plan, prepared, firsts, timings, notes)
        result = result_json(wl, rows, plan, load_start, sorted(notes), prepared.export_report, run)
    finally:
        if own:
            shutil.rmtree(work, ignore_errors=True)
    if json_path is not None:
        from wattless.files import atomic_write

        Path(json_path).parent.mkdir(parents=True, exist_ok=True)
        atomic_write(Path(json_path), json.dumps(result, indent=2))
    return result


def _check_run(run: Path, workload: str) -> None:
    marker = run / "run.json"
    if not marker.is_file():
        raise BenchError(f"--run {run} is not a `wattless optimize` run directory (no run.json)")
    from wattless.optimize import read_run_marker
    from wattless.train import read_tensors

    held = read_run_marker(run)["identity"].get("workload")
    if held != workload:
        raise BenchError(f"--run {run} holds a run of workload {held!r}, not {workload!r}; pass --workload {held}")
    read_tensors(run / "model.safetensors")  # a damaged model is named now, not after the timing


def _counter_here(measure: bool) -> tuple[bool, set[str]]:
    """Whether to measure, after one look for a counter here (rather than one per worker), and why not."""
    if not measure:
        return False, set()
    from wattless.energy.measure import default_meter

    try:
        default_meter()
    except MeasurementUnavailable as exc:
        return False, {str(exc)}
    return True, set()


def _time_all(workload: str, plan: Plan, work: Path, prepared: Prepared,
              say: Any) -> tuple[dict[str, dict[str, Any]], dict[tuple[str, int], list[dict[str, Any]]]]:
    """Every runtime timed ``rounds`` times, round-robin (a burst of other work on the machine hits one round):
    each runtime's first round (metric, measured energy), and every round's timings per (runtime, batch)."""
    rows_of = {BASELINES[n].label for n in prepared.defined}
    firsts: dict[str, dict[str, Any]] = {}
    timings: dict[tuple[str, int], list[dict[str, Any]]] = {}
    for round_ in range(plan.rounds):
        for name in plan.runtimes:
            say(f"timing {name}" + (f" (round {round_ + 1} of {plan.rounds})" if plan.rounds > 1 else ""))
            spec = {"runtime": name, "workload": workload, "workdir": str(work), "batches": plan.batches,
                    "threads": plan.threads, "warmup": plan.warmup, "repeats": plan.repeats, "encoder": plan.encoder,
                    "file": str(prepared.files.get(name, "")), "max_seconds": plan.max_seconds,
                    "measure": plan.measure and round_ == 0, "metric": round_ == 0 and name not in rows_of}
            got = run_worker(spec, plan.isolate, plan.timeout_s)
            firsts.setdefault(name, got)
            for r in got["rows"]:
                timings.setdefault((name, r["batch"]), []).append(r)
    return firsts, timings
