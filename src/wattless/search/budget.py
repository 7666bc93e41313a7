"""A run's budget: the finished trials the study should hold, and this run's time."""

from __future__ import annotations

import statistics
import time
from dataclasses import dataclass

from optuna.trial import FrozenTrial, TrialState

__all__ = ["Budget", "counted"]


def counted(t: FrozenTrial) -> bool:
    """Trials that use up the --trials budget: finished ones, not those stopped to be resumed."""
    if t.state in (TrialState.COMPLETE, TrialState.PRUNED):
        return True
    return t.state == TrialState.FAIL and "error" in t.user_attrs


@dataclass(frozen=True)
class Budget:
    trials: int | None
    deadline: float | None  # time.time()

    def allows(self, trials: list[FrozenTrial]) -> bool:
        if self.trials is not None:
            busy = sum(1 for t in trials if counted(t) or t.state == TrialState.RUNNING)
            if busy >= self.trials:
                return False
        if self.deadline is not None:
            left = self.deadline - time.time()
            typical = _typical_trial_s(trials)
            if left <= 0 or (typical is not None and left < 0.8 * typical):
                return False
        return True


def _typical_trial_s(trials: list[FrozenTrial]) -> float | None:
    spans = [(t.datetime_complete - t.datetime_start).total_seconds() for t in trials
             if t.state == TrialState.COMPLETE and t.datetime_start and t.datetime_complete
             and "resumes" not in t.user_attrs]
    return statistics.median(spans) if spans else None
