"""What a trained baseline depends on, as digests: the data, the model's code and initial weights, and the
training settings. The baseline cache is keyed by them, so a workload whose data or model changed under the
same name trains its baseline again instead of reusing a stale one."""

from __future__ import annotations

import hashlib
import inspect
import json
from collections.abc import Callable
from typing import Any

import torch
from torch import nn

__all__ = ["split_digest", "model_digest", "code_digest", "baseline_key", "FULL_BYTES", "SAMPLE_ROWS"]

FULL_BYTES = 256 * 2**20  # a split up to this size is hashed whole; a larger one by a sample of its rows
SAMPLE_ROWS = 4096


def _tensor_bytes(t: torch.Tensor) -> bytes:
    flat = t.detach().cpu().contiguous().reshape(-1)
    return flat.view(torch.uint8).numpy().tobytes()  # any dtype (bf16, bool) as its raw bytes


def _rows(n: int, size: int) -> torch.Tensor | None:
    """Every row when the data is small, else SAMPLE_ROWS rows spread evenly (first and last included)."""
    if size <= FULL_BYTES or n <= SAMPLE_ROWS:
        return None
    return torch.linspace(0, n - 1, SAMPLE_ROWS).round().long().unique()


def _column_digest(values: Any) -> str | None:
    """A digest of one column of a split (inputs or targets): a tensor or a list of strings; None otherwise."""
    h = hashlib.sha256()
    if values is None:
        return "none"
    if isinstance(values, torch.Tensor):
        h.update(f"{values.dtype}{tuple(values.shape)}".encode())
        rows = _rows(len(values), values.numel() * values.element_size()) if values.dim() else None
        h.update(_tensor_bytes(values if rows is None else values[rows]))
        return h.hexdigest()
    if isinstance(values, list) and all(isinstance(v, str) for v in values):
        h.update(f"str[{len(values)}]".encode())
        rows = _rows(len(values), sum(len(v) for v in values))
        for i in range(len(values)) if rows is None else rows.tolist():
            h.update(values[i].encode("utf-8", "surrogatepass") + b"\0")
        return h.hexdigest()
    return None


def split_digest(split: Any) -> str | None:
    """A digest of a split's inputs and targets (a sample of rows plus the sizes, for big data); None when
    the split holds something else (a loader, tensors in a dict), which has no reliable digest."""
    inputs, targets = getattr(split, "inputs", None), getattr(split, "targets", None)
    parts = [_column_digest(inputs), _column_digest(targets)]
    if inputs is None or None in parts:
        return None
    return hashlib.sha256("".join(parts).encode()).hexdigest()


def _source(obj: Any) -> str:
    """The source of a function or class, or its qualified name where the source is not available."""
    try:
        return inspect.getsource(obj)
    except (OSError, TypeError):
        return f"{getattr(obj, '__module__', '')}.{getattr(obj, '__qualname__', repr(type(obj)))}"


def code_digest(fn: Callable[..., Any]) -> str:
    """A function's source and that of the functions its closure holds (the build inside `seeded_builder`)."""
    parts = [_source(fn)]
    for cell in getattr(fn, "__closure__", None) or ():
        try:
            held = cell.cell_contents
        except ValueError:  # an empty cell
            continue
        parts.append(_source(held) if callable(held) else repr(type(held)))
    return hashlib.sha256("\n".join(parts).encode()).hexdigest()


def model_digest(model: nn.Module) -> str:
    """The architecture (its repr), the source of every class outside torch that it is made of (forward
    included) and the initial parameters and buffers."""
    h = hashlib.sha256(repr(model).encode())
    classes = sorted({type(m) for m in model.modules()}, key=lambda c: f"{c.__module__}.{c.__qualname__}")
    for cls in classes:
        if not cls.__module__.startswith("torch."):
            h.update(_source(cls).encode())
    for name, value in model.state_dict().items():
        if isinstance(value, torch.Tensor):
            h.update(f"{name}:{value.dtype}{tuple(value.shape)}".encode())
            h.update(_tensor_bytes(value))
    return h.hexdigest()


def baseline_key(workload: Any, model: nn.Module, settings: dict[str, Any]) -> dict[str, str] | None:
    """Every digest a trained baseline depends on; None when a split has no reliable digest (then it is
    not cached)."""
    splits = {name: split_digest(getattr(workload, name)) for name in ("train", "val", "test")}
    if None in splits.values():
        return None
    return {**{f"{k}_data": v for k, v in splits.items()}, "model": model_digest(model),
            "builder": code_digest(workload.build_model), "evaluate": code_digest(workload.evaluate),
            "prepare_inputs": code_digest(workload.prepare_inputs),
            "settings": hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()}
