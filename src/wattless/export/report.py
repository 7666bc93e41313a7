"""What an export reports: the parity check's tolerance and result, and the ExportReport (``--json``)."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

__all__ = ["Tolerance", "Parity", "ExportReport"]


@dataclass(frozen=True)
class Tolerance:
    """What the parity check accepts. Integer kernels round exactly as the fake-quantized PyTorch model, but
    a value on a rounding boundary can land either side: ONNX Runtime's float kernels (attention, norms,
    GELU) differ from PyTorch's in the last bits, and the next quantizer turns a few of those into a code one
    step off, which later layers carry on. Deep encoders see many such flips (hence a cosine bound per
    sentence), a flip can move an early-exit decision, so a small share of inputs may differ.

    A requantized classifier (fused QLinearConv, int32 bias) is held to its answers, not its logits: the
    same class on ``min_agree`` of the inputs and the same metric; how many logits still match is reported."""

    atol: float = 1e-4  # classifiers: |onnx - torch| <= atol + rtol * max|torch| per input
    rtol: float = 1e-3
    min_cosine: float = 0.99  # encoders: cosine(onnx, torch) of each sentence's embedding
    min_within: float = 0.99  # share of eval inputs that must be within the bounds above
    min_agree: float = 0.99  # classifiers: share of eval inputs given the same class (argmax)
    metric_atol: float = 0.005  # |metric(onnx) - metric(torch)| on the eval split


@dataclass(frozen=True)
class Parity:
    passed: bool
    inputs: int
    within: float  # share of inputs within the output tolerance
    worst: float  # largest per-input |difference| (classifier) or 1 - cosine (encoder)
    metric_name: str
    metric_torch: float
    metric_onnx: float
    tolerance: Tolerance
    paths_agree: float | None = None  # share of inputs taking the same exit in both
    agree: float | None = None  # classifiers: share of inputs given the same class
    requantized: bool = False  # held to the same classes and metric, not to the logits

    def describe(self) -> str:
        t = self.tolerance
        need = "reported only: requantized" if self.requantized else f"need {100 * t.min_within:.0f}%"
        same = (f"; the same class for {100 * self.agree:.2f}% (need {100 * t.min_agree:.0f}%)"
                if self.agree is not None else "")
        return (f"{100 * self.within:.2f}% of {self.inputs} eval inputs within the output tolerance ({need}; worst "
                f"{self.worst:.3g}){same}; {self.metric_name} {self.metric_onnx:.4f} (ONNX) vs {self.metric_torch:.4f} "
                f"(PyTorch), allowed difference {t.metric_atol}")

    def to_json(self) -> dict[str, Any]:
        return {**asdict(self), "tolerance": asdict(self.tolerance)}


@dataclass
class ExportReport:
    path: Path
    kind: str  # "classifier" or "sentence-encoder"
    workload: str
    size_bytes: int
    parity: Parity | None
    layers: dict[str, str] = field(default_factory=dict)  # layer -> kernel it runs on
    removed: dict[str, dict[str, int]] = field(default_factory=dict)  # group -> {kept, total}
    exits: list[dict[str, Any]] = field(default_factory=list)
    routes: dict[str, int] = field(default_factory=dict)  # MoE block -> experts
    notes: list[str] = field(default_factory=list)
    int8_kernel: str = "portable"  # the form of the integer products (wattless.kernels)
    integer_products: dict[str, int] = field(default_factory=dict)  # weight form ("s8", "u8") -> products

    def to_json(self) -> dict[str, Any]:
        out = {k: v for k, v in asdict(self).items() if k != "parity"}
        out.update(path=str(self.path), parity=self.parity.to_json() if self.parity else None)
        return out
