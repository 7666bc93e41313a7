"""The search verb: `search(workload, target, out=..., ...)`, its options grouped in `SearchOptions`, and the
steps of one invocation (check, open the study, spawn workers, run, publish results.json and the report)."""

from __future__ import annotations

import math
import os
import time
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import optuna

from wattless.files import check_output_dir
from wattless.energy import Target, resolve_target
from wattless.errors import SearchError
from wattless.optimize import baseline_model
from wattless.recipe import Recipe
from wattless.search.baseline_cache import BASELINES, cached_baselines
from wattless.search.budget import Budget
from wattless.search.constraints import Constraints
from wattless.search.pruners import ParetoPruner, TrialPruner
from wattless.search.quiet import quiet
from wattless.search.results import RESULTS_FILE, SearchResult, build_report, collect, write_json
from wattless.search.seeds import default_base, default_seeds, for_target
from wattless.search.space import RecipeSpace, SearchSpace
from wattless.search.storage import default_storage, open_storage, shown_url
from wattless.search.study import (CLAIM_DEFAULT_STORAGE, CLAIM_FILE, check_out, default_sampler, open_study,
                                   study_info, study_name)
from wattless.search.trial import TrialContext, trial_context
from wattless.search.view import View
from wattless.search.workers import WorkerConfig, one_interrupt, spawn, stop, work
from wattless.train import torch_threads
from wattless.workloads import Workload, get_workload

__all__ = ["search", "SearchOptions", "run_search"]


