"""Preparing every runtime before the timing: its inputs and file, its size and its estimated energy."""

from __future__ import annotations

import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from wattless.baselines import BASELINES, run_baselines
from wattless.bench.inputs import inputs, token_rows
from wattless.bench.plan import Plan
from wattless.bench.runtimes import AS_WRITTEN, BASELINE_OF, OWN, WATTLESS_FILE
from wattless.errors import BenchError

__all__ = ["Prepared", "prepare"]


@dataclass
class Prepared:
    """Every runtime's file, size and estimated energy, and the baselines' rows (wattless.baselines)."""

    defined: dict[str, dict[str, Any]]
    files: dict[str, Any]
    sizes: dict[str, float]
    energies: dict[str, dict[str, float]]
    export_report: Any = None
    kernel_notes: dict[str, str] = field(default_factory=dict)


def _size_mb(path: Path) -> float:
    extra = path.with_name(path.name + ".data")
    return (path.stat().st_size + (extra.stat().st_size if extra.exists() else 0)) / 1e6


def _torch_sizes(baseline: Any, workdir: Path) -> dict[str, float]:
    import torch

    from wattless.baselines import torch_dynamic_int8

    sizes = {}
    for name, model in (("torch-fp32", baseline), ("torch-dynamic-int8", torch_dynamic_int8(baseline))):
        path = workdir / f"{name}.pt"
        torch.save(model.state_dict(), path)
        sizes[name] = _size_mb(path)
    return sizes


def _joules(model: Any, samples: list[Any]) -> dict[str, float]:
    from wattless.optimize import energy_by_target

    return {k: v["energy_j"] for k, v in energy_by_target(model, samples)[0].items()}


def _samples(wl: Any, seq_len: int, encoder: bool, n: int) -> list[Any]:
    """The inputs energy is counted on: the first n test inputs, as search counts them; for encoders n rows
    of ``seq_len`` tokens, the length the bench times."""
    import torch

    from wattless.optimize import eval_samples

    if not encoder:
        return eval_samples(wl, n)
    x = token_rows(wl, n, seq_len)
    return [{"input_ids": torch.from_numpy(x[i : i + 1]), "attention_mask": torch.ones((1, seq_len), dtype=torch.int64)}
            for i in range(n)]


def prepare(wl: Any, plan: Plan, work: Path, run: Path | None, export: str | Path | None, energy_samples: int,
            say: Any) -> Prepared:
    """The inputs, the baselines' files (the same definitions search uses), the wattless export, and every
    runtime's size and estimated energy."""
    from wattless.optimize import baseline_model

    say("preparing the baseline and the runtimes' files")
    baseline, _ = baseline_model(wl, progress=False)
    baseline = baseline.eval()
    for b in plan.batches:
        np.save(work / f"inputs_b{b}.npy", inputs(wl, b, plan.seq_len, plan.encoder))
    samples = _samples(wl, plan.seq_len, plan.encoder, energy_samples)
    say("building the baselines (wattless.baselines: the same definitions search uses)")
    names = [BASELINE_OF[r] for r in plan.runtimes if r in BASELINE_OF]
    defined = run_baselines(wl, baseline, names, work / "baselines", samples)
    failed = {n: r["error"] for n, r in defined.items() if r.get("metric") is None}
    if failed:
        raise BenchError(f"baseline(s) could not be built here: {failed}")
    files = {BASELINES[n].label: r["file"] for n, r in defined.items() if r.get("file")}
    prepared = Prepared(defined, files, _torch_sizes(baseline, work), {})
    optimized = _own_file(prepared, wl, plan, work, run, export, say) if set(OWN) & set(plan.runtimes) else None
    for name, file in files.items():
        prepared.sizes[name] = _size_mb(Path(file))
    say("estimating energy per runtime")
    prepared.energies = {BASELINES[n].label: r["energy_j"] for n, r in defined.items()}
    if optimized is not None:
        prepared.energies["wattless"] = prepared.energies[AS_WRITTEN] = _joules(optimized, samples)
    return prepared


def _own_file(prepared: Prepared, wl: Any, plan: Plan, work: Path, run: Path | None,
              export: str | Path | None, say: Any) -> Any:
    """The wattless rows' file (exported from ``run`` or copied from ``export``); the optimized model, if a run."""
    from wattless.optimize import load_run

    target = prepared.files["wattless"] = prepared.files[AS_WRITTEN] = work / WATTLESS_FILE
    if export is not None:
        shutil.copyfile(export, target)
    else:
        from wattless.export import export_run

        say(f"exporting {run}")
        prepared.export_report = export_run(run, target, workload=wl)
    optimized = load_run(run, wl)[0] if run is not None else None
    prepared.kernel_notes = _kernel_notes(target)
    return optimized


def _kernel_notes(path: Path) -> dict[str, str]:
    """What form the integer products of the wattless rows run in (wattless.kernels; no session started)."""
    import onnx

    from wattless.kernels import for_this_cpu

    return {"wattless": f"integer products: {for_this_cpu(onnx.load(str(path)), path).note}",
            AS_WRITTEN: "the file as written, in plain ONNX Runtime (integer products in its stored form)"}
