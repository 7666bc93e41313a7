"""KV-cache int8: keys and values on a per-vector grid, a small cost in perplexity, a quarter of the cache bytes."""

from __future__ import annotations

import pytest
import torch

from wattless.energy.decode import count_decode
from wattless.recipe import parse_recipe
from wattless.techniques.base import ApplyContext, apply_
from wattless.techniques.kv_cache import KVCacheConfig, quantize_vectors
from wattless.testing import tiny_llama
from wattless.workloads.smollm2 import decoder_metrics, top1

IDS = torch.randint(0, 96, (4, 32), generator=torch.Generator().manual_seed(0))


def test_vectors_round_to_their_own_grid():
    x = torch.randn(2, 5, 3 * 16, generator=torch.Generator().manual_seed(1))
    q = quantize_vectors(x, 16, 8)
    step = x.unflatten(-1, (3, 16)).abs().amax(-1, keepdim=True) / 127
    assert ((q - x).unflatten(-1, (3, 16)).abs() <= step / 2 + 1e-7).all()
    assert torch.allclose(q.unflatten(-1, (3, 16)) / step, torch.round(q.unflatten(-1, (3, 16)) / step), atol=1e-4)


def _kv_bytes(model) -> float:
    counts = count_decode(model, IDS[:1, :16], new_tokens=2)
    return sum(u.record()["kv_read_bytes"] for u in counts.steps.samples[0].values())


def test_int8_cache_costs_little_and_reads_a_quarter():
    model, reference = tiny_llama(), None
    reference = top1(model, IDS)
    before, float_bytes = decoder_metrics(model, IDS, reference), _kv_bytes(model)
    handle = apply_(model, KVCacheConfig(bits=8), ApplyContext(example_input=IDS[:1]))
    after = decoder_metrics(model, IDS, reference)
    assert after["perplexity"] == pytest.approx(before["perplexity"], rel=0.01) and after["perplexity"] != before["perplexity"]
    assert after["next_token_agreement"] > 0.95
    assert _kv_bytes(model) == pytest.approx(float_bytes / 4)
    assert handle.report(model)["kv_precision"] == "int8"
    assert parse_recipe({"kv_cache": {"bits": 8}}).kv_cache.bits == 8


def test_a_model_without_attention_is_refused():
    with pytest.raises(ValueError, match="k_proj"):
        apply_(torch.nn.Sequential(torch.nn.Linear(4, 4)), KVCacheConfig(), ApplyContext(example_input=torch.zeros(1, 4)))
