"""The worker: one runtime timed in its own process (load, peak memory, latency, metric, measured energy),
and the protocol bench uses to run it there (``python -m wattless.bench --worker SPEC.json``)."""

from __future__ import annotations

import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

from wattless.bench.runtimes import AS_WRITTEN, OWN
from wattless.errors import BenchError, MeasurementUnavailable

__all__ = ["worker", "run_worker", "main", "peak_rss_mb", "current_rss_mb"]


def _proc_status_mb(key: str) -> float | None:
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(key + ":"):
                    return int(line.split()[1]) / 1024  # kB
    except OSError:
        pass
    return None


def _rss_mb() -> float:
    """Peak resident memory of this process image. VmHWM, not ru_maxrss: after fork and exec, ru_maxrss keeps
    the parent's resident size at the fork, so every worker would report the parent's peak."""
    peak = _proc_status_mb("VmHWM")
    return peak if peak is not None else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _current_rss_mb() -> float:
    now = _proc_status_mb("VmRSS")
    return now if now is not None else _rss_mb()


peak_rss_mb, current_rss_mb = _rss_mb, _current_rss_mb


def _load_runtime(spec: dict[str, Any]) -> tuple[Any, Any]:
    """(callable on a batch array, module for the workload's evaluate or None)."""
    import torch

    name = spec["runtime"]
    if name in ("torch-fp32", "torch-dynamic-int8"):
        from wattless.baselines import torch_dynamic_int8
        from wattless.optimize import baseline_model
        from wattless.workloads import get_workload

        model, _ = baseline_model(get_workload(spec["workload"]), progress=False)
        model = model.eval() if name == "torch-fp32" else torch_dynamic_int8(model)
        if spec["encoder"]:
            def call(x):
                t = torch.from_numpy(x)
                return model(input_ids=t, attention_mask=torch.ones_like(t))
        else:
            def call(x):
                return model(torch.from_numpy(x))
        return call, model
    path = Path(spec["file"])
    if name in OWN:
        from wattless.runtime import load

        rt = load(path, threads=spec["threads"], kernels="as-written" if name == AS_WRITTEN else "auto")
        return (lambda x: rt.run({"input_ids": x}) if spec["encoder"] else rt.run(x)), rt
    from wattless.baselines import OrtModule

    module = OrtModule(path, threads=spec["threads"])
    session = module.session
    if spec["encoder"]:
        return (lambda x: session.run(None, {"input_ids": x, "attention_mask": np.ones_like(x)})), module
    names = [i.name for i in session.get_inputs()]
    return (lambda x: session.run(None, {names[0]: x})), module


def _metric(spec: dict[str, Any], model: Any) -> dict[str, float]:
    import torch

    from wattless.workloads import get_workload

    wl = get_workload(spec["workload"])
    if spec["runtime"] in OWN:
        if spec["encoder"]:
            from wattless.export.parity import encoder_metrics

            return encoder_metrics(model, wl)
        from wattless.export.parity import Session

        model = Session(model)  # the runtime this row timed, in the form it timed
    with torch.inference_mode():
        return wl.evaluate(model, wl.test)


def _measured(call: Any, x: np.ndarray) -> tuple[dict[str, Any] | None, str | None]:
    import torch

    from wattless.energy.measure import default_meter, measure

    try:
        meter = default_meter()
    except MeasurementUnavailable as exc:
        return None, str(exc)

    class _Call(torch.nn.Module):
        def forward(self, t):
            return call(t.numpy())

    m = measure(_Call(), torch.from_numpy(x), meter=meter, min_window_s=1.0, windows=3)
    return m.summary(), None


def worker(spec: dict[str, Any]) -> dict[str, Any]:
    """Time one runtime on each batch size (increasing), in this process; see the module docstring. A decoder
    spec (``kind`` = decoder) runs bench/lm.py's worker instead."""
    if spec.get("kind") == "decoder":
        from wattless.bench.lm import lm_worker

        return lm_worker(spec)
    import onnxruntime  # noqa: F401  (every worker imports the same modules before its model)
    import torch

    import wattless.runtime  # noqa: F401

    torch.set_num_threads(spec["threads"])
    before = _current_rss_mb()
    call, model = _load_runtime(spec)
    rows = []
    with torch.inference_mode():
        for batch in spec["batches"]:
            x = np.load(Path(spec["workdir"]) / f"inputs_b{batch}.npy")
            for _ in range(spec["warmup"]):
                call(x)
            times = []
            start = time.perf_counter()
            budget = start + spec.get("max_seconds", float("inf"))
            for i in range(spec["repeats"]):
                t0 = time.perf_counter()
                call(x)
                times.append(time.perf_counter() - t0)
                if t0 > budget and i >= 9:  # slow rows stop at the time budget, after 10 calls at least
                    break
            wall = time.perf_counter() - start
            lat = np.asarray(times) * 1e3
            rows.append({"batch": batch, "latency_ms_p50": float(np.percentile(lat, 50)),
                         "latency_ms_p95": float(np.percentile(lat, 95)), "latency_ms_mean": float(lat.mean()),
                         "throughput_per_s": batch * len(times) / wall, "peak_rss_mb": _rss_mb(),
                         "rss_before_load_mb": before, "repeats": len(times)})
    measured, note = _measured(call, np.load(Path(spec["workdir"]) / f"inputs_b{spec['batches'][0]}.npy")) \
        if spec.get("measure", True) else (None, None)
    metrics = _metric(spec, model) if spec.get("metric", True) else None
    return {"rows": rows, "metrics": metrics, "measured": measured, "measured_note": note}


def run_worker(spec: dict[str, Any], isolate: bool, timeout_s: float) -> dict[str, Any]:
    if not isolate:
        out = worker(spec)
        for row in out["rows"]:
            row["peak_rss_mb"] = None  # one shared process: its peak is not this runtime's
        return out
    path = Path(spec["workdir"]) / f"spec-{spec['runtime']}.json"
    path.write_text(json.dumps(spec))
    env = {**os.environ, "OMP_NUM_THREADS": str(spec["threads"]), "MKL_NUM_THREADS": str(spec["threads"])}
    if spec.get("spin") is False:  # OpenMP threads (torch, llama.cpp) sleep when idle, as ONNX Runtime's are told to
        env["OMP_WAIT_POLICY"] = "PASSIVE"
    try:
        proc = subprocess.run([sys.executable, "-m", "wattless.bench", "--worker", str(path)], capture_output=True,
                              text=True, env=env, timeout=timeout_s)
    except subprocess.TimeoutExpired:
        raise BenchError(f"runtime {spec['runtime']} did not finish within {timeout_s:.0f} s; lower --repeats") from None
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("{")]
    if proc.returncode != 0 or not lines:
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-3:]
        raise BenchError(f"runtime {spec['runtime']} failed in its worker process: {' | '.join(tail)}")
    return json.loads(lines[-1])


def main(argv: list[str]) -> None:
    if len(argv) == 2 and argv[0] == "--worker":
        spec = json.loads(Path(argv[1]).read_text())
        sys.stdout.write(json.dumps(worker(spec)) + "\n")
        return
    raise SystemExit("usage: python -m wattless.bench --worker SPEC.json (internal; use `wattless bench`)")
