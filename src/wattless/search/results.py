"""What a search leaves: its points, the Pareto front, the summary against the baselines, results.json."""

from __future__ import annotations

import json
import math
import os
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import optuna
from optuna.trial import FrozenTrial, TrialState

from wattless import baselines as bl
from wattless.energy import Counts, Target, estimate
from wattless.errors import SearchError
from wattless.search.storage import shown_url

__all__ = ["SearchPoint", "SearchResult", "RESULTS_FILE", "breakdown", "pareto_front", "summarize", "collect",
           "write_json", "load_results", "build_report"]

RESULTS_FILE = "results.json"


@dataclass(frozen=True)
class SearchPoint:
    """One trained trial, as the frontier holds it (estimated figures; ``energy_j`` and ``latency_s`` per
    built-in target; ``breakdown`` per unit on the search target)."""

    trial: int
    metric: float
    metrics: dict[str, float]
    val_metric: float | None
    energy_j: dict[str, float]
    latency_s: dict[str, float]
    size_bytes: float
    macs: float
    recipe: dict[str, Any]
    params: dict[str, Any]
    techniques: dict[str, Any]
    breakdown: list[dict[str, Any]]
    contributions: dict[str, Any]
    seed: str | None
    run_dir: str
    host: str
    duration_s: float
    epochs: int

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def breakdown(counts: Counts, target: Target) -> list[dict[str, Any]]:
    """Per unit on ``target``: energy_j, compute_j, memory_j, static_j, latency_s, macs, effective_macs."""
    est = estimate(counts, target)
    return [{"name": u.name, "type": u.type, "energy_j": u.energy_j, "compute_j": u.compute_j,
             "memory_j": u.memory_j, "static_j": u.static_j, "latency_s": u.latency_s, "macs": u.macs,
             "effective_macs": u.effective_macs} for u in est.units]


def pareto_front(points: list[dict[str, Any]], target: str) -> list[dict[str, Any]]:
    """Points no other point beats on both the metric (higher) and energy on ``target`` (lower), by energy."""
    ordered = sorted(points, key=lambda p: (p["energy_j"][target], -p["metric"]))
    front, best = [], -math.inf
    for p in ordered:
        if p["metric"] > best:
            front.append(p)
            best = p["metric"]
    return front


def _feasible(t: FrozenTrial) -> bool:
    return all(v <= 0 for v in t.constraints.values()) if hasattr(t, "constraints") else True


def _trial_row(t: FrozenTrial, target: str) -> dict[str, Any]:
    point = t.user_attrs.get("point") or {}
    curve = t.user_attrs.get("curve") or []
    return {
        "trial": t.number, "state": t.state.name.lower(), "metric": point.get("metric"),
        "energy_j": point.get("energy_j", {}).get(target), "feasible": _feasible(t) if point else None,
        "seed": t.user_attrs.get("seed"), "resumes": t.user_attrs.get("resumes"),
        "pruned": t.user_attrs.get("pruned"), "error": t.user_attrs.get("error"),
        "interrupted": t.user_attrs.get("interrupted"), "params": t.params,
        "epochs_done": curve[-1]["epoch"] if curve else 0,
        "val_metric": curve[-1]["val_metric"] if curve else None,
        "duration_s": (t.datetime_complete - t.datetime_start).total_seconds()
        if t.datetime_complete and t.datetime_start else None,
    }


