"""wattless: make neural networks structurally stingy and prove it in joules."""

from wattless.energy import (
    Estimate, Measurement, Profile, Target, builtin_targets, calibrate, count, estimate, load_target, measure,
    profile, resolve_target, set_precision,
)
from wattless.errors import WattlessError
from wattless import export  # noqa: F401  (callable: wattless.export(model, example_inputs, path))
from wattless.api import Prepared, convert, energy_loss, prepare, step

__version__ = "0.1.0"
__all__ = [
    "Estimate", "Measurement", "Prepared", "Profile", "Target", "WattlessError", "builtin_targets", "calibrate", "count",
    "estimate", "load_target", "measure", "profile", "resolve_target", "set_precision",
    "prepare", "energy_loss", "step", "convert", "export",
]
