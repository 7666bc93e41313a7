"""Workers: the loop that runs trials until the budget is spent, and the extra worker processes on this
machine, started afresh with their settings as JSON on stdin."""

from __future__ import annotations

import contextlib
import json
import signal
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import optuna
import torch
from optuna.trial import TrialState

from wattless.energy import resolve_target
from wattless.errors import SearchError, StorageError, WattlessError
from wattless.recipe import parse_recipe
from wattless.search.budget import Budget
from wattless.search.pruners import ParetoPruner
from wattless.search.quiet import quiet
from wattless.search.resume import recover
from wattless.search.seeds import enqueue_planned
from wattless.search.space import RecipeSpace
from wattless.search.storage import open_storage
from wattless.search.study import default_sampler
from wattless.search.trial import Deadline, Objective, TrialContext, trial_context
from wattless.search.view import View
from wattless.workloads import get_workload

__all__ = ["WorkerConfig", "work", "one_interrupt", "worker_main", "spawn", "stop"]

# strategies a worker process rebuilds by name (objects cannot cross into a fresh process as JSON)
_SAMPLERS = {"default": default_sampler}
_PRUNERS = {"default": ParetoPruner}
_WORKER = ("import json, sys; from wattless.search.workers import worker_main; "
           "worker_main(json.load(sys.stdin))")


@dataclass(frozen=True)
class WorkerConfig:
    """What a spawned worker needs to join the study, as plain JSON."""

    workload: str
    target: str
    out: str
    storage: str
    study_name: str
    trials: int | None
    deadline: float | None  # time.time()
    threads: int
    energy_inputs: int
    cache: str | None
    sampler: str = "default"
    pruner: str = "default"

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> "WorkerConfig":
        cfg = cls(**data)
        if cfg.sampler not in _SAMPLERS or cfg.pruner not in _PRUNERS:
            raise SearchError(f"worker settings name sampler {cfg.sampler!r} and pruner {cfg.pruner!r}: choose "
                              f"samplers among {', '.join(_SAMPLERS)} and pruners among {', '.join(_PRUNERS)}")
        return cfg


def work(study: optuna.Study, ctx: TrialContext, budget: Budget, view: View,
         after_trial: Callable[[], None] | None = None) -> None:
    """Run trials until the budget is spent. Three failures in a row stop the worker with the last error."""
    objective, failures = Objective(ctx, view), 0
    while True:
        recover(study)
        trials = study.get_trials(deepcopy=False)
        view.progress(trials)
        if not budget.allows(trials):
            return
        enqueue_planned(study, trials, ctx.plan, ctx.plan_of)
        try:
            _one_trial(study, objective)
        except Deadline:
            return
        last = study.trials[objective.number] if objective.number is not None else None
        failed = last is not None and last.state == TrialState.FAIL and "error" in last.user_attrs
        failures = failures + 1 if failed else 0
        if failures >= 3:
            raise SearchError(f"three trials in a row failed; the last: {last.user_attrs['error']}")
        if after_trial is not None:
            after_trial()


def _one_trial(study: optuna.Study, objective: Objective) -> None:
    from sqlalchemy.exc import OperationalError

    try:
        with quiet():
            study.optimize(objective, n_trials=1, catch=(WattlessError,))
    except OperationalError as exc:
        raise StorageError(f"lost the study storage mid-search: {str(exc).splitlines()[0]}; the finished "
                           "trials are kept there: run the same command again once it is reachable") from None


@contextlib.contextmanager
def one_interrupt() -> Iterator[None]:
    """The first Ctrl-C stops the search (KeyboardInterrupt); later ones are ignored until the block ends, so
    a second Ctrl-C cannot cut short the failing of the interrupted trial, the enqueueing of its resumption
    and the partial results. Left alone where SIGINT is not Python's default (ignored, or the caller's own)."""
    if threading.current_thread() is not threading.main_thread() or \
            signal.getsignal(signal.SIGINT) is not signal.default_int_handler:
        yield
        return

    def first(signum, frame) -> None:
        signal.signal(signal.SIGINT, later)
        raise KeyboardInterrupt

    def later(signum, frame) -> None:
        print("wattless: stopping: the study is being saved so that the same command continues it",
              file=sys.stderr, flush=True)

    signal.signal(signal.SIGINT, first)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, signal.default_int_handler)


def worker_main(data: dict[str, Any]) -> None:
    """A spawned worker process: the same study, its own trials, no output of its own."""
    cfg = WorkerConfig.from_json(data)
    torch.set_num_threads(cfg.threads)
    try:
        with one_interrupt(), quiet():
            ctx, study = _attach(cfg)
            work(study, ctx, Budget(cfg.trials, cfg.deadline), View(False))
    except KeyboardInterrupt:
        pass  # the running trial was enqueued to resume; the primary reports


def _attach(cfg: WorkerConfig) -> tuple[TrialContext, optuna.Study]:
    wl, target = get_workload(cfg.workload), resolve_target(cfg.target)
    sampler = _SAMPLERS[cfg.sampler]()
    storage = open_storage(cfg.storage)
    study = optuna.load_study(storage=storage, study_name=cfg.study_name, sampler=sampler)
    info = study.user_attrs["wattless"]
    space = RecipeSpace(info["space"], parse_recipe(info["base"], "(study base recipe)"), wl)
    cache = Path(cfg.cache) if cfg.cache is not None else None
    return trial_context(wl, target, Path(cfg.out), space, _PRUNERS[cfg.pruner](), info, cfg.energy_inputs,
                         cache, cfg.deadline), study


def spawn(n: int, cfg: WorkerConfig) -> list[subprocess.Popen]:
    """Worker processes started afresh (not forked: torch's threads do not survive a fork; not through
    multiprocessing: a caller's script need not guard its main), each reading ``cfg`` as JSON on stdin."""
    procs = []
    for _ in range(n):
        proc = subprocess.Popen([sys.executable, "-c", _WORKER], stdin=subprocess.PIPE)
        proc.stdin.write(json.dumps(cfg.to_json()).encode())
        proc.stdin.close()
        procs.append(proc)
    return procs


def stop(procs: list[subprocess.Popen], timeout: float = 30.0) -> None:
    """Ask workers to stop as Ctrl-C would (their running trials are enqueued to resume), then wait."""
    for p in procs:
        if p.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                p.send_signal(signal.SIGINT)
    for p in procs:
        try:
            p.wait(timeout)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()
