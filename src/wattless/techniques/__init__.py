"""Efficiency techniques, one module each, applied through one door: apply_(model, config, context) to
prepare, apply_(model, config, step="convert") (or convert_(model)) for the deployed form.

Importing this package registers every technique's handlers.
"""

from wattless.techniques.act_sparsity import ActSparsityConfig
from wattless.techniques.analog import AnalogConfig
from wattless.techniques.base import ApplyContext, Technique, TechniqueConfig, apply_, convert_, full_path
from wattless.techniques.distill import DistillConfig
from wattless.techniques.early_exit import ExitConfig
from wattless.techniques.moe import MoEConfig
from wattless.techniques.prune import PruneConfig
from wattless.techniques.quantize import QuantConfig
from wattless.techniques.spiking import SpikingConfig

__all__ = ["ActSparsityConfig", "AnalogConfig", "SpikingConfig", "ApplyContext", "DistillConfig", "ExitConfig", "MoEConfig", "PruneConfig", "QuantConfig", "Technique",
           "TechniqueConfig", "apply_", "convert_", "full_path"]
