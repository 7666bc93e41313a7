"""The rows: one BenchRow per runtime and batch size from its best round, the speedups and the guard against
ONNX Runtime fp32, and the result JSON with this machine's description."""

from __future__ import annotations

import os
import platform
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

from wattless.baselines import BASELINES
from wattless.bench.plan import Plan
from wattless.bench.prepare import Prepared
from wattless.bench.runtimes import BASELINE_OF, GUARD_BASELINE
from wattless.kernels import cpu_features, cpu_name, u8s8_exact

__all__ = ["BenchRow", "bench_rows", "result_json"]


@dataclass(frozen=True)
class BenchRow:
    """One runtime at one batch size: latency in ms (median of the best round), memory in MB, energy in
    joules per inference (``energy_j`` estimated per built-in target; ``measured_energy`` on the first batch
    size, where this machine has a counter)."""

    runtime: str
    batch: int
    latency_ms_p50: float
    latency_ms_p95: float
    latency_ms_mean: float
    throughput_per_s: float
    peak_rss_mb: float | None
    rss_before_load_mb: float
    repeats: int
    rounds: int
    size_mb: float | None
    metric: float | None
    metric_name: str
    metrics: dict[str, float]
    energy_kind: str
    energy_j: dict[str, float]
    measured_energy: dict[str, Any] | None
    baseline: str | None
    note: str | None
    calibration: str | None
    speedup_vs_ort_fp32: float | None = None
    slower_than_ort_fp32: bool | None = None  # the guard's verdict, on the wattless rows only

    def to_json(self) -> dict[str, Any]:
        out = asdict(self)
        if self.slower_than_ort_fp32 is None:
            del out["slower_than_ort_fp32"]
        return out


def bench_rows(wl: Any, plan: Plan, prepared: Prepared, firsts: dict[str, dict[str, Any]],
               timings: dict[tuple[str, int], list[dict[str, Any]]], notes: set[str]) -> list[BenchRow]:
    """One row per runtime and batch size, from its best round (the lowest median)."""
    rows_of = {BASELINES[n].label: r for n, r in prepared.defined.items()}
    rows = []
    for name in plan.runtimes:
        got = firsts[name]
        defn = rows_of.get(name, {})
        metrics = defn.get("metrics") or got["metrics"] or {}
        if got["measured_note"]:
            notes.add(got["measured_note"])
        for b in plan.batches:
            best = min(timings[(name, b)], key=lambda r: r["latency_ms_p50"])
            rows.append(BenchRow(
                runtime=name, **best, rounds=len(timings[(name, b)]), size_mb=prepared.sizes.get(name),
                metric=metrics.get(wl.metric_name), metric_name=wl.metric_name, metrics=metrics,
                energy_kind="estimated", energy_j=prepared.energies.get(name, {}),
                measured_energy=got["measured"] if b == plan.batches[0] else None,
                baseline=BASELINE_OF.get(name), note=defn.get("note") or prepared.kernel_notes.get(name),
                calibration=defn.get("calibration")))
    return rows


def _guard(rows: list[BenchRow], batches: list[int]) -> tuple[dict[str, Any], list[BenchRow]]:
    """Per batch: is the wattless export slower than ONNX Runtime fp32, and by what ratio (the wattless rows
    carry the verdict too)."""
    out = {}
    for b in batches:
        mine = next((r for r in rows if r.runtime == "wattless" and r.batch == b), None)
        base = next((r for r in rows if r.runtime == GUARD_BASELINE and r.batch == b), None)
        if mine is None or base is None:
            continue
        speedup = base.latency_ms_p50 / mine.latency_ms_p50
        out[str(b)] = {"slower_than_ort_fp32": speedup < 1.0, "speedup_vs_ort_fp32": speedup}
        rows = [replace(r, slower_than_ort_fp32=speedup < 1.0) if r is mine else r for r in rows]
    return out, rows


def _with_speedups(rows: list[BenchRow]) -> list[BenchRow]:
    """Each row's speed against ONNX Runtime fp32 at the same batch size (None without that row)."""
    out = []
    for row in rows:
        base = next((r for r in rows if r.runtime == GUARD_BASELINE and r.batch == row.batch), None)
        out.append(replace(row, speedup_vs_ort_fp32=base.latency_ms_p50 / row.latency_ms_p50 if base else None))
    return out


def result_json(wl: Any, rows: list[BenchRow], plan: Plan, load_start: tuple, notes: list[str],
                export_report: Any, run: Path | None) -> dict[str, Any]:
    import onnxruntime
    import torch

    guard, rows = _guard(_with_speedups(rows), plan.batches)
    return {
        "workload": wl.name, "metric_name": wl.metric_name, "run": str(run) if run else None,
        "threads": plan.threads, "batches": plan.batches, "warmup": plan.warmup, "repeats": plan.repeats,
        "seq_len": plan.seq_len if plan.encoder else None,
        "rounds": plan.rounds,
        "isolated_processes": plan.isolate,
        "machine": {"cpu": cpu_name(), "cpu_features": cpu_features(), "u8s8_exact": u8s8_exact(),
                    "cores": os.cpu_count(),
                    "python": platform.python_version(), "torch": torch.__version__,
                    "onnxruntime": onnxruntime.__version__,
                    "load_average_start": list(load_start), "load_average_end": list(os.getloadavg())},
        "energy_kind": "estimated",
        "measured_note": "; ".join(notes) if notes else None,
        "guard": guard,
        "export": export_report.to_json() if export_report is not None else None,
        "rows": [r.to_json() for r in rows],
    }
