"""Where an ONNX model's time goes: ONNX Runtime's own profiler, summed per operator type.

    times = operator_times(model_bytes, {"input_ids": ids}, threads=2, runs=50)
    times.by_op["MatMulIntegerToFloat"]   # OpTime(ms_per_run, nodes)

The profiler's per-node kernel times (``*_kernel_time`` events) over ``runs`` calls after ``warmup``
untimed ones, divided by the number of calls; ``run_ms`` is the median of the whole ``model_run`` events
(profiling itself adds a little to each). Measured figures on this machine, at its load."""

from __future__ import annotations

import json
import os
import statistics
import tempfile
from collections import defaultdict
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

__all__ = ["OpTime", "OperatorTimes", "operator_times"]


@dataclass(frozen=True)
class OpTime:
    ms_per_run: float
    nodes: int  # nodes of this type executed per call


@dataclass(frozen=True)
class OperatorTimes:
    run_ms: float  # median of the profiled calls
    kernel_ms: float  # sum of the operators' kernel times per call (the rest is the runtime's own work)
    by_op: dict[str, OpTime]  # slowest first

    def to_json(self) -> dict[str, Any]:
        return {"run_ms": self.run_ms, "kernel_ms": self.kernel_ms,
                "by_op": {k: asdict(v) for k, v in self.by_op.items()}}


def _session(model: bytes, threads: int, prefix: str) -> Any:
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.log_severity_level = 3
    options.intra_op_num_threads = threads
    options.enable_profiling = True
    options.profile_file_prefix = prefix
    return ort.InferenceSession(model, options, providers=["CPUExecutionProvider"])


def _summarise(events: list[dict[str, Any]], calls: int) -> OperatorTimes:
    total: dict[str, float] = defaultdict(float)
    count: dict[str, int] = defaultdict(int)
    for e in events:
        if e.get("cat") == "Node" and e.get("name", "").endswith("_kernel_time"):
            total[e["args"]["op_name"]] += e["dur"]
            count[e["args"]["op_name"]] += 1
    runs = [e["dur"] / 1e3 for e in events if e.get("cat") == "Session" and e.get("name") == "model_run"]
    by_op = {op: OpTime(total[op] / calls / 1e3, count[op] // calls) for op in sorted(total, key=lambda o: -total[o])}
    return OperatorTimes(statistics.median(runs[-calls:]), sum(t.ms_per_run for t in by_op.values()), by_op)


def operator_times(model: bytes, feed: dict[str, Any], *, threads: int = 2, runs: int = 50,
                   warmup: int = 10) -> OperatorTimes:
    """Time per operator type of ``model`` (a serialized ONNX model) on ``feed``, on ONNX Runtime's CPU provider."""
    with tempfile.TemporaryDirectory() as tmp:
        session = _session(model, threads, os.path.join(tmp, "profile"))
        for _ in range(warmup + runs):
            session.run(None, feed)
        events = json.loads(Path(session.end_profiling()).read_text())
    timed = [e for e in events if e.get("cat") == "Session" and e.get("name") == "model_run"][warmup:]
    start = timed[0]["ts"] if timed else 0
    return _summarise([e for e in events if e.get("ts", 0) >= start], runs)
