"""Per-token symmetric activations on ONNX Runtime's fused kernels: one QuantizeLinear per shared input, one
MatMulIntegerToFloat per product, no zero-point correction.

A layer quantized per token on the symmetric grid (``act_grid = "symmetric"``) rounds each row of its input
as ``s = max(max|x_row| / (2^(k-1) - 1), tiny)``, ``q = round(x / s)``. In the graph the input is viewed as
rows (``Reshape`` to rows x channels), the row steps are ``Abs`` -> ``ReduceMax`` -> ``Div`` -> ``Max``, and one
per-axis ``QuantizeLinear`` (axis 0, the row steps as its 1-D scale) writes the codes: it divides and rounds
half to even as PyTorch does, so the codes are PyTorch's bit for bit (checked on 1.5 million codes). The
codes ride on zero point 128 as uint8 (exact), one scalar for every row, so ``MatMulIntegerToFloat`` takes
them with no correction; its output times the row step (a ``Mul``) is the layer's product. Why not the
alternatives (measured on onnxruntime 1.32, 2 threads, 64 x 384 @ 384 x 1536): int8 codes (zero point 0)
send MatMulIntegerToFloat to an s8 x s8 path about 50 times slower; a blocked QuantizeLinear on the 3-D
tensor (one block per row) takes 148 us where the per-axis one on rows takes 22."""

from __future__ import annotations

import numpy as np

from wattless.export.graph import F32, I8, I64, MS, U8, Graph

__all__ = ["quantize_rows", "row_product", "back_to_tokens", "ROWS", "use_rows"]

ROWS = ("rows layout",)  # g.memo key: the graph keeps its activations as rows; value: (tokens shape, zero points)


def use_rows(g: Graph, ids: str) -> None:
    """Keep this graph's activations as rows (tokens x channels, 2-D) for ids (batch, tokens): the tokens
    shape and the row zero points are computed once, not per quantized input."""
    shape = g.op("Shape", [ids], "rows")
    count = g.op("ReduceProd", [shape], "rows", keepdims=1)  # (1,): batch x tokens
    zero = g.op("Expand", [g.const(128, "zero128", U8), count], "rows")
    g.memo[ROWS] = (g.op("Concat", [shape, g.const([-1], "minus1", I64)], "rows", axis=0), zero)


def quantize_rows(g: Graph, x: str, channels: int, bits: int, hint: str) -> tuple[str, str]:
    """x (..., channels) -> (uint8 codes on zero point 128 (rows, channels), row steps (rows, 1)); computed
    once per input value and bit width, shared by every layer that reads it. In the rows layout (use_rows)
    x is rows already."""
    key = ("rows", x, bits)
    if key in g.memo:
        return g.memo[key]
    qp = 2 ** (bits - 1) - 1
    rows = x if ROWS in g.memo else g.op("Reshape", [x, g.const([-1, channels], f"rows{channels}", I64)], hint)
    peak = g.op("ReduceMax", [g.op("Abs", [rows], hint), g.const([-1], "minus1", I64)], hint, keepdims=1)
    step = g.op("Max", [g.op("Div", [peak, g.const(float(qp), f"levels_sym{bits}")], hint),
                        g.const(np.finfo(F32).tiny, "tiny")], hint)  # (rows, 1)
    flat = g.op("Reshape", [step, g.const([-1], "minus1", I64)], hint)  # (rows,): per-axis scale
    zero = (g.memo[ROWS][1] if ROWS in g.memo
            else g.op("Expand", [g.const(128, "zero128", U8), g.op("Shape", [flat], hint)], hint))
    codes = g.op("QuantizeLinear", [rows, flat, zero], hint, axis=0)
    if bits < 8:  # k-bit codes: clip on the codes (round then clip = clip then round at these bounds)
        codes = g.op("Clip", [codes, g.const(128 - qp, f"code_lo{bits}", U8), g.const(128 + qp, f"code_hi{bits}", U8)],
                     hint)
    g.memo[key] = (codes, step)
    return g.memo[key]


def row_product(g: Graph, codes: str, step: str, w: np.ndarray, scale: np.ndarray, hint: str) -> str:
    """(rows, in) codes @ w.T (w: (out, in) int8 codes, scale (out,)) times each row's step: (rows, out)."""
    acc = g.op("MatMulIntegerToFloat", [codes, g.const(w.T, f"{hint}.weight", I8), g.const(1.0, "one_f"),
                                        g.const(scale, f"{hint}.weight_scale"), g.const(128, "zero128", U8)],
               hint, domain=MS)
    return g.op("Mul", [acc, step], hint)


def back_to_tokens(g: Graph, y: str, like: str, hint: str, *, always: bool = False) -> str:
    """(rows, out) -> like's leading dimensions x out; in the rows layout y stays rows unless ``always``
    (then: batch x tokens x out)."""
    if ROWS in g.memo:
        return g.op("Reshape", [y, g.memo[ROWS][0]], hint) if always else y
    key = ("lead", like)
    if key not in g.memo:
        lead = g.op("Shape", [like], hint, end=-1)
        g.memo[key] = g.op("Concat", [lead, g.const([-1], "minus1", I64)], hint, axis=0)
    return g.op("Reshape", [y, g.memo[key]], hint)
