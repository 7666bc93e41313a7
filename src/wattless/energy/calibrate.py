"""Fit a target's coefficients to measured windows by non-negative least squares over the counted features.

Each measurement is one model's counted work (features, as the estimate prices them) and its measured
joules per inference. Rows are scaled by the measurement, so the fit minimises *relative* error and a
small model counts as much as a big one. Coefficients whose features no measurement exercises keep the
base target's values; coefficients the measurements cannot tell apart are reported, not guessed.
"""

from __future__ import annotations

import datetime as _dt
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import tomli_w

from wattless.energy.count import Counts
from wattless.energy.estimate import PJ, sample_features
from wattless.energy.target import Target
from wattless.errors import CalibrationError

__all__ = ["CalibrationPoint", "CalibrationResult", "calibrate", "counts_features", "write_target"]


@dataclass(frozen=True)
class CalibrationPoint:
    name: str
    counts: Counts
    measured_j: float  # joules per inference, measured


@dataclass(frozen=True)
class CalibrationResult:
    target: Target
    fitted: dict[str, float]  # coefficient path -> fitted value
    stderr: dict[str, float]  # standard error of each fitted value (from the residuals)
    base: dict[str, float]  # the same coefficients before fitting
    rel_errors: dict[str, float]  # measurement name -> (estimate - measured) / measured after fitting
    rms_rel_error: float
    max_abs_rel_error: float
    base_rms_rel_error: float  # the base target's error on the same measurements

    def summary(self) -> dict:
        return {
            "target": self.target.name, "fitted": self.fitted, "stderr": self.stderr, "base": self.base,
            "rel_errors": self.rel_errors, "rms_rel_error": self.rms_rel_error,
            "max_abs_rel_error": self.max_abs_rel_error, "base_rms_rel_error": self.base_rms_rel_error,
        }


def counts_features(counts: Counts, target: Target) -> dict[str, float]:
    """Mean over inputs of the summed unit features: energy_j = sum(f * coefficient) * 1e-12."""
    total: dict[str, float] = defaultdict(float)
    for sample in counts.samples:
        for feats, _lat in sample_features(sample, target).values():
            for k, v in feats.items():
                total[k] += v / counts.n
    return dict(total)


def _rebuild(base: Target, fitted: dict[str, float], source_cite: str, name: str) -> Target:
    data = base.to_toml_dict()
    for path, value in fitted.items():
        node = data
        *parents, leaf = path.split(".")
        for p in parents:
            node = node[p]
        node[leaf] = float(value)
    paths = list(base.coefficients)
    sources = []
    for src in data["sources"]:
        covered = [p for p in paths if any(p == c or p.startswith(c + ".") for c in src["covers"])]
        keep = [p for p in covered if p not in fitted]
        if keep:
            sources.append({**src, "covers": keep})
    sources.append({"key": "calibration", "cite": source_cite, "covers": sorted(fitted)})
    data["sources"] = sources
    data["name"] = name
    data["description"] = f"{base.description} (calibrated)"
    return Target.model_validate(data)


def calibrate(
    points: list[CalibrationPoint], base: Target, *, fit: list[str] | None = None, name: str | None = None,
    machine: str = "this machine",
) -> CalibrationResult:
    """Fit ``fit`` (default: every coefficient the measurements exercise) of ``base`` to ``points``."""
    if len(points) < 2:
        raise CalibrationError("calibration needs measurements of at least 2 models")
    if any(p.measured_j <= 0 for p in points):
        raise CalibrationError("every measured energy must be > 0 joules")
    feats = [counts_features(p.counts, base) for p in points]
    exercised = sorted({k for f in feats for k, v in f.items() if v > 0})
    unknown = sorted(set(fit or []) - set(base.coefficients))
    if unknown:
        raise CalibrationError(f"cannot fit {', '.join(unknown)}: not coefficients of target {base.name}")
    cols = [k for k in exercised if fit is None or k in fit]
    if not cols:
        raise CalibrationError("the measurements exercise none of the coefficients asked for")
    coeffs = base.coefficients
    y = np.array([p.measured_j / PJ for p in points])
    fixed = np.array([sum(v * coeffs[k] for k, v in f.items() if k not in cols) for f in feats])
    X = np.array([[f.get(k, 0.0) for k in cols] for f in feats])
    if np.linalg.matrix_rank(X / y[:, None]) < len(cols):
        raise CalibrationError(
            f"{len(points)} measurements cannot separate the {len(cols)} coefficients {', '.join(cols)}: "
            "measure more models that differ in precision, size and memory traffic, or fit fewer "
            "coefficients (fit=[...] / --fit)"
        )
    from scipy.optimize import nnls  # imported here: scipy costs a second at startup

    w = 1.0 / y
    A = X * w[:, None]
    solution, _ = nnls(A, (y - fixed) * w)
    stderr = _stderr(A, (y - fixed) * w, solution)
    fitted = dict(zip(cols, map(float, solution)))
    when = _dt.date.today().isoformat()
    cite = (f"wattless calibrate, {when}: non-negative least squares over {len(points)} measured windows on "
            f"{machine} ({', '.join(p.name for p in points)}), starting from target {base.name}")
    target = _rebuild(base, fitted, cite, name or f"{base.name}-calibrated")
    est = X @ solution + fixed
    rel = (est - y) / y
    base_rel = (X @ np.array([coeffs[k] for k in cols]) + fixed - y) / y
    return CalibrationResult(
        target=target, fitted=fitted, stderr=dict(zip(cols, stderr)), base={k: coeffs[k] for k in cols},
        rel_errors={p.name: float(r) for p, r in zip(points, rel)},
        rms_rel_error=float(np.sqrt(np.mean(rel**2))), max_abs_rel_error=float(np.max(np.abs(rel))),
        base_rms_rel_error=float(np.sqrt(np.mean(base_rel**2))),
    )


def _stderr(A: np.ndarray, b: np.ndarray, x: np.ndarray) -> list[float]:
    """Standard errors of a least-squares fit: sqrt(diag(s^2 (A'A)^-1)), s^2 the residual variance."""
    dof = max(A.shape[0] - A.shape[1], 1)
    s2 = float(np.sum((A @ x - b) ** 2)) / dof
    cov = s2 * np.linalg.pinv(A.T @ A)
    return [float(np.sqrt(max(v, 0.0))) for v in np.diag(cov)]


def write_target(target: Target, path: str | Path) -> Path:
    """Write a target file that load_target reads back to an equal Target."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(tomli_w.dumps(target.to_toml_dict()), encoding="utf-8")
    tmp.replace(path)
    return path
