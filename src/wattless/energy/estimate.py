"""Price counted work on a target: joules and latency per inference, per unit and in total.

Pricing is linear in the target's coefficients: each unit's counts become *features* keyed by the dotted
path of the coefficient that prices them (``mac_pj.int8``, ``memory.dram_pj_per_byte``,
``throughput.static_w``...), and energy is the dot product. Calibration fits the same features to
measurements, so the estimate and the fit can never disagree on what a coefficient means.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import asdict, dataclass

import numpy as np

from wattless.energy.count import Counts, OpCount, UnitCount
from wattless.energy.precision import parse_precision
from wattless.energy.target import Target

__all__ = ["UnitEstimate", "Estimate", "estimate", "sample_features", "price", "PJ"]

PJ = 1e-12
_STATIC = "throughput.static_w"


@dataclass(frozen=True)
class UnitEstimate:
    """One unit's estimated cost per inference on a target (mean over the example inputs)."""

    name: str
    type: str
    energy_j: float
    compute_j: float
    memory_j: float
    static_j: float
    latency_s: float
    macs: float
    effective_macs: float  # MACs the target actually performs (zeros it skips removed)


@dataclass(frozen=True)
class Estimate:
    """Estimated (never measured) joules and seconds per inference on one target."""

    target: str
    energy_j: float  # mean over inputs
    latency_s: float
    energy_j_p50: float
    energy_j_p95: float
    per_input_energy_j: tuple[float, ...]
    compute_j: float
    memory_j: float
    static_j: float
    units: tuple[UnitEstimate, ...]
    kind: str = "estimated"

    @property
    def label(self) -> str:
        return f"estimated on {self.target}"

    def summary(self) -> dict:
        return {
            "kind": self.kind, "target": self.target, "energy_j": self.energy_j, "latency_s": self.latency_s,
            "energy_j_mean": self.energy_j, "energy_j_p50": self.energy_j_p50, "energy_j_p95": self.energy_j_p95,
            "compute_j": self.compute_j, "memory_j": self.memory_j, "static_j": self.static_j,
        }

    def unit_records(self) -> list[dict]:
        return [asdict(u) for u in self.units]


def _target_macs(op: OpCount, target: Target) -> float:
    """MACs the target performs for an op: structurally removed rows and columns never run; zero weights
    are skipped in the patterns the target supports, zero activations if it says so."""
    sp = target.sparsity
    skip_act = sp.skips_zero_activations
    unstructured = "unstructured" in sp.weight_patterns
    if unstructured:
        macs = op.macs_nz_both if skip_act else op.macs_nz_weight
    else:
        macs = op.macs_nz_act if skip_act else op.macs_kept
    if "2:4" in sp.weight_patterns and op.weight_pattern == "2:4":
        macs = min(macs, 0.5 * (op.macs_nz_act if skip_act else op.macs_kept))
    return macs


def _weight_bytes(op: OpCount, target: Target) -> float:
    """Weight bytes read: dense storage, or the target's sparse format where that is smaller."""
    sp = target.sparsity
    if op.weight_bytes == 0:
        return op.bias_bytes
    bits = parse_precision(op.weight_precision).bits
    best = op.weight_bytes
    if "unstructured" in sp.weight_patterns:
        nnz = op.weight_nz_bytes * 8 / bits
        best = min(best, op.weight_nz_bytes + nnz * sp.sparse_index_bits / 8)
    if "2:4" in sp.weight_patterns and op.weight_pattern == "2:4":
        nnz = op.weight_bytes * 8 / bits / 2
        best = min(best, op.weight_bytes / 2 + nnz * sp.sparse_index_bits / 8)
    return best + op.bias_bytes


def _spill(need: float, capacity: float) -> float:
    """Fraction of a working set that does not fit in on-chip memory."""
    return 0.0 if need <= capacity else 1.0 - capacity / need


