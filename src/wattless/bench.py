"""`wattless bench`: the wattless export beside what a user would run instead, on this machine, in one run.

    result = bench("mnist1d", run="runs/m1", json_path="bench.json")
    result["rows"]          # one record per runtime and batch size
    print_table(result)

Runtimes (RUNTIMES): PyTorch fp32 eager, PyTorch dynamic int8, ONNX Runtime fp32, ONNX Runtime
``quantize_dynamic``, ONNX Runtime ``quantize_static`` (QDQ), and the wattless export (`wattless.runtime`).
Each runtime runs in a fresh Python process that imports the same modules (torch, onnxruntime, wattless)
before loading its model, so peak resident memory compares like with like; the batches run in increasing
size, each peak read right after its batch. Inputs are the same arrays for every runtime: test inputs for
classifiers, and for sentence encoders ``seq_len`` real tokens per row (no padding anywhere).

Latency: ``warmup`` untimed calls, then ``repeats`` timed calls (or as many as fit in ``max_seconds``, at
least 10; each row records how many); median and 95th percentile. With ``rounds`` > 1 every runtime is
timed that many times, round-robin, each time in a fresh process, and the round with the lowest median is
kept (as timeit keeps its best): a burst of other work on the machine then spoils one round, not the row.
Every runtime
gets the same thread count (``threads``: torch.set_num_threads, ONNX Runtime intra-op threads, OMP). Energy:
joules per inference *estimated* on every built-in target from the model each runtime executes (fp32,
int8 for the post-training quantizers, the optimized model on its hard paths for wattless), and *measured*
with this machine's counter where one exists (never otherwise). The machine's load average at start and end
is recorded: other work on the cores slows every row.
"""

from __future__ import annotations

import json
import os
import platform
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from wattless.baselines import ALIASES, BASELINES, ENERGY_INPUTS, run_baselines
from wattless.errors import BenchError, MeasurementUnavailable
from wattless.kernels import CPU_FEATURES, cpu_features, cpu_name, u8s8_exact

__all__ = ["bench", "BenchRow", "print_table", "cpu_features", "RUNTIMES", "AS_WRITTEN", "GUARD_BASELINE",
           "CPU_FEATURES"]

RUNTIMES = ("torch-fp32", "torch-dynamic-int8", "ort-fp32", "ort-dynamic-int8", "ort-static-int8", "wattless")
# on request: the export exactly as stored, in plain ONNX Runtime (its portable form; wattless.kernels), beside
# the wattless row (the fastest exact form for this CPU): the cost of a file that is right on every CPU
AS_WRITTEN = "wattless-as-written"
_OWN = ("wattless", AS_WRITTEN)
GUARD_BASELINE = "ort-fp32"
WATTLESS_FILE = "wattless.onnx"
# every runtime but wattless is a baseline of wattless.baselines, its bench row labelled by its runtime
_BASELINE_OF = {b.label: b.name for b in BASELINES.values()}


# --- inputs ---------------------------------------------------------------------------------------------

