"""Count a model's work, price it in joules on hardware targets, measure it where a counter exists."""

from wattless.energy.calibrate import CalibrationPoint, CalibrationResult, calibrate, write_target
from wattless.energy.count import Counts, OpCount, UnitCount, count, count_each
from wattless.energy.decode import DecodeCounts, DecodeProfile, count_decode, profile_decode
from wattless.energy.estimate import Estimate, UnitEstimate, estimate, price, sample_features
from wattless.energy.measure import Measurement, Meter, ZeusMeter, measure
from wattless.energy.precision import Precision, parse_precision
from wattless.energy.profile import Profile, profile, set_precision
from wattless.energy.target import Target, builtin_targets, load_target, resolve_target

__all__ = [
    "CalibrationPoint", "CalibrationResult", "Counts", "DecodeCounts", "DecodeProfile", "count_decode", "profile_decode", "Estimate", "Measurement", "Meter", "OpCount", "Precision",
    "Profile", "Target", "UnitCount", "UnitEstimate", "ZeusMeter", "builtin_targets", "calibrate", "count", "count_each",
    "estimate", "load_target", "measure", "parse_precision", "price", "profile", "resolve_target",
    "sample_features", "set_precision", "write_target",
]
