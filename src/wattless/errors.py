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
    "SearchError",
    "StorageError",
    "ExportError",
    "ParityError",
    "KernelError",
    "ModelInputError",
    "BenchError",
    "DamagedFileError",
    "CascadeError",
    "ServeError",
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


class SearchError(WattlessError):
    """A search that cannot start or go on: no budget, an output folder that holds another study, a study
    in storage started with other settings."""


class StorageError(SearchError):
    """An Optuna storage URL that cannot be opened: malformed, unreachable, or its driver not installed."""


class ExportError(WattlessError):
    """A model or run directory that cannot be exported, or a file that is not a wattless export."""


class ParityError(ExportError):
    """An export whose outputs or metric differ from the PyTorch model beyond the stated tolerance."""


class KernelError(ExportError):
    """An export whose integer products this CPU's ONNX Runtime kernels cannot compute exactly."""


class ModelInputError(InputError):
    """An input an exported model cannot take: wrong shape, wrong dtype, NaN or infinite values."""


class BenchError(WattlessError):
    """A benchmark that cannot run as asked (no run for the workload, a runtime that fails to load)."""


class DamagedFileError(WattlessError):
    """A file wattless reads back (a model, a checkpoint, a run marker) that is empty, truncated, of another
    kind (a pickle where safetensors belongs) or of another architecture."""


class CascadeError(WattlessError):
    """A cascade file with an unknown key, a wrong type or a missing tier file, or a cascade that is not
    calibrated (or whose calibration no longer matches its tiers)."""


class ServeError(WattlessError):
    """A server that cannot start as asked (a bad option, a port in use) or a request it cannot serve."""