def _unit_features(unit: UnitCount, target: Target, weight_spill: float) -> tuple[dict[str, float], float]:
    """Features of one unit and its latency in seconds. ``weight_spill`` is the part of the resident state
    (weights and KV cache) that does not fit on chip; KV-cache bytes pay it on every target."""
    feats: dict[str, float] = defaultdict(float)
    mem, tp = target.memory, target.throughput
    compute_s = 0.0
    w_sram = w_dram = 0.0
    act_bytes = sum(o.act_read_bytes + o.act_write_bytes for o in unit.ops)
    act_spill = _spill(act_bytes, mem.sram_bytes)
    for op in unit.ops:
        prec = op.mac_precision
        op_prec = parse_precision(op.act_precision)
        if op.macs:
            if target.events is not None:
                feats["events.synop_pj"] += op.events
                feats["events.neuron_update_pj"] += op.outputs
                compute_s += op.events / target.events.synops_per_s
            else:
                macs = _target_macs(op, target)
                feats[f"mac_pj.{target.mac_key(prec)}"] += macs
                compute_s += macs / target.macs_per_s_for(prec)
        if op.ops:
            feats[f"op_pj.{target.op_key(op_prec)}"] += op.ops
            compute_s += op.ops / target.ops_per_s_for(op_prec)
        wb = _weight_bytes(op, target)
        if mem.weights_in == "sram":
            w_sram += wb
        elif mem.weights_in == "dram":
            w_dram += wb
        elif mem.weights_in == "auto":
            w_sram += wb * (1 - weight_spill)
            w_dram += wb * weight_spill
    kv_bytes = sum(o.kv_read_bytes + o.kv_write_bytes for o in unit.ops)
    sram_bytes = w_sram + act_bytes * (1 - act_spill) + kv_bytes * (1 - weight_spill)
    dram_bytes = w_dram + act_bytes * act_spill + kv_bytes * weight_spill
    feats["memory.sram_pj_per_byte"] += sram_bytes
    feats["memory.dram_pj_per_byte"] += dram_bytes
    latency_s = max(compute_s, dram_bytes / tp.dram_bytes_per_s)
    feats[_STATIC] += latency_s / PJ  # static_w [W] x latency [s] = J; features are in pJ units
    return dict(feats), latency_s


def sample_features(sample: dict[str, UnitCount], target: Target) -> dict[str, tuple[dict[str, float], float]]:
    """unit name -> (features, latency_s) for one input.

    Resident state competes for on-chip memory: the weights (unless the target keeps them in DRAM or in
    its compute array) and the KV cache (its size is what a step reads of it); the part beyond
    ``sram_bytes`` is read from DRAM, for weights and cache alike."""
    ops = [o for u in sample.values() for o in u.ops]
    kv_resident = sum(o.kv_read_bytes for o in ops)
    weights_on_chip = target.memory.weights_in in ("auto", "sram")
    resident = kv_resident + (sum(_weight_bytes(o, target) for o in ops) if weights_on_chip else 0.0)
    spill = _spill(resident, target.memory.sram_bytes)
    return {name: _unit_features(u, target, spill) for name, u in sample.items()}


def price(features: dict[str, float], target: Target) -> float:
    """Joules for a feature vector: sum of feature x coefficient (pJ) x 1e-12."""
    coeffs = target.coefficients
    return sum(v * coeffs[k] for k, v in features.items()) * PJ


def _split(features: dict[str, float], target: Target) -> tuple[float, float, float]:
    """(compute, memory, static) joules."""
    parts = [0.0, 0.0, 0.0]
    for k, v in features.items():
        parts[2 if k == _STATIC else 1 if k.startswith("memory.") else 0] += v * target.coefficients[k] * PJ
    return parts[0], parts[1], parts[2]


def estimate(counts: Counts, target: Target) -> Estimate:
    """Estimated joules and latency per inference of counted work on ``target``."""
    per_input, latencies = [], []
    acc: dict[str, list[float]] = {}
    types: dict[str, str] = {}
    for sample in counts.samples:
        total, lat = 0.0, 0.0
        for name, (feats, unit_lat) in sample_features(sample, target).items():
            unit = sample[name]
            c, m, s = _split(feats, target)
            eff = sum(_target_macs(o, target) for o in unit.ops if o.macs)
            row = acc.setdefault(name, [0.0] * 7)
            for i, v in enumerate((c + m + s, c, m, s, unit_lat, unit.macs, eff)):
                row[i] += v / counts.n
            types[name] = unit.type
            total += c + m + s
            lat += unit_lat
        per_input.append(total)
        latencies.append(lat)
    units = tuple(sorted(
        (UnitEstimate(name, types[name], *row) for name, row in acc.items()),
        key=lambda u: u.energy_j, reverse=True,
    ))
    arr = np.asarray(per_input)
    return Estimate(
        target=target.name, energy_j=float(arr.mean()), latency_s=float(np.mean(latencies)),
        energy_j_p50=float(np.percentile(arr, 50)), energy_j_p95=float(np.percentile(arr, 95)),
        per_input_energy_j=tuple(per_input),
        compute_j=sum(u.compute_j for u in units), memory_j=sum(u.memory_j for u in units),
        static_j=sum(u.static_j for u in units), units=units,
    )