def summarize(frontier: list[dict[str, Any]], baselines: dict[str, dict[str, Any]], target: str,
              within: float = 0.01) -> dict[str, Any]:
    """The lowest-energy frontier point within ``within`` of the fp32 baseline's metric (0.01 = one accuracy
    point), and its energy ratios against fp32 and the best post-training quantization: the lowest-energy
    PTQ baseline within the same ``within`` of fp32 (`wattless.baselines.choose_ptq`). When none is within,
    ``best_ptq`` is None, ``best_ptq_note`` says so, and the ratio against the most accurate PTQ baseline
    (``ratio_vs_most_accurate_ptq``) stands beside it."""
    fp32 = baselines.get("fp32")
    reference = fp32.get("metric") if fp32 else None
    out: dict[str, Any] = {"target": target, "within": within, "chosen_trial": None}
    out.update(bl.choose_ptq(baselines, target, reference, within))
    if reference is None:
        return out
    out.update(fp32_metric=reference, fp32_energy_j=fp32["energy_j"][target])
    near = [p for p in frontier if p["metric"] >= reference - within - 1e-12]
    if not near:
        return out
    chosen = min(near, key=lambda p: p["energy_j"][target])
    e = chosen["energy_j"][target]
    out.update(chosen_trial=chosen["trial"], metric=chosen["metric"], energy_j=e,
               metric_drop_points=100 * (reference - chosen["metric"]),
               ratio_vs_fp32=fp32["energy_j"][target] / e)
    if out["best_ptq"] is not None:
        out["ratio_vs_best_ptq"] = out["best_ptq_energy_j"] / e
    if out.get("most_accurate_ptq") is not None:
        out["ratio_vs_most_accurate_ptq"] = out["most_accurate_ptq_energy_j"] / e
    return out


def collect(study: optuna.Study, baselines: dict[str, dict[str, Any]], storage: str,
            info: dict[str, Any]) -> dict[str, Any]:
    """results.json of the whole study, as it stands now."""
    target = info["target"]
    trials = study.get_trials(deepcopy=False)
    points = [t.user_attrs["point"] for t in trials
              if t.state == TrialState.COMPLETE and "point" in t.user_attrs and _feasible(t)]
    front = pareto_front(points, target)
    states = {s.name.lower(): sum(1 for t in trials if t.state == s) for s in TrialState}
    return {
        "schema": 1, "workload": info["workload"], "target": target, "metric_name": info["metric_name"],
        "energy_kind": "estimated", "study_name": study.study_name, "storage": shown_url(storage),
        "constraints": info["constraints"], "space": info["space"], "trial_counts": states,
        "baselines": baselines, "frontier": front, "summary": summarize(front, baselines, target),
        "trials": [_trial_row(t, target) for t in trials], "written": time.strftime("%Y-%m-%d %H:%M:%S"),
    }


def write_json(path: Path, data: Any) -> None:
    """Written whole or not at all (a reader never sees half a file)."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(data, indent=2))
    os.replace(tmp, path)


def load_results(out: str | Path) -> dict[str, Any]:
    path = Path(out) / RESULTS_FILE
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise SearchError(f"{path} does not exist: run `wattless search --out {out}` first") from None
    except (OSError, json.JSONDecodeError) as exc:
        raise SearchError(f"{path} cannot be read: {exc}") from None


@dataclass
class SearchResult:
    """What a search left in its folder: the frontier (metric, energy_j per target, recipe...), the baselines,
    how many trials are in each state, and the summary (the best point within one metric point of fp32)."""

    out: Path
    study_name: str
    storage: str
    target: str
    metric_name: str
    frontier: list[dict[str, Any]]
    baselines: dict[str, dict[str, Any]]
    trial_counts: dict[str, int]
    summary: dict[str, Any]
    results_path: Path
    report_path: Path | None = None
    interrupted: bool = False

    @classmethod
    def from_results(cls, out: Path, results: dict[str, Any], report: Path | None, interrupted: bool = False):
        return cls(out, results["study_name"], results["storage"], results["target"], results["metric_name"],
                   results["frontier"], results["baselines"], results["trial_counts"], results["summary"],
                   out / RESULTS_FILE, report, interrupted)


def build_report(out: Path) -> Path | None:
    """DIR/report.html, or None where matplotlib is absent (results.json is still written)."""
    try:
        from wattless.report import build_report as build
    except ImportError:  # matplotlib absent: results.json is still written
        return None
    return build(out)
