"""Stopping hopeless trials after an epoch: a one-method strategy (Optuna's own report/should_prune do not
support multi-objective studies)."""

from __future__ import annotations

from typing import Any

__all__ = ["TrialPruner", "NoPruner", "ParetoPruner"]


class TrialPruner:
    """Decides after each epoch whether a trial is hopeless. One method, like Optuna's BasePruner (whose
    report/should_prune Optuna does not support for multi-objective studies)."""

    def prune(self, epoch: int, epochs: int, curve: list[dict[str, Any]],
              finished: list[tuple[int, list[dict[str, Any]]]], reference: float) -> str | None:
        """Why to stop now, or None. ``curve``: this trial's records so far ({epoch, val_metric,
        soft_energy_j}); ``finished``: (number, curve) of completed trials; ``reference``: the fp32
        baseline's validation metric."""
        return None


class NoPruner(TrialPruner):
    """Every trial runs to the end."""


def _at_fraction(curve: list[dict[str, Any]], fraction: float, epochs: int) -> dict[str, Any] | None:
    if not curve:
        return None
    wanted = max(1, round(fraction * epochs))
    return next((r for r in curve if r["epoch"] >= wanted), None)


class ParetoPruner(TrialPruner):
    """Stop a trial, past ``warmup`` of its epochs, whose validation metric is more than ``floor_drop`` below
    the fp32 baseline's, or which a completed trial dominated at the same point of its training: a metric
    at least ``margin`` higher at no more expected energy (the soft energy the objective sees). The warmup
    lets the metric recover from the dip a pruning schedule causes (it ends half-way by default)."""

    def __init__(self, *, warmup: float = 0.7, margin: float = 0.03, floor_drop: float = 0.10) -> None:
        self.warmup, self.margin, self.floor_drop = warmup, margin, floor_drop

    def prune(self, epoch, epochs, curve, finished, reference):
        if epoch < self.warmup * epochs or not curve:
            return None
        now = curve[-1]
        if now["val_metric"] < reference - self.floor_drop:
            return (f"validation metric {now['val_metric']:.4f} at epoch {epoch} is more than "
                    f"{self.floor_drop} below the fp32 baseline's {reference:.4f}")
        if now.get("soft_energy_j") is None:
            return None
        for number, other in finished:
            rec = _at_fraction(other, epoch / epochs, max(r["epoch"] for r in other) if other else 1)
            if rec is None or rec.get("soft_energy_j") is None:
                continue
            better = rec["val_metric"] >= now["val_metric"] + self.margin
            if better and rec["soft_energy_j"] <= now["soft_energy_j"]:
                return (f"dominated at epoch {epoch}: trial {number} had validation metric "
                        f"{rec['val_metric']:.4f} (this {now['val_metric']:.4f}) at no more expected energy")
        return None
