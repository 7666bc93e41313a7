"""The exceptions a user can cause. The command line turns each into a one-line message and exit code 2."""

from __future__ import annotations

__all__ = [
    "WattlessError",
    "SpecError",
    "InputError",
    "TargetError",
    "UnknownTargetError",
    "MeasurementUnavailable",
    "CalibrationError",
    "RecipeError",
    "TrainingError",
    "WorkloadError",
]


class WattlessError(Exception):
    """Base class: something the user can fix. The message says what, why and the fix."""


class SpecError(WattlessError):
    """A model spec that does not import, names no factory, or whose factory fails."""


class InputError(WattlessError):
    """Example inputs the model rejects, or a malformed input shape."""


class TargetError(WattlessError):
    """A hardware target file that is missing, malformed or lacks a source for a coefficient."""


class UnknownTargetError(TargetError):
    """A target name that is neither built in nor a file."""


class MeasurementUnavailable(WattlessError):
    """This machine has no energy counter that can measure the requested device."""


class CalibrationError(WattlessError):
    """Measurements that cannot determine a target's coefficients."""


class WorkloadError(WattlessError):
    """An unknown workload name, or a workload spec that does not import or whose factory fails."""


class RecipeError(WattlessError):
    """A recipe file with an unknown key, a wrong type, or a combination that cannot apply to the model."""


class TrainingError(WattlessError):
    """Training that cannot go on (a NaN loss, a run directory that holds another run)."""
