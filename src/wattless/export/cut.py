"""Structurally removed units cut out of the tensors: smaller shapes, fewer MACs.

Which units a pruned model can drop is the pruning technique's answer (wattless.techniques.prune
structural_cuts); this module turns it into the indices each tensor keeps."""

from __future__ import annotations

from typing import Any

import numpy as np
from torch import nn

from wattless.techniques.prune import is_mac, structural_cuts, weight_axes

__all__ = ["Keep", "find_removable"]


class Keep:
    """Indices kept along each (module, tensor, axis) touched by a structured pruning group."""

    def __init__(self) -> None:
        self.index: dict[tuple[int, str, int], np.ndarray] = {}
        self.removed: dict[str, dict[str, int]] = {}

    def take(self, module: nn.Module, tensor: str, array: np.ndarray) -> np.ndarray:
        for (mid, name, axis), idx in self.index.items():
            if mid == id(module) and name == tensor:
                array = np.take(array, idx, axis=axis)
        return array

    def take_rows(self, module: nn.Module, array: np.ndarray) -> np.ndarray:
        """A per-output-channel vector (scales, norm statistics) cut like the weight's rows."""
        idx = self.index.get((id(module), "weight", 0))
        return array if idx is None else np.take(array, idx, axis=0)

    def out_channels(self, module: nn.Module, rank: int) -> tuple[int, int] | None:
        """(axis, size) of a Linear/Conv's output channels after the cut ((B, C, ...) for a conv, (..., C) for a
        linear); None for any other module."""
        if not is_mac(module):
            return None
        out_axis = weight_axes(module)[0]
        idx = self.index.get((id(module), "weight", out_axis))
        size = len(idx) if idx is not None else module.weight.shape[out_axis]
        return (1 if isinstance(module, nn.modules.conv._ConvNd) else rank - 1), int(size)

    def keep_units(self, module: nn.Module, tensor: str, axis: int, units: np.ndarray, block: int = 1) -> None:
        """Keep ``units`` (each ``block`` entries long) along one axis of ``module.<tensor>``."""
        self.index[(id(module), tensor, axis)] = (units[:, None] * block + np.arange(block)[None, :]).reshape(-1)


def find_removable(model: nn.Module, example: Any = None) -> Keep:
    """Units whose every consumer column is zero carry nothing: cut them from producers, norms and consumers."""
    keep = Keep()
    for cut in structural_cuts(model, example):
        units = cut.kept.numpy()
        for s in cut.slices:
            keep.keep_units(s.module, s.tensor, s.axis, units, s.block)
        keep.removed[cut.group] = {"kept": int(len(units)), "total": int(cut.total)}
    return keep
