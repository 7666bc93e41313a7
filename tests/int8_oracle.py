"""The test oracle for integer exports, written apart from wattless.kernels (it imports nothing of wattless)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
from onnx import numpy_helper

PRODUCTS = {"MatMulInteger": 1, "MatMulIntegerToFloat": 1, "ConvInteger": 1, "QLinearConv": 3,
            "QLinearMatMul": 3, "DynamicQuantizeMatMul": 1}


def saturating_products(path: Path) -> list[str]:
    """The oracle, written apart from wattless.kernels: every integer product whose weights are int8 and hold,
    in one output channel, two codes a and b with 255 * (|a| + |b|) > 32767 (a pair vpmaddubsw saturates)."""
    model = onnx.load(str(path))
    inits = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
    nodes = list(model.graph.node)
    for n in list(nodes):
        nodes += [k for a in n.attribute if a.g is not None for k in a.g.node]
    bad = []
    for n in nodes:
        if n.op_type not in PRODUCTS or n.input[PRODUCTS[n.op_type]] not in inits:
            continue
        w = inits[n.input[PRODUCTS[n.op_type]]]
        if w.dtype != np.int8:
            continue
        per_channel = np.abs(w.astype(np.int32)).reshape(w.shape[0], -1)
        if n.op_type not in ("ConvInteger", "QLinearConv"):
            per_channel = np.abs(w.astype(np.int32)).T  # (K, N) -> (N, K)
        two = -np.sort(-per_channel, axis=1)[:, :2].sum(1)
        if (255 * two > 32767).any():
            bad.append(n.name)
    return bad
