"""Fakes and tiny models for tests, shipped so users can test their own targets and meters too."""

from __future__ import annotations

import time

import torch
from torch import nn

__all__ = ["FakeMeter", "ReplayMeter", "EarlyExitToy"]


class FakeMeter:
    """A meter that reports ``power_w`` x elapsed seconds, as a counter on a steady device would."""

    def __init__(self, power_w: float = 50.0, devices: tuple[str, ...] = ("gpu:0",)) -> None:
        self.power_w, self.devices = power_w, list(devices)
        self._start = 0.0

    def begin(self) -> None:
        self._start = time.perf_counter()

    def end(self) -> dict[str, float]:
        return {self.devices[0]: self.power_w * (time.perf_counter() - self._start)}


class ReplayMeter:
    """A meter that replays recorded window energies in order (joules), like Zeus's replaying test monitor."""

    def __init__(self, window_joules: list[float], devices: tuple[str, ...] = ("cpu:0",)) -> None:
        self._queue, self.devices = list(window_joules), list(devices)

    def begin(self) -> None:
        if not self._queue:
            raise RuntimeError("ReplayMeter ran out of recorded windows")

    def end(self) -> dict[str, float]:
        return {self.devices[0]: self._queue.pop(0)}


class EarlyExitToy(nn.Module):
    """Two blocks and an exit after the first: inputs whose first feature is positive stop early.

    Its path depends on the input, so per-input counts differ (for distribution tests).
    """

    def __init__(self, width: int = 32) -> None:
        super().__init__()
        self.block1 = nn.Linear(width, width)
        self.exit1 = nn.Linear(width, 4)
        self.block2 = nn.Sequential(nn.Linear(width, 4 * width), nn.ReLU(), nn.Linear(4 * width, width))
        self.head = nn.Linear(width, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # x: (1, width)
        h = torch.relu(self.block1(x))
        if bool(x[0, 0] > 0):
            return self.exit1(h)
        return self.head(self.block2(h))