@dataclass(frozen=True)
class SearchOptions:
    """Everything `search` takes besides what and where: the budget (``trials``, ``minutes``), the study
    (``storage``, ``constraints``, ``space``, ``seeds``), the strategies (``sampler``, ``pruner``), the workers
    and the output (``baselines``, ``energy_inputs``, ``cache``, ``progress``, ``report``, ``console``)."""

    trials: int | None = None
    minutes: float | None = None
    storage: str | None = None
    constraints: Constraints = Constraints()
    space: SearchSpace = SearchSpace()
    seeds: Sequence[Recipe] | None = None
    sampler: optuna.samplers.BaseSampler | None = None
    pruner: TrialPruner | None = None
    workers: int = 1
    baselines: Sequence[str] = BASELINES
    energy_inputs: int = 64
    cache: Path | None = None
    progress: bool = True
    report: bool = True
    console: Any = None

    def __post_init__(self) -> None:
        trials, minutes, workers = self.trials, self.minutes, self.workers
        if trials is None and minutes is None:
            raise SearchError("give a budget: --trials N (finished trials in the study) and/or --minutes M")
        if (trials is not None and trials < 1) or (minutes is not None and not minutes > 0) or workers < 1:
            raise SearchError(f"--trials and --workers must be >= 1 and --minutes > 0 (got trials={trials}, "
                              f"minutes={minutes}, workers={workers})")
        if minutes is not None and not math.isfinite(minutes):
            raise SearchError(f"--minutes must be a finite number of minutes, got {minutes}")
        if self.energy_inputs < 1:
            raise SearchError(f"--energy-inputs must be >= 1 (test inputs each model's energy is counted on), got "
                              f"{self.energy_inputs}")
        if workers > 1 and (self.sampler is not None or self.pruner is not None):
            given = " and ".join(n for n in ("sampler", "pruner") if getattr(self, n) is not None)
            raise SearchError(
                f"a {given} object cannot reach the other worker processes: they start afresh and read their "
                "settings as JSON, where only the default sampler (TPE) and pruner (ParetoPruner) can be named. "
                f"Run with workers=1 to use your {given}, or leave it out to use the defaults in every worker")

    @property
    def deadline(self) -> float | None:
        """time.time() at which this invocation's time is up, from now."""
        return time.time() + 60 * self.minutes if self.minutes is not None else None

    @property
    def threads(self) -> int | None:
        """torch threads per worker: cores / workers, with several."""
        return max(1, (os.cpu_count() or 1) // self.workers) if self.workers > 1 else None


@dataclass(frozen=True)
class _Where:
    """What one invocation searches and where the study lives."""

    wl: Workload
    target: Target
    out: Path
    url: str
    name: str
    identity: dict[str, str]


def search(
    workload: str | Workload,
    target: str,
    *,
    out: str | Path,
    trials: int | None = None,
    minutes: float | None = None,
    storage: str | None = None,
    constraints: Constraints = Constraints(),
    space: SearchSpace = SearchSpace(),
    seeds: Sequence[Recipe] | None = None,
    sampler: optuna.samplers.BaseSampler | None = None,
    pruner: TrialPruner | None = None,
    workers: int = 1,
    baselines: Sequence[str] = BASELINES,
    energy_inputs: int = 64,
    cache: Path | None = None,
    progress: bool = True,
    report: bool = True,
    console=None,
) -> SearchResult:
    """Search recipes for the accuracy-versus-energy frontier of ``workload`` on ``target``; see the package
    docstring. ``trials``: finished trials the study should hold (the same command continues to it);
    ``minutes``: this invocation's time (a trial still running then stops and resumes next time).
    ``seeds``: recipes enqueued first (default: the project's recipes for this workload and target).
    ``workers``: processes on this machine sharing the study (each takes cores / workers threads); a
    ``sampler`` or ``pruner`` object of the caller's needs ``workers=1``.
    Ctrl-C leaves the study resumable and a partial results.json and report, then re-raises."""
    options = SearchOptions(trials=trials, minutes=minutes, storage=storage, constraints=constraints, space=space,
                            seeds=seeds, sampler=sampler, pruner=pruner, workers=workers, baselines=baselines,
                            energy_inputs=energy_inputs, cache=cache, progress=progress, report=report,
                            console=console)
    return run_search(workload, target, Path(out), options)


def run_search(workload: str | Workload, target: str, out: Path, options: SearchOptions) -> SearchResult:
    """`search` with its options grouped."""
    check_output_dir(out, "search folder", SearchError)
    where = _where(workload, target, out, options)
    deadline, threads = options.deadline, options.threads
    if options.storage is None:
        out.mkdir(parents=True, exist_ok=True)
    with one_interrupt(), quiet(), torch_threads(threads):
        study, info, ctx = _start(where, options, deadline)
        cfg = None
        if options.workers > 1:  # workload is a name or spec here (_where refused an object)
            cfg = WorkerConfig(workload, target, str(out), where.url, where.name, options.trials, deadline,
                               threads or 1, options.energy_inputs,
                               str(options.cache) if options.cache is not None else None)
        return _run(where, study, info, ctx, cfg, options)


def _where(workload: str | Workload, target: str, out: Path, options: SearchOptions) -> _Where:
    """Resolve and check what to search; a folder holding another study is refused before anything is written."""
    tgt = resolve_target(target)
    wl = get_workload(workload) if isinstance(workload, str) else workload
    if options.workers > 1 and not isinstance(workload, str):
        raise SearchError("several workers load the workload themselves: pass it by name or spec, not an object")
    url = options.storage or default_storage(out)
    name = study_name(wl.name, tgt.name)
    # the folder's own study.db is named relative to it, so a moved folder still continues
    identity = {"study_name": name, "storage": shown_url(options.storage) if options.storage else CLAIM_DEFAULT_STORAGE,
                "workload": wl.name, "target": tgt.name}
    check_out(out, identity)
    return _Where(wl, tgt, out, url, name, identity)


def _start(where: _Where, options: SearchOptions,
           deadline: float | None) -> tuple[optuna.Study, dict[str, Any], TrialContext]:
    """Open the storage, create or join the study (seeds and settings), claim the folder: the primary's context."""
    wl, tgt, out = where.wl, where.target, where.out
    store = open_storage(where.url)
    found = default_seeds(wl.name, tgt.name) if options.seeds is None else options.seeds
    seeds = [for_target(s, tgt.name) for s in found]
    base = seeds[0] if seeds else default_base(tgt.name)
    baseline_model(wl, progress=options.progress, cache=options.cache)  # trained and cached once, before workers start
    draft = RecipeSpace.build(options.space, base, wl, tgt, seeds)
    info = study_info(wl, tgt, options.constraints, draft, seeds, options.space.neighbours)
    study, drawn = open_study(store, where.name, info, options.sampler or default_sampler(), seeds, draft)
    info = study.user_attrs["wattless"]
    out.mkdir(parents=True, exist_ok=True)
    write_json(out / CLAIM_FILE, where.identity)
    ctx = trial_context(wl, tgt, out, drawn, options.pruner or ParetoPruner(), info, options.energy_inputs,
                        options.cache, deadline)
    return study, info, ctx


def _run(where: _Where, study: optuna.Study, info: dict[str, Any], ctx: TrialContext, cfg: WorkerConfig | None,
         options: SearchOptions) -> SearchResult:
    """The baselines, then trials here and in ``workers - 1`` more processes; results.json after each trial."""
    rows: dict[str, dict[str, Any]] = {}

    def publish() -> SearchResult:
        results = collect(study, rows, where.url, info)
        write_json(where.out / RESULTS_FILE, results)
        return SearchResult.from_results(where.out, results, build_report(where.out) if options.report else None)

    procs = spawn(options.workers - 1, cfg) if cfg is not None else []
    try:
        with View(options.progress, options.trials, options.console) as view:
            stage = view.stage("baselines", len(options.baselines))
            rows.update(cached_baselines(where.out, where.wl, where.target, options.baselines, options.energy_inputs,
                                         options.cache, stage))
            stage(None)
            publish()
            work(study, ctx, Budget(options.trials, ctx.deadline), view, after_trial=publish)
            view.waiting(procs)
            failed = [code for code in (p.wait() for p in procs) if code != 0]
            view.progress(study.get_trials(deepcopy=False))
        if failed:
            warnings.warn(f"{len(failed)} worker process(es) stopped with exit codes {failed} (their error is "
                          "printed above); their trials are resumable: run the same command again",
                          RuntimeWarning, stacklevel=4)
        return publish()
    except KeyboardInterrupt:
        stop(procs)
        publish()
        raise
    finally:
        stop(procs)
