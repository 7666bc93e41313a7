"""The calibration file beside a cascade (``cascade.calibration.json``): thresholds, each tier's price table,
the accuracy and joules it predicts, and a digest of every tier's export, so that a calibration of other
files is refused instead of trusted."""

from __future__ import annotations

import hashlib
import json
import math
from pathlib import Path
from typing import Any

from wattless.errors import CascadeError
from wattless.files import atomic_write, json_safe
from wattless.serve.config import CascadeSpec, calibration_path
from wattless.serve.pricing import PathPrices

__all__ = ["FORMAT", "file_digest", "write_calibration", "read_calibration", "thresholds_of", "prices_of"]

FORMAT = 1


def file_digest(path: Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def write_calibration(cascade_path: Path, record: dict[str, Any]) -> Path:
    out = calibration_path(cascade_path)
    atomic_write(out, json.dumps(json_safe({"format": FORMAT, **record}), indent=2, allow_nan=False))
    return out


def read_calibration(cascade_path: Path, spec: CascadeSpec) -> dict[str, Any]:
    """The calibration of ``spec``, checked against its tiers' files; CascadeError says how to make one."""
    path = calibration_path(cascade_path)
    again = f"run: wattless cascade calibrate {cascade_path} --workload NAME"
    if not path.is_file():
        raise CascadeError(f"cascade {cascade_path} is not calibrated ({path} does not exist); {again}")
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
        tiers = record["tiers"]
        ok = record.get("format") == FORMAT and isinstance(tiers, list)
    except (OSError, UnicodeDecodeError, ValueError, KeyError, TypeError) as exc:
        raise CascadeError(f"{path} is damaged ({type(exc).__name__}: {exc}); {again}") from None
    if not ok or len(tiers) != len(spec.tiers):
        raise CascadeError(f"{path} does not describe the {len(spec.tiers)} tiers of {cascade_path}; {again}")
    for i, (tier, held) in enumerate(zip(spec.tiers, tiers)):
        if held.get("model_sha256") != file_digest(tier.model) or held.get("target") != tier.target:
            raise CascadeError(f"{path} was calibrated for another tier {i} ({held.get('name')!r}): "
                               f"{tier.model} or its target changed since; {again}")
    return record


def thresholds_of(record: dict[str, Any]) -> list[float]:
    """Per tier but the last, the confidence at or above which it answers (inf: it never does)."""
    return [math.inf if t["threshold"] is None else float(t["threshold"]) for t in record["tiers"][:-1]]


def prices_of(record: dict[str, Any], cascade_path: Path) -> list[PathPrices]:
    try:
        return [PathPrices.from_json(t["prices"]) for t in record["tiers"]]
    except (KeyError, TypeError, ValueError) as exc:
        raise CascadeError(f"{calibration_path(cascade_path)} has a damaged price table ({exc}); run wattless "
                           f"cascade calibrate {cascade_path} again") from None
