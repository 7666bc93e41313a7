"""One call from a model to its counted work, estimated joules on targets and, where possible, measured joules."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import numpy as np
from torch import nn

from wattless.energy.count import Counts, count
from wattless.energy.estimate import Estimate, estimate
from wattless.energy.measure import Measurement, Meter, measure
from wattless.energy.target import Target, builtin_targets, resolve_target
from wattless.errors import MeasurementUnavailable

__all__ = ["Profile", "profile", "set_precision"]


def set_precision(model: nn.Module, weight: str | None = None, act: str | None = None) -> nn.Module:
    """Declare the precision every module of ``model`` runs at (what a deployed int8 model does), in place."""
    from wattless.energy.precision import parse_precision

    for module in model.modules():
        if weight is not None:
            module.wattless_weight_precision = parse_precision(weight).name
        if act is not None:
            module.wattless_act_precision = parse_precision(act).name
    return model


def _dist(values: list[float]) -> dict[str, float]:
    arr = np.asarray(values, dtype=float)
    return {"mean": float(arr.mean()), "p50": float(np.percentile(arr, 50)), "p95": float(np.percentile(arr, 95))}


@dataclass
class Profile:
    """Counted work of a model, its estimates per target, and a measurement where a counter exists."""

    counts: Counts
    estimates: dict[str, Estimate]
    measurement: Measurement | None = None
    measurement_note: str | None = None

    @property
    def macs(self) -> float:
        return float(np.mean(self.counts.total("macs")))

    @property
    def effective_macs(self) -> float:
        return float(np.mean(self.counts.total("effective_macs")))

    def to_json(self) -> dict[str, Any]:
        layers = self.counts.mean_records()
        for rec in layers:
            rec["energy_j"], rec["latency_s"] = {}, {}
        by_name = {rec["name"]: rec for rec in layers}
        for name, est in self.estimates.items():
            for unit in est.units:
                by_name[unit.name]["energy_j"][name] = unit.energy_j
                by_name[unit.name]["latency_s"][name] = unit.latency_s
        return {
            "macs": int(round(self.macs)),
            "effective_macs": self.effective_macs,
            "params": self.counts.params,
            "inputs": self.counts.n,
            "macs_per_input": _dist(self.counts.total("macs")),
            "energy_kind": "estimated",
            "energy_j": {name: e.energy_j for name, e in self.estimates.items()},
            "latency_s": {name: e.latency_s for name, e in self.estimates.items()},
            "energy": {name: e.summary() for name, e in self.estimates.items()},
            "measured": self.measurement.summary() if self.measurement else None,
            "measured_note": self.measurement_note,
            "layers": layers,
        }


def profile(
    model: nn.Module,
    inputs: Any,
    targets: Iterable[str | Target] | None = None,
    *,
    measure_energy: bool = False,
    meter: Meter | None = None,
    max_inputs: int = 64,
) -> Profile:
    """Count ``model`` on ``inputs`` and estimate joules per inference on each target (all built-ins by default).

    With ``measure_energy``, also measure joules per inference with this machine's counter; where there
    is none, ``measurement_note`` says so and no figure is reported.
    """
    resolved = [resolve_target(t) for t in (targets or builtin_targets().values())]
    counts = count(model, inputs, max_inputs=max_inputs)
    estimates = {t.name: estimate(counts, t) for t in resolved}
    result = Profile(counts=counts, estimates=estimates)
    if measure_energy:
        try:
            result.measurement = measure(model, inputs, meter=meter)
        except MeasurementUnavailable as exc:
            result.measurement_note = str(exc)
    return result
