"""What a user would reach for instead of wattless, run on the same model and data, for side-by-side figures:
PyTorch's post-training dynamic int8, ONNX Runtime fp32, and ONNX Runtime's post-training quantization
(``quantize_dynamic`` and ``quantize_static`` in QDQ format). Needs the `onnx` extra."""

from __future__ import annotations

import copy
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

__all__ = ["export_onnx", "OrtModule", "ort_quantize_dynamic", "ort_quantize_static", "torch_dynamic_int8"]


def _as_kwargs(example: Any) -> dict[str, torch.Tensor]:
    if isinstance(example, Mapping):
        return dict(example)
    return {"x": example}


def export_onnx(model: nn.Module, example: Any, path: str | Path) -> Path:
    """Export with torch's dynamo exporter; batch (and sequence, for token inputs) stay dynamic."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    kwargs = _as_kwargs(example)
    dims = {name: ({0: "batch", 1: "seq"} if t.dtype == torch.int64 and t.dim() == 2 else {0: "batch"})
            for name, t in kwargs.items()}
    model = copy.deepcopy(model).eval()
    wrapped = model if isinstance(example, Mapping) else _Positional(model)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(wrapped, (), str(path), kwargs=kwargs, input_names=list(kwargs),
                          dynamic_shapes=dims, dynamo=True, verbose=False)
    return path


class _Positional(nn.Module):
    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> Any:
        return self.model(x)


class OrtModule(nn.Module):
    """An ONNX Runtime session behind a module's forward, so a workload's evaluate runs it unchanged.

    Returns the first output as a tensor (logits for a classifier, hidden states for an encoder).
    """

    def __init__(self, path: str | Path, threads: int | None = None) -> None:
        super().__init__()
        import onnxruntime as ort

        options = ort.SessionOptions()
        if threads:
            options.intra_op_num_threads = threads
        options.log_severity_level = 3
        self.path = Path(path)
        self.session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        self.input_names = [i.name for i in self.session.get_inputs()]

    def forward(self, *args: torch.Tensor, **kwargs: torch.Tensor) -> torch.Tensor:
        feed = dict(zip(self.input_names, args)) | kwargs
        arrays = {k: v.detach().cpu().numpy() for k, v in feed.items() if k in self.input_names}
        return torch.from_numpy(self.session.run(None, arrays)[0])


def ort_quantize_dynamic(fp32: str | Path, out: str | Path) -> Path:
    """ONNX Runtime's post-training dynamic quantization (int8 weights, activations quantized at run time)."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    quantize_dynamic(str(fp32), str(out), weight_type=QuantType.QInt8)
    return Path(out)


class _Reader:
    def __init__(self, batches: Sequence[dict[str, np.ndarray]]) -> None:
        self._it = iter(batches)

    def get_next(self) -> dict[str, np.ndarray] | None:
        return next(self._it, None)


def ort_quantize_static(fp32: str | Path, out: str | Path, calibration: Sequence[Any]) -> Path:
    """ONNX Runtime's post-training static quantization, QDQ format, MinMax calibration on the given inputs."""
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static

    feeds = [{k: v.detach().cpu().numpy() for k, v in _as_kwargs(c).items()} for c in calibration]
    quantize_static(str(fp32), str(out), _Reader(feeds), quant_format=QuantFormat.QDQ,
                    activation_type=QuantType.QInt8, weight_type=QuantType.QInt8, per_channel=True,
                    calibrate_method=CalibrationMethod.MinMax)
    return Path(out)


def torch_dynamic_int8(model: nn.Module) -> nn.Module:
    """PyTorch's post-training dynamic int8 quantization of every Linear (its documented CPU path)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return torch.ao.quantization.quantize_dynamic(copy.deepcopy(model).eval(), {nn.Linear}, dtype=torch.qint8)
