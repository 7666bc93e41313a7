"""Resuming trials: which process holds a trial (host, pid and its start time in /proc), a dead one's trial
failed and enqueued once to resume, and the resumption taking over its predecessor's run folder."""

from __future__ import annotations

import os
import socket
from pathlib import Path
from typing import Any

import optuna
from optuna.trial import FrozenTrial, TrialState

__all__ = ["HOST", "requeue", "requeue_stale", "recover", "claim_trial"]

HOST = socket.gethostname()
# user attrs a resumed trial takes over from the one it resumes
_CARRIED = ("seed", "seed_recipe", "plan", "neighbour_of", "curve")


def _proc_start(pid: int) -> str | None:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[19]
    except (OSError, IndexError):
        return None


def _alive(worker: dict[str, Any]) -> bool:
    pid = worker.get("pid")
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    stat = Path(f"/proc/{pid}/stat")
    if stat.exists() and stat.read_text().rsplit(")", 1)[1].split()[0] == "Z":
        return False
    return worker.get("start") is None or _proc_start(pid) == worker.get("start")


def requeue(study: optuna.Study, number: int, params: dict[str, Any], attrs: dict[str, Any]) -> None:
    """Enqueue the resumption of trial ``number`` (same parameters; it takes over the trial's run folder and
    checkpoint), unless one is enqueued already."""
    if any(t.user_attrs.get("resumes") == number for t in study.get_trials(deepcopy=False)):
        return
    carried = {k: v for k, v in attrs.items() if k in _CARRIED}
    study.enqueue_trial(params, user_attrs={**carried, "resumes": number}, skip_if_exists=False)


def requeue_stale(study: optuna.Study, trial: FrozenTrial) -> None:
    """Optuna's callback for a trial whose worker stopped sending heartbeats (a machine lost)."""
    requeue(study, trial.number, trial.params, trial.user_attrs)


def recover(study: optuna.Study) -> None:
    """Trials left running by a dead process of this machine fail now and are resumed, without waiting for
    the heartbeat's grace period (a search killed and started again at once)."""
    for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        worker = t.user_attrs.get("worker")
        if not worker or worker.get("host") != HOST or _alive(worker):
            continue
        try:
            study.tell(t.number, state=TrialState.FAIL)
        except (RuntimeError, ValueError, optuna.exceptions.UpdateFinishedTrialError):
            continue  # another worker got there first
        requeue(study, t.number, t.params, t.user_attrs)


def claim_trial(trial: optuna.Trial, out: Path) -> Path:
    """Mark the trial as this process's; a resumption takes over its predecessor's run folder."""
    trial.set_user_attr("worker", {"host": HOST, "pid": os.getpid(), "start": _proc_start(os.getpid())})
    run_dir = out / "trials" / str(trial.number)
    resumes = trial.user_attrs.get("resumes")
    if resumes is not None:
        old = out / "trials" / str(resumes)
        if old.is_dir() and not run_dir.exists():
            os.replace(old, run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)  # every trial a worker took has its folder there
    return run_dir
