"""wattless: make neural networks structurally stingy and prove it in joules."""

from wattless.energy import (
    Estimate, Measurement, Profile, Target, builtin_targets, calibrate, count, estimate, load_target, measure,
    profile, resolve_target, set_precision,
)
from wattless.errors import WattlessError

__version__ = "0.1.0"
__all__ = [
    "Estimate", "Measurement", "Profile", "Target", "WattlessError", "builtin_targets", "calibrate", "count",
    "estimate", "load_target", "measure", "profile", "resolve_target", "set_precision",
]
