"""all-MiniLM-L6-v2 cut to its first layer, as a user workload: a small sentence encoder for the
embeddings endpoint's tests (pretrained, so `wattless optimize` trains nothing)."""

from __future__ import annotations

import dataclasses


def workload():
    from wattless.workloads import get_workload

    full = get_workload("minilm")

    def build():
        model = full.build_model()
        model.encoder.layer = model.encoder.layer[:1]
        return model

    return dataclasses.replace(full, build_model=build, val=full.val.take(slice(0, 24)),
                               test=full.test.take(slice(0, 16)))
