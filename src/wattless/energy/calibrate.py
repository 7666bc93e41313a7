"""Fit a target's coefficients to measured windows by non-negative least squares over the counted features.

Each measurement is one model's counted work (features, as the estimate prices them) and its measured
joules per inference. Rows are scaled by the measurement, so the fit minimises *relative* error and a
small model counts as much as a big one. Coefficients whose features no measurement exercises keep the
base target's values; coefficients the measurements cannot tell apart are reported, not guessed.
"""

from __future__ import annotations

import datetime as _dt
import math
import re
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import tomli_w

from wattless.files import atomic_write
from wattless.energy.count import Counts
from wattless.energy.estimate import PJ, sample_features
from wattless.energy.target import Target
from wattless.errors import CalibrationError

__all__ = ["CalibrationPoint", "CalibrationResult", "calibrate", "check_measurement_rows", "counts_features",
           "write_target"]

_OPTIONAL_TEXT = ("weight_precision", "act_precision", "name")


def check_measurement_rows(rows: object, where: str) -> None:
    """A measurements file is a list of {spec, measured_j > 0 finite, input_shape?, *_precision?, name?}."""
    if not isinstance(rows, list) or not all(isinstance(r, dict) for r in rows):
        raise CalibrationError(f"{where}: expected a JSON list of objects with at least `spec` and `measured_j`")
    for i, row in enumerate(rows):
        if not isinstance(row.get("spec"), str):
            raise CalibrationError(f"{where}: record {i}: `spec` must be a model spec (a string)")
        value = row.get("measured_j")
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value <= 0:
            raise CalibrationError(f"{where}: record {i}: `measured_j` must be a finite number of joules > 0, "
                                   f"got {value!r}")
        for key in _OPTIONAL_TEXT:
            if row.get(key) is not None and not isinstance(row[key], str):
                raise CalibrationError(f"{where}: record {i}: `{key}` must be a string, got {row[key]!r}")
        shape = row.get("input_shape")
        if shape is not None and not isinstance(shape, str):
            if not (isinstance(shape, list) and all(isinstance(d, int) and not isinstance(d, bool) for d in shape)):
                raise CalibrationError(f"{where}: record {i}: `input_shape` must be \"1,3,32,32\" or [1, 3, 32, 32]")
            row["input_shape"] = ",".join(str(d) for d in shape)


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
    if name is not None and not re.fullmatch(r"[a-z0-9][a-z0-9._-]*", name):
        raise CalibrationError(f"target name {name!r} must be lower-case letters, digits, '.', '_' or '-', "
                               "starting with a letter or digit (e.g. my-board)")
    if len(points) < 2:
        raise CalibrationError("calibration needs measurements of at least 2 models")
    if any(not (math.isfinite(p.measured_j) and p.measured_j > 0) for p in points):
        raise CalibrationError("every measured energy must be a finite number > 0 joules")
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
    if path.is_dir():
        raise CalibrationError(f"{path} is a directory; give the path of the target file to write")
    atomic_write(path, tomli_w.dumps(target.to_toml_dict()))
    return path
