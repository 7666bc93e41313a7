"""Limits a frontier point must keep (size, latency, an energy budget), as Optuna constraints."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

from wattless.errors import SearchError

__all__ = ["Constraints"]


@dataclass(frozen=True)
class Constraints:
    """Limits a frontier point must keep. Each becomes an Optuna constraint (value <= 0: kept), relative to
    its limit so that they compare across units."""

    max_size_bytes: float | None = None  # weights at their deployed precision, every unit counted
    max_latency_s: float | None = None  # estimated on the search target
    energy_budget_uj: float | None = None  # estimated microjoules per inference on the search target

    def __post_init__(self) -> None:
        for name, value in asdict(self).items():
            if value is not None and not (math.isfinite(value) and value > 0):
                raise SearchError(f"constraint {name} must be a positive number, got {value}")

    def values(self, point: dict[str, Any], target: str) -> dict[str, float]:
        out = {}
        if self.max_size_bytes is not None:
            out["size"] = point["size_bytes"] / self.max_size_bytes - 1
        if self.max_latency_s is not None:
            out["latency"] = point["latency_s"][target] / self.max_latency_s - 1
        if self.energy_budget_uj is not None:
            out["energy"] = point["energy_j"][target] * 1e6 / self.energy_budget_uj - 1
        return out

    def to_dict(self) -> dict[str, float | None]:
        return asdict(self)
