"""Measured joules per inference, read from a hardware energy counter through Zeus.

Counters are coarse (NVML updates every 20 to 100 ms and samples only part of the run on recent GPUs;
software counters carry 10 to 15 % noise; shared/REFERENCE.md), so an inference is repeated until one
window lasts ``min_window_s``, several windows are taken, and the median and spread are reported. Where
the machine has no counter, ``MeasurementUnavailable`` says so; no figure is ever invented.
"""

from __future__ import annotations

import statistics
import time
from dataclasses import dataclass
from typing import Any, Protocol

import torch
from torch import nn

from wattless.energy.count import run_model, split_inputs
from wattless.errors import MeasurementUnavailable

__all__ = ["Meter", "ZeusMeter", "Measurement", "measure", "default_meter"]

NO_COUNTER = (
    "no energy counter on this machine: Zeus found no NVIDIA GPU (NVML), no readable Intel/AMD RAPL "
    "counter (/sys/class/powercap), and no Apple silicon or Jetson counter; measured joules are not reported"
)


class Meter(Protocol):
    """Something that reads an energy counter over a window. ``end`` returns joules per device."""

    devices: list[str]

    def begin(self) -> None: ...

    def end(self) -> dict[str, float]: ...


class ZeusMeter:
    """The counters Zeus's ZeusMonitor can read on this machine (NVML, RAPL, Apple, Jetson)."""

    def __init__(self, gpu_indices: list[int] | None = None, cpu_indices: list[int] | None = None) -> None:
        from zeus.monitor import ZeusMonitor

        self._monitor = ZeusMonitor(gpu_indices=gpu_indices, cpu_indices=cpu_indices)
        soc = type(getattr(self._monitor, "soc", None)).__name__
        self.devices = (
            [f"gpu:{i}" for i in self._monitor.gpu_indices]
            + [f"cpu:{i}" for i in self._monitor.cpu_indices]
            + ([] if soc.startswith("Empty") or soc == "NoneType" else ["soc"])
        )
        self._key = "wattless"

    def begin(self) -> None:
        self._monitor.begin_window(self._key)

    def end(self) -> dict[str, float]:
        m = self._monitor.end_window(self._key)
        out = {f"gpu:{i}": e for i, e in m.gpu_energy.items()}
        out.update({f"cpu:{i}": e for i, e in (m.cpu_energy or {}).items()})
        out.update({f"dram:{i}": e for i, e in (m.dram_energy or {}).items()})
        if m.soc_energy is not None:
            out["soc"] = float(getattr(m.soc_energy, "total_energy", m.soc_energy))
        return out


def default_meter() -> Meter:
    """A Zeus meter over every counter found; MeasurementUnavailable if there is none."""
    try:
        meter = ZeusMeter()
    except Exception as exc:  # Zeus raises its own init errors per device library
        raise MeasurementUnavailable(f"{NO_COUNTER} ({type(exc).__name__}: {exc})") from None
    if not meter.devices:
        raise MeasurementUnavailable(NO_COUNTER)
    return meter


@dataclass(frozen=True)
class Measurement:
    """Measured joules per inference (median over windows) with its spread; never an estimate."""

    devices: tuple[str, ...]
    energy_j: float  # median over windows of (window joules / inferences in it)
    energy_j_min: float
    energy_j_max: float
    spread: float  # (max - min) / median over windows
    per_window_energy_j: tuple[float, ...]
    inferences_per_window: int  # median over windows
    window_s: float  # median window length
    latency_s: float  # median wall time per inference inside the windows
    kind: str = "measured"

    @property
    def label(self) -> str:
        return f"measured on {', '.join(self.devices)}"

    def summary(self) -> dict[str, Any]:
        return {
            "kind": self.kind, "devices": list(self.devices), "energy_j": self.energy_j,
            "energy_j_min": self.energy_j_min, "energy_j_max": self.energy_j_max, "spread": self.spread,
            "windows": len(self.per_window_energy_j), "inferences_per_window": self.inferences_per_window,
            "window_s": self.window_s, "latency_s": self.latency_s,
        }


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def measure(
    model: nn.Module,
    inputs: Any,
    *,
    meter: Meter | None = None,
    min_window_s: float = 2.0,
    windows: int = 5,
    warmup: int = 3,
) -> Measurement:
    """Measure joules per inference of ``model(inputs)`` where the inputs already live on their device.

    The batch in ``inputs`` is one call; joules are divided by the batch size, so pass the batch you serve.
    """
    meter = meter or default_meter()
    if windows < 1 or min_window_s <= 0:
        raise ValueError("windows must be >= 1 and min_window_s > 0")
    first = next(iter(model.parameters()), None)
    device = first.device if first is not None else torch.device("cpu")
    batch = len(split_inputs(inputs))
    model.eval()
    with torch.inference_mode():
        for _ in range(warmup):
            run_model(model, inputs)
        _sync(device)
        start = time.perf_counter()
        run_model(model, inputs)
        _sync(device)
        chunk = max(1, int(0.1 * min_window_s / max(time.perf_counter() - start, 1e-6)))
        energies, lengths, counts = [], [], []
        for _ in range(windows):
            meter.begin()
            t0, n = time.perf_counter(), 0
            while time.perf_counter() - t0 < min_window_s:  # chunks keep clock reads off a GPU's queue
                for _ in range(chunk):
                    run_model(model, inputs)
                _sync(device)
                n += chunk
            lengths.append(time.perf_counter() - t0)
            joules = sum(meter.end().values())
            energies.append(joules / (n * batch))
            counts.append(n * batch)
    med = statistics.median(energies)
    return Measurement(
        devices=tuple(meter.devices), energy_j=med, energy_j_min=min(energies), energy_j_max=max(energies),
        spread=(max(energies) - min(energies)) / med if med else 0.0, per_window_energy_j=tuple(energies),
        inferences_per_window=int(statistics.median(counts)), window_s=statistics.median(lengths),
        latency_s=statistics.median(l / c for l, c in zip(lengths, counts)),
    )