def _token_rows(wl: Any, batch: int, seq_len: int) -> np.ndarray:
    """(batch, seq_len) token ids of real text: test sentences run together, cut to seq_len, [CLS] ... [SEP]."""
    from wattless.workloads.minilm import load_tokenizer

    tok = load_tokenizer()
    stream = [t for s in wl.test.inputs for t in tok(s, add_special_tokens=False)["input_ids"]]
    body = seq_len - 2
    if len(stream) < batch * body:
        stream = stream * (batch * body // max(len(stream), 1) + 1)
    rows = [[tok.cls_token_id, *stream[i * body : (i + 1) * body], tok.sep_token_id] for i in range(batch)]
    return np.asarray(rows, dtype=np.int64)


def _inputs(wl: Any, batch: int, seq_len: int, encoder: bool) -> np.ndarray:
    if encoder:
        return _token_rows(wl, batch, seq_len)
    x = wl.test.inputs
    return x[np.arange(batch) % len(x)].float().numpy()


# --- the worker: one runtime, in its own process -----------------------------------------------------------

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
    if name in _OWN:
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
    if spec["runtime"] in _OWN:
        if spec["encoder"]:
            from wattless.export.parity import encoder_metrics as _encoder_metrics

            return _encoder_metrics(model, wl)
        from wattless.export.parity import Session as _Session

        model = _Session(model.path)
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
    """Time one runtime on each batch size (increasing), in this process; see the module docstring."""
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


def _run_worker(spec: dict[str, Any], isolate: bool, timeout_s: float) -> dict[str, Any]:
    if not isolate:
        out = worker(spec)
        for row in out["rows"]:
            row["peak_rss_mb"] = None  # one shared process: its peak is not this runtime's
        return out
    path = Path(spec["workdir"]) / f"spec-{spec['runtime']}.json"
    path.write_text(json.dumps(spec))
    env = {**os.environ, "OMP_NUM_THREADS": str(spec["threads"]), "MKL_NUM_THREADS": str(spec["threads"])}
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


# --- preparing every runtime's model -----------------------------------------------------------------------

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
    x = _token_rows(wl, n, seq_len)
    return [{"input_ids": torch.from_numpy(x[i : i + 1]), "attention_mask": torch.ones((1, seq_len), dtype=torch.int64)}
            for i in range(n)]


def _check_run(run: Path, workload: str) -> None:
    marker = run / "run.json"
    if not marker.is_file():
        raise BenchError(f"--run {run} is not a `wattless optimize` run directory (no run.json)")
    from wattless.optimize import read_run_marker
    from wattless.train import read_tensors

    held = read_run_marker(run)["identity"].get("workload")
    if held != workload:
        raise BenchError(f"--run {run} holds a run of workload {held!r}, not {workload!r}; pass --workload {held}")
    read_tensors(run / "model.safetensors")  # a damaged model is named now, not after the timing


# --- the benchmark ----------------------------------------------------------------------------------------

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


@dataclass(frozen=True)
class _Plan:
    """A benchmark's settings, checked: what runs, on which batch sizes, timed how."""

    runtimes: list[str]
    batches: list[int]
    threads: int
    warmup: int
    repeats: int
    seq_len: int
    encoder: bool
    max_seconds: float
    rounds: int
    isolate: bool
    measure: bool
    timeout_s: float


@dataclass
class _Prepared:
    """Every runtime's file, size and estimated energy, and the baselines' rows (wattless.baselines)."""

    defined: dict[str, dict[str, Any]]
    files: dict[str, Any]
    sizes: dict[str, float]
    energies: dict[str, dict[str, float]]
    export_report: Any = None
    kernel_notes: dict[str, str] = field(default_factory=dict)


def _check_files(export: str | Path | None, json_path: str | Path | None) -> None:
    """Every file bench was given, checked before minutes of timing: an export it can load, a JSON path it
    can write."""
    from wattless.files import check_output_file
    from wattless.runtime import read_metadata

    if json_path is not None:
        check_output_file(Path(json_path), "--json", BenchError)
    if export is not None:
        read_metadata(export)  # ExportError naming the file if it is not a wattless export


def bench(
    workload: str,
    *,
    run: str | Path | None = None,
    export: str | Path | None = None,
    batches: Sequence[int] = (1, 32),
    threads: int = 2,
    warmup: int = 20,
    repeats: int = 200,
    seq_len: int = 64,
    runtimes: Sequence[str] = RUNTIMES,
    energy_samples: int = ENERGY_INPUTS,
    max_seconds: float = 60.0,
    rounds: int = 1,
    isolate: bool = True,
    measure: bool = True,
    workdir: str | Path | None = None,
    json_path: str | Path | None = None,
    timeout_s: float = 1800.0,
    log: Any = None,
) -> dict[str, Any]:
    """Benchmark ``runtimes`` side by side on ``workload``; the wattless row needs ``run`` (a run directory,
    exported here) or ``export`` (a file from `wattless export`). Returns the JSON object (see docs/EXPORT.md)
    and writes it to ``json_path`` if given."""
    from wattless.workloads import get_workload

    say = log or (lambda msg: None)
    runtimes = _check_args(runtimes, batches, threads, warmup, repeats, seq_len, rounds)
    _check_files(export, json_path)
    wl = get_workload(workload)
    if run is not None:
        run = Path(run)
        _check_run(run, wl.name)
    if set(_OWN) & set(runtimes) and run is None and export is None:
        runtimes = [r for r in runtimes if r not in _OWN]
        say("no --run given: the wattless row is left out")
    own = workdir is None
    work = Path(tempfile.mkdtemp(prefix="wattless-bench-")) if own else Path(workdir)
    work.mkdir(parents=True, exist_ok=True)
    load_start = os.getloadavg()
    measure, notes = _counter_here(measure)
    plan = _Plan(runtimes, sorted({int(b) for b in batches}), threads, warmup, repeats, seq_len,
                 wl.name == "minilm", max_seconds, rounds, isolate, measure, timeout_s)
    try:
        prepared = _prepare(wl, plan, work, run, export, energy_samples, say)
        firsts, timings = _time_all(workload, plan, work, prepared, say)
        rows = _rows(wl, plan, prepared, firsts, timings, notes)
        result = _result(wl, rows, plan, load_start, sorted(notes), prepared.export_report, run)
    finally:
        if own:
            shutil.rmtree(work, ignore_errors=True)
    if json_path is not None:
        from wattless.files import atomic_write

        Path(json_path).parent.mkdir(parents=True, exist_ok=True)
        atomic_write(Path(json_path), json.dumps(result, indent=2))
    return result


def _check_args(runtimes: Sequence[str], batches: Sequence[int], threads: int, warmup: int, repeats: int,
                seq_len: int, rounds: int) -> list[str]:
    """The runtimes by their bench names (a baseline's name is accepted for its row); bad settings refused."""
    runtimes = [ALIASES.get(r, r) if ALIASES.get(r) in RUNTIMES else r for r in runtimes]
    unknown = [r for r in runtimes if r not in (*RUNTIMES, AS_WRITTEN)]
    if unknown or not runtimes:
        raise BenchError(f"unknown runtime(s) {unknown}: choose among {', '.join((*RUNTIMES, AS_WRITTEN))}")
    if not batches or any(int(b) < 1 for b in batches):
        raise BenchError(f"batch sizes must be positive integers, got {list(batches)}")
    if threads < 1 or warmup < 0 or repeats < 1 or seq_len < 2 or rounds < 1:
        raise BenchError("threads, repeats and rounds must be >= 1, warmup >= 0 and seq_len >= 2")
    return runtimes


def _counter_here(measure: bool) -> tuple[bool, set[str]]:
    """Whether to measure, after one look for a counter here (rather than one per worker), and why not."""
    if not measure:
        return False, set()
    from wattless.energy.measure import default_meter

    try:
        default_meter()
    except MeasurementUnavailable as exc:
        return False, {str(exc)}
    return True, set()


def _prepare(wl: Any, plan: _Plan, work: Path, run: Path | None, export: str | Path | None, energy_samples: int,
             say: Any) -> _Prepared:
    """The inputs, the baselines' files (the same definitions search uses), the wattless export, and every
    runtime's size and estimated energy."""
    from wattless.optimize import baseline_model

    say("preparing the baseline and the runtimes' files")
    baseline, _ = baseline_model(wl, progress=False)
    baseline = baseline.eval()
    for b in plan.batches:
        np.save(work / f"inputs_b{b}.npy", _inputs(wl, b, plan.seq_len, plan.encoder))
    samples = _samples(wl, plan.seq_len, plan.encoder, energy_samples)
    say("building the baselines (wattless.baselines: the same definitions search uses)")
    names = [_BASELINE_OF[r] for r in plan.runtimes if r in _BASELINE_OF]
    defined = run_baselines(wl, baseline, names, work / "baselines", samples)
    failed = {n: r["error"] for n, r in defined.items() if r.get("metric") is None}
    if failed:
        raise BenchError(f"baseline(s) could not be built here: {failed}")
    files = {BASELINES[n].label: r["file"] for n, r in defined.items() if r.get("file")}
    prepared = _Prepared(defined, files, _torch_sizes(baseline, work), {})
    optimized = _own_file(prepared, wl, plan, work, run, export, say) if set(_OWN) & set(plan.runtimes) else None
    for name, file in files.items():
        prepared.sizes[name] = _size_mb(Path(file))
    say("estimating energy per runtime")
    prepared.energies = {BASELINES[n].label: r["energy_j"] for n, r in defined.items()}
    if optimized is not None:
        prepared.energies["wattless"] = prepared.energies[AS_WRITTEN] = _joules(optimized, samples)
    return prepared


def _own_file(prepared: _Prepared, wl: Any, plan: _Plan, work: Path, run: Path | None,
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


def _time_all(workload: str, plan: _Plan, work: Path, prepared: _Prepared,
              say: Any) -> tuple[dict[str, dict[str, Any]], dict[tuple[str, int], list[dict[str, Any]]]]:
    """Every runtime timed ``rounds`` times, round-robin (a burst of other work on the machine hits one round):
    each runtime's first round (metric, measured energy), and every round's timings per (runtime, batch)."""
    rows_of = {BASELINES[n].label for n in prepared.defined}
    firsts: dict[str, dict[str, Any]] = {}
    timings: dict[tuple[str, int], list[dict[str, Any]]] = {}
    for round_ in range(plan.rounds):
        for name in plan.runtimes:
            say(f"timing {name}" + (f" (round {round_ + 1} of {plan.rounds})" if plan.rounds > 1 else ""))
            spec = {"runtime": name, "workload": workload, "workdir": str(work), "batches": plan.batches,
                    "threads": plan.threads, "warmup": plan.warmup, "repeats": plan.repeats, "encoder": plan.encoder,
                    "file": str(prepared.files.get(name, "")), "max_seconds": plan.max_seconds,
                    "measure": plan.measure and round_ == 0, "metric": round_ == 0 and name not in rows_of}
            got = _run_worker(spec, plan.isolate, plan.timeout_s)
            firsts.setdefault(name, got)
            for r in got["rows"]:
                timings.setdefault((name, r["batch"]), []).append(r)
    return firsts, timings


def _rows(wl: Any, plan: _Plan, prepared: _Prepared, firsts: dict[str, dict[str, Any]],
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
                baseline=_BASELINE_OF.get(name), note=defn.get("note") or prepared.kernel_notes.get(name),
                calibration=defn.get("calibration")))
    return rows


def _kernel_notes(path: Path) -> dict[str, str]:
    """What form the integer products of the wattless rows run in (wattless.kernels)."""
    from wattless.runtime import load

    return {"wattless": f"integer products: {load(path).kernels.note}",
            AS_WRITTEN: "the file as written, in plain ONNX Runtime (integer products in its stored form)"}


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


def _result(wl: Any, rows: list[BenchRow], plan: _Plan, load_start: tuple, notes: list[str], export_report: Any,
            run: Path | None) -> dict[str, Any]:
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


def _features_text(features: dict[str, bool | str]) -> str:
    if all(v == "unknown" for v in features.values()):
        return "CPU features unknown"
    have = [f for f, v in features.items() if v is True]
    return "with " + ", ".join(have) if have else f"without {', '.join(features)}"


def guard_lines(result: dict[str, Any]) -> list[str]:
    """The plain-words verdict of the guard, one line per batch size."""
    lines = []
    for batch, g in result["guard"].items():
        verdict = "SLOWER than" if g["slower_than_ort_fp32"] else "faster than"
        lines.append(f"batch {batch}: the wattless export is {verdict} ONNX Runtime fp32 "
                     f"({g['speedup_vs_ort_fp32']:.2f}x its speed)")
    return lines


def print_table(result: dict[str, Any], console: Any = None, target: str = "mobile-npu") -> None:
    """The result as a table on the console, with the guard's verdict under it."""
    from rich import get_console
    from rich.markup import escape
    from rich.table import Table

    console = console or get_console()
    m = result["machine"]
    table = Table(title=f"{escape(result['workload'])}: runtimes side by side, {result['threads']} thread(s), "
                        f"{result['repeats']} timed calls" + (f", {result['seq_len']} tokens" if result["seq_len"] else ""),
                  caption=f"{m['cpu']} ({m['cores']} cores, {_features_text(m.get('cpu_features') or {})}), "
                          f"load average {m['load_average_start'][0]:.1f} -> {m['load_average_end'][0]:.1f}; "
                          f"energy estimated on {target}")
    for col in ("runtime", "batch", "p50 ms", "p95 ms", "inputs/s", "vs ort-fp32", "peak RSS MB", "size MB",
                result["metric_name"], "µJ/inference"):
        table.add_column(col, justify="right" if col != "runtime" else "left")
    for r in result["rows"]:
        energy = r["energy_j"].get(target)
        table.add_row(r["runtime"], str(r["batch"]), f"{r['latency_ms_p50']:.3f}", f"{r['latency_ms_p95']:.3f}",
                      f"{r['throughput_per_s']:.0f}",
                      f"{r['speedup_vs_ort_fp32']:.2f}x" if r.get("speedup_vs_ort_fp32") else "-",
                      f"{r['peak_rss_mb']:.0f}" if r["peak_rss_mb"] is not None else "-",
                      f"{r['size_mb']:.2f}" if r["size_mb"] is not None else "-",
                      f"{r['metric']:.4f}" if r["metric"] is not None else "-",
                      f"{energy * 1e6:.3g}" if energy is not None else "-")
    console.print(table)
    for line in guard_lines(result):
        console.print(("[bold red]" if "SLOWER" in line else "[green]") + line, highlight=False)
    if result["measured_note"]:
        console.print(f"[yellow]not measured:[/] {escape(result['measured_note'])}", highlight=False)


def _main(argv: list[str]) -> None:
    if len(argv) == 2 and argv[0] == "--worker":
        spec = json.loads(Path(argv[1]).read_text())
        sys.stdout.write(json.dumps(worker(spec)) + "\n")
        return
    raise SystemExit("usage: python -m wattless.bench --worker SPEC.json (internal; use `wattless bench`)")


if __name__ == "__main__":
    _main(sys.argv[1:])
