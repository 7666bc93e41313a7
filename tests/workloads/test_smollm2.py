"""The smollm2 workload's corpus is deterministic with disjoint parts; its metrics score a decoder (tiny here)."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from wattless.errors import WorkloadError
from wattless.testing import tiny_llama
from wattless.workloads.smollm2 import corpus_parts, decoder_metrics, stdlib_documents, token_windows, top1


class CharTokenizer:
    """One token per byte (mod 96), the call form transformers tokenizers have."""

    def __call__(self, text: str, add_special_tokens: bool = False) -> dict[str, list[int]]:
        return {"input_ids": [b % 96 for b in text.encode()]}


def test_corpus_parts_are_disjoint_and_deterministic():
    docs = stdlib_documents()
    calibration, test = corpus_parts(docs)
    assert len(docs) > 100 and len(test) > 20_000 and len(calibration) > 2 * len(test)
    test_docs, calibration_docs = set(test.split("\n\n")), set(calibration.split("\n\n"))
    assert corpus_parts(tuple(reversed(docs))) == (calibration, test)  # the order read does not matter
    whole = [d for d in docs if "\n\n" not in d]  # documents without blank lines split back exactly
    assert whole and all((d in test_docs) != (d in calibration_docs) for d in whole)


def test_token_windows_cut_consecutive_tokens_and_refuse_too_few():
    ids = token_windows(CharTokenizer(), "abcdefghij" * 10, windows=3, tokens=20)
    assert ids.shape == (3, 20) and ids.dtype == torch.int64
    assert ids.flatten().tolist() == CharTokenizer()("abcdefghij" * 6)["input_ids"]
    with pytest.raises(WorkloadError, match="fewer than"):
        token_windows(CharTokenizer(), "short", windows=2, tokens=20)


def test_decoder_metrics_match_cross_entropy_and_agreement():
    model = tiny_llama()
    ids = torch.randint(0, 96, (5, 24), generator=torch.Generator().manual_seed(1))
    reference = top1(model, ids)
    metrics = decoder_metrics(model, ids, reference)
    with torch.no_grad():
        logits = model(ids).logits
    expected = math.exp(float(F.cross_entropy(logits[:, :-1].flatten(0, 1), ids[:, 1:].flatten())))
    assert metrics["perplexity"] == pytest.approx(expected, rel=1e-5)
    assert metrics["next_token_agreement"] == 1.0
    other_model = tiny_llama(seed=3, tied=False)
    other = decoder_metrics(other_model, ids, reference)
    expected_agreement = float((top1(other_model, ids) == reference).float().mean())
    assert other["next_token_agreement"] == pytest.approx(expected_agreement) and expected_agreement < 0.5
    assert other["perplexity"] != pytest.approx(expected)
    as_callable = decoder_metrics(lambda b: model(b).logits.detach(), ids, reference)
    assert as_callable == pytest.approx(metrics)
