"""Decoder export with its KV cache: logits, perplexity and greedy tokens equal PyTorch's (tiny Llama)."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
import torch

from wattless.errors import ModelInputError, ParityError
from wattless.export.lm import export_decoder, torch_greedy
from wattless.runtime import load
from wattless.techniques.base import ApplyContext, apply_
from wattless.techniques.weight_only import WeightOnlyConfig
from wattless.testing import tiny_llama

WINDOWS = torch.randint(0, 96, (4, 40), generator=torch.Generator().manual_seed(0))


def _quantized(**grid) -> torch.nn.Module:
    model = tiny_llama(hidden=64, heads=4, kv_heads=2)
    config = WeightOnlyConfig(**{"bits": 4, "group_size": 32, **grid})
    apply_(model, config, ApplyContext(example_input=WINDOWS[:1], train_batches=lambda: iter([(WINDOWS, None)])))
    return model


@pytest.mark.parametrize("kind", ["float", "int4", "int3-float-zero+int8-head"])
def test_export_matches_pytorch_through_the_cache(tmp_path, kind):
    model = {"float": lambda: tiny_llama(),
             "int4": lambda: _quantized(),
             "int3-float-zero+int8-head": lambda: _quantized(
                 bits=3, zero_point="float", overrides={"lm_head": {"bits": 8, "group_size": 32, "symmetric": True}}),
             }[kind]()
    report = export_decoder(model, tmp_path / "lm.onnx", windows=WINDOWS, accuracy_level=0, greedy_tokens=12)
    parity = report.parity
    assert parity["passed"] and parity["perplexity_onnx"] == pytest.approx(parity["perplexity_torch"], rel=1e-4)
    assert parity["top1_agreement"] == 1.0 and parity["max_relative_logit_diff"] < 1e-4
    assert all(g["equal"] for g in parity["greedy"])
    ops = {n.op_type for n in onnx.load(str(report.path)).graph.node}
    assert "GroupQueryAttention" in ops and ("MatMulNBits" in ops) == (kind != "float")
    lm = load(report.path)
    ids = WINDOWS[0, :10].tolist()
    assert lm.generate_ids(ids, max_new_tokens=8)[0] == torch_greedy(model, ids, 8)[0]
    assert lm.logits(WINDOWS[:2]).shape == (2, 40, 96)


def test_the_cache_carries_the_prompt(tmp_path):
    model = tiny_llama()
    lm = load(export_decoder(model, tmp_path / "lm.onnx", windows=WINDOWS, check=False).path)
    ids = WINDOWS[:1, :20].numpy()
    whole = lm.logits(ids)
    _, cache = lm.step(ids[:, :12], lm.empty_cache())
    assert cache[0].shape == (1, 2, 12, 16)
    for t in range(12, 20):
        logits, cache = lm.step(ids[:, t : t + 1], cache)
        np.testing.assert_allclose(logits[0, -1], whole[0, t], atol=1e-4)
    wrong, _ = lm.step(ids[:, 19:20], lm.empty_cache())  # the same token without its past differs
    assert np.abs(wrong[0, -1] - whole[0, 19]).max() > 1e-3


def test_sampling_is_seeded_and_settings_are_checked(tmp_path):
    lm = load(export_decoder(tiny_llama(), tmp_path / "lm.onnx", windows=WINDOWS, check=False).path)
    ids = WINDOWS[0, :6].tolist()
    a = lm.generate_ids(ids, max_new_tokens=10, temperature=1.5, seed=1)[0]
    assert a == lm.generate_ids(ids, max_new_tokens=10, temperature=1.5, seed=1)[0]
    assert a != lm.generate_ids(ids, max_new_tokens=10, temperature=1.5, seed=2)[0]
    for bad in ({"max_new_tokens": 0}, {"temperature": -1.0}, {"temperature": float("nan")}, {"max_new_tokens": 600}):
        with pytest.raises(ModelInputError, match="max_new_tokens|temperature|positions"):
            lm.generate_ids(ids, **{"max_new_tokens": 4, **bad})
    with pytest.raises(ModelInputError, match="0..95"):
        lm.logits([[1, 200]])


def test_a_failed_parity_check_writes_nothing(tmp_path):
    out = tmp_path / "lm.onnx"
    with pytest.raises(ParityError, match="perplexity"):
        export_decoder(tiny_llama(), out, windows=WINDOWS, min_agree=1.01)
    assert not out.exists() and not list(tmp_path.iterdir())


def test_an_int8_kv_cache_is_exported_as_codes_and_scales(tmp_path):
    from wattless.techniques.kv_cache import KVCacheConfig

    model = _quantized()
    apply_(model, KVCacheConfig(bits=8), ApplyContext(example_input=WINDOWS[:1]))
    report = export_decoder(model, tmp_path / "lm.onnx", windows=WINDOWS, accuracy_level=0, greedy_tokens=12)
    parity = report.parity
    assert parity["passed"] and parity["perplexity_onnx"] == pytest.approx(parity["perplexity_torch"], rel=1e-4)
    lm = load(report.path)
    assert lm.meta["kv_cache"]["dtype"] == "int8" and lm.meta["pricing"]["kv_precision"] == "int8"
    ids = WINDOWS[0, :20].tolist()
    logits, cache = lm.step(np.array([ids[:12]]), lm.empty_cache())
    assert [c.dtype for c in cache[:4]] == [np.int8, np.float32, np.int8, np.float32]
    assert cache[0].shape == (1, 2, 12, 16) and cache[1].shape == (1, 2, 12, 1)
    for t in ids[12:]:  # decoding through the int8 cache follows PyTorch's (float-held) cache closely
        step_logits, cache = lm.step(np.array([[t]]), cache)
    with torch.no_grad():
        want = model(torch.tensor([ids])).logits[0, -1].numpy()
    assert np.abs(step_logits[0, -1] - want).max() < 2e-2 * np.abs(want).max()
    assert lm.generate_ids(ids[:10], max_new_tokens=8)[0] == torch_greedy(model, ids[:10], 8)[0]
