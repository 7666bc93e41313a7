"""The arrays every runtime is timed on: test inputs for classifiers, real tokens for sentence encoders."""

from __future__ import annotations

from typing import Any

import numpy as np

__all__ = ["token_rows", "inputs"]


def token_rows(wl: Any, batch: int, seq_len: int) -> np.ndarray:
    """(batch, seq_len) token ids of real text: test sentences run together, cut to seq_len, [CLS] ... [SEP]."""
    from wattless.workloads.minilm import load_tokenizer

    tok = load_tokenizer()
    stream = [t for s in wl.test.inputs for t in tok(s, add_special_tokens=False)["input_ids"]]
    body = seq_len - 2
    if len(stream) < batch * body:
        stream = stream * (batch * body // max(len(stream), 1) + 1)
    rows = [[tok.cls_token_id, *stream[i * body : (i + 1) * body], tok.sep_token_id] for i in range(batch)]
    return np.asarray(rows, dtype=np.int64)


def inputs(wl: Any, batch: int, seq_len: int, encoder: bool) -> np.ndarray:
    if encoder:
        return token_rows(wl, batch, seq_len)
    x = wl.test.inputs
    return x[np.arange(batch) % len(x)].float().numpy()
