"""Where the time goes: ONNX Runtime's profiler, per operator type, for the wattless MiniLM export beside ONNX
Runtime fp32 and ONNX Runtime `quantize_dynamic` (all-MiniLM-L6-v2, batch 1, 64 real tokens, the same ids).

The wattless file runs in the form wattless.runtime picks for this CPU (u8 x s8 where this CPU sums those
exactly, else the portable file as written). Times are measured on this machine at its load (recorded);
profiling adds a little to each call, so compare the rows of one run with each other, and take latencies
from bench/export_minilm.py.

    python bench/profile_minilm.py [--export bench/out/minilm-fast.onnx | --run bench/out/minilm-fast]
                                   [--json bench/out/profile_minilm.json] [--runs 50] [--threads 2]
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
from pathlib import Path

import numpy as np
from rich.console import Console
from rich.table import Table

from wattless.baselines import export_onnx, ort_quantize_dynamic
from wattless.bench import operator_times
from wattless.kernels import cpu_features, cpu_name, for_this_cpu, u8s8_exact
from wattless.workloads import get_workload


def _wattless_bytes(args: argparse.Namespace, tmp: Path) -> tuple[bytes, str]:
    import onnx

    path = Path(args.export) if args.export else tmp / "wattless.onnx"
    if not args.export:
        from wattless.export import export_run

        export_run(args.run, path)
    model = onnx.load(str(path))
    for_this_cpu(model, path)  # in place: the form wattless.runtime runs here
    return model.SerializeToString(), str(path)


def _baselines(tmp: Path) -> dict[str, bytes]:
    import onnx

    wl = get_workload("minilm")
    example = wl.prepare_inputs(wl.train.take(slice(0, 16)).inputs)
    fp32 = export_onnx(wl.build_model().eval(), example, tmp / "fp32.onnx")
    dynamic = ort_quantize_dynamic(fp32, tmp / "dynamic.onnx")
    return {"ort-fp32": onnx.load(str(fp32)).SerializeToString(),
            "ort-dynamic-int8": onnx.load(str(dynamic)).SerializeToString()}


def _feed(model: bytes, ids: np.ndarray) -> dict[str, np.ndarray]:
    import onnx

    names = [i.name for i in onnx.load_from_string(model).graph.input]
    return {n: ids if n == "input_ids" else (np.ones_like(ids) if "mask" in n else np.zeros_like(ids)) for n in names}


def _table(profiles: dict, top: int) -> Table:
    table = Table(title="all-MiniLM-L6-v2, batch 1, 64 tokens: ms per call by operator type (measured, profiled)")
    table.add_column("operator")
    for name in profiles:
        table.add_column(f"{name} ms (nodes)", justify="right")
    ops = sorted({op for p in profiles.values() for op in p.by_op},
                 key=lambda op: -max(p.by_op[op].ms_per_run if op in p.by_op else 0 for p in profiles.values()))
    for op in ops[:top]:
        table.add_row(op, *(f"{p.by_op[op].ms_per_run:.3f} ({p.by_op[op].nodes})" if op in p.by_op else "-"
                            for p in profiles.values()))
    table.add_row("all kernels", *(f"{p.kernel_ms:.3f}" for p in profiles.values()))
    table.add_row("whole call (median)", *(f"{p.run_ms:.3f}" for p in profiles.values()))
    return table


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--run", default="bench/out/minilm-fast")
    parser.add_argument("--export", default=None, help="an existing export (skips exporting the run)")
    parser.add_argument("--json", default="bench/out/profile_minilm.json")
    parser.add_argument("--runs", type=int, default=50)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    ids = np.random.default_rng(0).integers(1000, 20000, (1, 64)).astype(np.int64)
    load_start = os.getloadavg()
    with tempfile.TemporaryDirectory() as tmp:
        mine, path = _wattless_bytes(args, Path(tmp))
        models = {"wattless": mine, **_baselines(Path(tmp))}
        profiles = {name: operator_times(m, _feed(m, ids), threads=args.threads, runs=args.runs)
                    for name, m in models.items()}
    Console(width=160).print(_table(profiles, top=25))
    result = {"export": path, "threads": args.threads, "runs": args.runs, "tokens": 64, "batch": 1,
              "machine": {"cpu": cpu_name(), "cpu_features": cpu_features(), "u8s8_exact": u8s8_exact(),
                          "load_average_start": list(load_start), "load_average_end": list(os.getloadavg())},
              "time_kind": "measured", "profiles": {k: v.to_json() for k, v in profiles.items()}}
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps(result, indent=2))
    print(f"written to {args.json}")


if __name__ == "__main__":
    main()
