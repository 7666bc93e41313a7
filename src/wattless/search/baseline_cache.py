"""The baselines of a search folder (defined in `wattless.baselines`), computed once per folder and kept in
OUT/baselines.json behind a lock file, so that two workers sharing the folder do not both compute them."""

from __future__ import annotations

import fcntl
import json
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from wattless import baselines as bl
from wattless.energy import Target, count_each, resolve_target
from wattless.errors import SearchError
from wattless.fingerprint import split_digest
from wattless.optimize import baseline_model, eval_samples
from wattless.search.results import breakdown, write_json
from wattless.workloads import Workload, get_workload

__all__ = ["BASELINES", "PTQ_BASELINES", "compute_baselines", "cached_baselines"]

BASELINES = bl.DEFAULT
PTQ_BASELINES = tuple(n for n in BASELINES if n in bl.PTQ)


def compute_baselines(workload: str | Workload, target: str | Target, *, out: str | Path,
                      names: Sequence[str] = BASELINES, energy_inputs: int = bl.ENERGY_INPUTS,
                      cache: Path | None = None,
                      on_step: Callable[[str], None] | None = None) -> dict[str, dict[str, Any]]:
    """What a user would reach for instead, on the same test data and target (`wattless.baselines` defines
    each): {name: {metric, energy_j (every built-in target, estimated), latency_s, size_bytes, note}}, fp32
    with its per-unit ``breakdown`` on ``target``. Files go to OUT/baselines/. One that cannot run here (e.g.
    without onnxruntime) is {metric: None, energy_j: {}, error}."""
    wl = get_workload(workload) if isinstance(workload, str) else workload
    tgt = resolve_target(target) if isinstance(target, str) else target
    unknown = sorted(set(names) - set(bl.BASELINES))
    if unknown or "fp32" not in names:
        raise SearchError(f"baselines {unknown or list(names)}: choose among {', '.join(bl.BASELINES)}, fp32 always")
    baseline, _ = baseline_model(wl, progress=False, cache=cache)
    samples = eval_samples(wl, energy_inputs)
    rows = bl.run_baselines(wl, baseline, names, Path(out) / "baselines", samples, on_step=on_step)
    rows["fp32"]["breakdown"] = breakdown(count_each(baseline, samples), tgt)
    return rows


def cached_baselines(out: Path, wl: Workload, target: Target, names: Sequence[str], energy_inputs: int,
                     cache: Path | None, on_step: Callable[[str], None] | None) -> dict[str, dict[str, Any]]:
    """OUT/baselines.json, computed once per folder (a lock keeps two workers sharing a folder from both
    computing it)."""
    data = [split_digest(getattr(wl, split)) for split in ("train", "val", "test")]
    key = {"workload": wl.name, "target": target.name, "names": list(names), "energy_inputs": energy_inputs,
           "revision": bl.REVISION, "data": data}
    path = out / "baselines.json"
    with open(out / ".baselines.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if path.exists():
            held = json.loads(path.read_text())
            if held.get("key") == key and None not in data:  # data with no reliable digest: computed anew
                return held["baselines"]
        rows = compute_baselines(wl, target, out=out, names=names, energy_inputs=energy_inputs, cache=cache,
                                 on_step=on_step)
        write_json(path, {"key": key, "baselines": rows})
    return rows
