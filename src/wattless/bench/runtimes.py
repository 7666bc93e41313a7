"""The runtimes bench knows by name: the baselines of wattless.baselines and the wattless export."""

from __future__ import annotations

from wattless.baselines import BASELINES

__all__ = ["RUNTIMES", "AS_WRITTEN", "OWN", "GUARD_BASELINE", "WATTLESS_FILE", "BASELINE_OF"]

RUNTIMES = ("torch-fp32", "torch-dynamic-int8", "ort-fp32", "ort-dynamic-int8", "ort-static-int8", "wattless")
# on request: the export exactly as stored, in plain ONNX Runtime (its portable form; wattless.kernels), beside
# the wattless row (the fastest exact form for this CPU): the cost of a file that is right on every CPU
AS_WRITTEN = "wattless-as-written"
OWN = ("wattless", AS_WRITTEN)
GUARD_BASELINE = "ort-fp32"
WATTLESS_FILE = "wattless.onnx"
# every runtime but wattless is a baseline of wattless.baselines, its bench row labelled by its runtime
BASELINE_OF = {b.label: b.name for b in BASELINES.values()}
