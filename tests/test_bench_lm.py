"""The decoder bench's worker times a decoder export and scores it; rows carry the contract's fields."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from wattless.bench.lm import _ratios, bench_lm, lm_worker
from wattless.errors import BenchError
from wattless.export.lm import export_decoder, torch_greedy
from wattless.testing import tiny_llama
from wattless.workloads.smollm2 import decoder_metrics, top1

WINDOWS = torch.randint(0, 96, (3, 24), generator=torch.Generator().manual_seed(0))


def test_worker_times_prefill_and_decode_and_scores(tmp_path):
    model = tiny_llama()
    path = export_decoder(model, tmp_path / "lm.onnx", windows=WINDOWS, check=False).path
    reference = top1(model, WINDOWS)
    np.save(tmp_path / "windows.npy", WINDOWS.numpy())
    np.save(tmp_path / "prompt.npy", WINDOWS[0, :16].numpy())
    np.save(tmp_path / "reference_top1.npy", reference.numpy())
    spec = {"kind": "decoder", "runtime": "ort-fp32", "workdir": str(tmp_path), "threads": 1, "repeats": 2,
            "new_tokens": 6, "file": str(path), "metric": True}
    out = lm_worker(spec)
    assert out["prefill_tokens_per_s"] > 0 and out["decode_tokens_per_s"] > 0 and out["peak_rss_mb"] > 0
    assert out["greedy_tokens"] == torch_greedy(model, WINDOWS[0, :16].tolist(), 6)[0]
    want = decoder_metrics(model, WINDOWS, reference)
    assert out["metrics"]["perplexity"] == pytest.approx(want["perplexity"], rel=1e-4)
    assert out["metrics"]["next_token_agreement"] == 1.0


def test_ratios_and_bad_settings():
    rows = [{"runtime": "ort-fp32", "decode_tokens_per_s": 10.0, "energy_j_per_token": {"mobile-npu": 4.0}},
            {"runtime": "torch-fp32", "decode_tokens_per_s": 5.0, "energy_j_per_token": {"mobile-npu": 4.0}},
            {"runtime": "wattless", "decode_tokens_per_s": 25.0, "energy_j_per_token": {"mobile-npu": 0.5}}]
    _ratios(rows)
    assert rows[2]["decode_speedup_vs_ort_fp32"] == 2.5 and rows[2]["energy_ratio_vs_fp32"] == {"mobile-npu": 8.0}
    with pytest.raises(BenchError, match="runtimes must be among"):
        bench_lm("smollm2", runtimes=("ort-int8",))
    with pytest.raises(BenchError, match="smollm2"):
        bench_lm("minilm")


def test_the_bench_prices_each_runtimes_storage_and_the_exports_own(tmp_path):
    from wattless.bench.lm import PRICING, _energy, _export_pricing, _priced
    from wattless.techniques.base import ApplyContext, apply_
    from wattless.techniques.kv_cache import KVCacheConfig
    from wattless.techniques.weight_only import WeightOnlyConfig

    model = tiny_llama()
    quantized = tiny_llama()
    context = ApplyContext(example_input=WINDOWS[:1], train_batches=lambda: iter([(WINDOWS, None)]))
    apply_(quantized, WeightOnlyConfig(bits=4, group_size=16, method="rtn"), context)
    apply_(quantized, KVCacheConfig(bits=8), context)
    path = export_decoder(quantized, tmp_path / "lm.onnx", windows=WINDOWS, check=False).path
    weights, kv = _export_pricing(path)
    assert kv == "int8" and weights["model.layers.0.self_attn.q_proj"] == ("int4", (16 + 4) / 16)
    fp32 = _energy(_priced(model, {}), 8, 4)
    mine = _energy(_priced(model, weights, kv), 8, 4)
    assert mine["kv_read_bytes_per_token"] == pytest.approx(fp32["kv_read_bytes_per_token"] / 4)
    assert mine["weight_bytes_per_token"] < fp32["weight_bytes_per_token"] / 3
    assert PRICING["llama-cpp"]["*"] == ("int4", 1.0)


def test_idle_threads_sleep_when_asked(tmp_path, monkeypatch):
    from wattless.bench import process

    model = tiny_llama()
    path = export_decoder(model, tmp_path / "lm.onnx", windows=WINDOWS, check=False).path
    from wattless.runtime import load

    quiet = load(path, threads=1, spin=False)
    assert quiet.generate_ids(WINDOWS[0, :8].tolist(), max_new_tokens=4)[0] == torch_greedy(model, WINDOWS[0, :8].tolist(), 4)[0]
    seen = {}

    def fake_run(cmd, capture_output, text, env, timeout):
        seen.update(env)
        raise process.subprocess.TimeoutExpired(cmd, timeout)

    monkeypatch.setattr(process.subprocess, "run", fake_run)
    with pytest.raises(BenchError, match="did not finish"):
        process.run_worker({"workdir": str(tmp_path), "runtime": "llama-cpp", "threads": 2, "spin": False}, True, 1.0)
    assert seen["OMP_WAIT_POLICY"] == "PASSIVE" and seen["OMP_NUM_THREADS"] == "2"
