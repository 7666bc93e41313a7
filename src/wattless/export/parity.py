"""The parity check: the workload's test split through ONNX Runtime and through the PyTorch model."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from wattless.errors import ParityError
from wattless.export.report import Parity, Tolerance

__all__ = ["SAME_CLASS", "Session", "check_classifier", "check_encoder", "check_forms", "encoder_metrics"]


class Session(nn.Module):
    """An exported classifier behind a module forward, for the workload's evaluate: a file, or a runtime
    already loaded (wattless.runtime.ExportedModel)."""

    def __init__(self, runtime: Any) -> None:
        super().__init__()
        from wattless.runtime import load

        self.runtime = load(runtime) if isinstance(runtime, (str, Path)) else runtime

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.from_numpy(self.runtime.run(x.detach().cpu().numpy()).outputs)


SAME_CLASS = "agreement"  # the metric of a workload whose targets are the PyTorch model's own classes


def _run_both(model: nn.Module, runtime: Any, x: torch.Tensor) -> tuple[np.ndarray, np.ndarray, list[np.ndarray]]:
    """(PyTorch outputs, ONNX outputs, per batch: whether each input took the same exit) on x."""
    ref, got, agree = [], [], []
    with torch.no_grad():
        for i in range(0, len(x), 256):
            batch = x[i : i + 256]
            ref.append(model(batch).float().numpy())
            result = runtime.run(batch.numpy())
            got.append(result.outputs)
            if getattr(model, "last_exits", None) is not None and result.paths and result.paths[0].exit is not None:
                agree.append(model.last_exits.cpu().numpy() == np.array([p.exit for p in result.paths]))
    return np.concatenate(ref), np.concatenate(got), agree


def check_classifier(model: nn.Module, path: Path, workload: Any, tol: Tolerance,
                     requantized: bool = False) -> Parity:
    from wattless.runtime import load

    runtime = load(path)
    ref, got, agree = _run_both(model, runtime, workload.test.inputs)
    diff = np.abs(ref - got).reshape(len(ref), -1).max(1)
    bound = tol.atol + tol.rtol * np.abs(ref).reshape(len(ref), -1).max(1)
    name = workload.metric_name
    metric_torch = workload.evaluate(model, workload.test)[name]
    metric_onnx = workload.evaluate(Session(runtime), workload.test)[name]
    within = float((diff <= bound).mean())
    same = float((ref.argmax(-1) == got.argmax(-1)).mean())
    passed = (within >= tol.min_within or requantized) and same >= tol.min_agree and (
        abs(metric_onnx - metric_torch) <= tol.metric_atol
        # agreement with the PyTorch model's own classes (wattless.export without targets) is the same-class
        # check itself: held to min_agree, not to metric_atol (0.005 on 32 inputs would forbid a single flip)
        or (name == SAME_CLASS and metric_onnx >= tol.min_agree))
    return Parity(passed, len(ref), within, float(diff.max()), name, float(metric_torch), float(metric_onnx),
                  tol, float(np.concatenate(agree).mean()) if agree else None, same, requantized)


def check_encoder(model: nn.Module, path: Path, workload: Any, tol: Tolerance,
                  requantized: bool = False) -> Parity:
    from wattless.runtime import load
    from wattless.workloads.minilm import embed, load_tokenizer

    sentences = list(workload.test.inputs)
    runtime = load(path)
    got = runtime.embed(sentences)
    ref = embed(model, load_tokenizer(), sentences).numpy()
    cos = (got * ref).sum(1) / np.maximum(np.linalg.norm(ref, axis=1) * np.linalg.norm(got, axis=1), 1e-12)
    name = workload.metric_name
    metric_torch = workload.evaluate(model, workload.test)[name]
    metric_onnx = encoder_metrics(runtime, workload)[name]
    within = float((cos >= tol.min_cosine).mean())
    passed = within >= tol.min_within and abs(metric_onnx - metric_torch) <= tol.metric_atol
    return Parity(passed, len(cos), within, float(1 - cos.min()), name, float(metric_torch), float(metric_onnx), tol)


def check_forms(path: Path, workload: Any, meta: dict[str, Any]) -> None:
    """Where the runtime turns the file's u8 weights to s8 for this CPU, both forms must give the same
    outputs bit for bit (their int32 accumulators are equal), so the file as written is checked too."""
    from wattless.kernels import u8s8_exact
    from wattless.runtime import load

    if not (meta["integer_products"].get("u8") and u8s8_exact()):
        return  # the runtime runs the file as written: the parity check ran that form
    fast, written = load(path), load(path, kernels="as-written")
    if meta["kind"] == "sentence-encoder":
        sentences = list(workload.test.inputs)[:16]
        a, b = fast.embed(sentences), written.embed(sentences)
    else:
        x = workload.test.inputs[:64].numpy()
        a, b = fast(x), written(x)
    if not np.array_equal(a, b):
        raise ParityError(f"the export's portable form (u8 weights) and this CPU's u8 x s8 form differ (largest "
                          f"difference {float(np.abs(a - b).max()):.3g}); nothing was written. Please report this: "
                          "both are exact integer products")


def encoder_metrics(runtime: Any, workload: Any) -> dict[str, float]:
    """The ``minilm`` workload's fidelity metrics of an exported encoder's embeddings of its test split."""
    from wattless.workloads.minilm import fidelity, reference_embeddings

    sentences = list(workload.test.inputs)
    return fidelity(torch.from_numpy(runtime.embed(sentences)), reference_embeddings(sentences))
