"""Quantized layers on integer kernels, and their float counterparts.

The input is quantized with the step the QAT learned (QuantizeLinear, uint8; signed codes ride on zero point
128, which is exact), the weight is stored as its int8 codes with one scale per output channel, and the
product runs in ``MatMulIntegerToFloat`` (com.microsoft) or ``ConvInteger``; bits below 8 are the same codes
in int8 containers (exact), with a Clip for activations. A layer with 4-bit weights and float activations
runs ``MatMulNBits``. A Linear quantized per token computes each row's grid in the graph and runs
``MatMulInteger`` (asymmetric grid) or ``MatMulIntegerToFloat`` (symmetric grid, export/tokens.py; layers
reading one input can run as one product, ``token_products``); a smoothed one divides its input by its
SmoothQuant factor first.

What a layer's integers are is the quantization technique's answer (is_quantized, integer_weights,
act_scale in wattless.techniques.quantize); this module only writes them as ONNX."""

from __future__ import annotations

from typing import Any

import numpy as np
from torch import nn

from wattless.errors import ExportError
from wattless.export.graph import F32, I8, I64, MS, U8, Ctx, Graph, to_numpy
from wattless.export.tokens import back_to_tokens, quantize_rows, row_product
from wattless.techniques.prune import is_depthwise
from wattless.techniques.quantize import act_scale, integer_weights, is_quantized

__all__ = ["linear", "conv", "quantize", "quantize_input", "quantize_tokens", "weights", "token_products",
           "fusable", "smooth_divisor", "dynamic_fusable", "dynamic_products", "dynamic_attention"]


def quantize_input(g: Graph, x: str, m: nn.Module, hint: str) -> tuple[str, str, str]:
    """x (float) -> (uint8 codes, scale, zero point) exactly as the layer's fake quantizer rounds it."""
    step, _, signed = act_scale(m)
    return quantize(g, x, step, m.act_bits, signed, hint)


def quantize(g: Graph, x: str, step: float, bits: int, signed: bool, hint: str) -> tuple[str, str, str]:
    lo, hi = (-(2 ** (bits - 1)), 2 ** (bits - 1) - 1) if signed else (0, 2**bits - 1)
    scale = g.const(step, f"{hint}.act_scale")
    zero = g.const(128 if signed else 0, f"{hint}.act_zero", U8)  # signed codes ride on 128: exact
    if bits < 8:  # clip to the k-bit range first: round(clip(x)) = clip(round(x)) at these bounds
        x = g.op("Clip", [x, g.const(lo * step, f"{hint}.lo"), g.const(hi * step, f"{hint}.hi")], hint)
    return g.op("QuantizeLinear", [x, scale, zero], hint), scale, zero


def weights(ctx: Ctx, m: nn.Module) -> tuple[np.ndarray, np.ndarray | None, np.ndarray | None]:
    """(weight, per-channel scale or None, bias or None), cut to the kept units. For a quantized layer the
    weight is its integer codes and ``scale`` the step of each output channel."""
    if is_quantized(m):
        codes, scale = integer_weights(m)
        w, s = ctx.keep.take(m, "weight", codes.numpy()), ctx.keep.take_rows(m, to_numpy(scale))
    else:
        w, s = ctx.keep.take(m, "weight", to_numpy(m.weight)), None
    b = ctx.keep.take(m, "bias", to_numpy(m.bias)) if getattr(m, "bias", None) is not None else None
    return w, s, b


# --- Linear ----------------------------------------------------------------------------------------------

def linear(g: Graph, ctx: Ctx, m: nn.Linear, x: str, hint: str, *, smoothed: bool = False) -> str:
    """``smoothed``: x is already divided by the layer's SmoothQuant factor (folded into the op before it)."""
    if dynamic_fusable([m]):
        return dynamic_products(g, ctx, [m], x, [hint], smoothed=smoothed)
    if is_quantized(m) and m.per_token and m.token_symmetric:
        y, b = token_products(g, ctx, [m], x, [hint], smoothed=smoothed)
        y = g.op("Add", [y, g.const(b, f"{hint}.bias")], hint) if b is not None else y
        return back_to_tokens(g, y, x, hint)
    w, s, b = weights(ctx, m)  # w: (out, in)
    bias = g.const(b, f"{hint}.bias") if b is not None else ""
    if not is_quantized(m):
        ctx.layers[hint] = "fp32 MatMul"
        return _add(g, g.op("MatMul", [x, g.const(w.T, f"{hint}.weight")], hint), bias, hint)
    if m.smooth_factor is not None and not smoothed:  # w is already the smoothed weight's codes
        x = _smooth(g, ctx, m, x, hint)
    if m.act_bits is not None and not m.per_token:
        return _integer_to_float(g, ctx, m, x, w, s, bias, hint)
    emit = _per_token if m.act_bits is not None else _float_activations
    return _add(g, emit(g, ctx, m, x, w, s, hint), bias, hint)


def _add(g: Graph, y: str, bias: str, hint: str) -> str:
    return g.op("Add", [y, bias], hint) if bias else y


def _integer_to_float(g: Graph, ctx: Ctx, m: nn.Module, x: str, w: np.ndarray, s: np.ndarray, bias: str,
                      hint: str) -> str:
    xq, a_scale, a_zero = quantize_input(g, x, m, hint)
    ctx.layers[hint] = f"int8 MatMulIntegerToFloat (w{m.weight_bits}a{m.act_bits}, per-channel){_smoothed_note(m)}"
    return g.op("MatMulIntegerToFloat", [xq, g.const(w.T, f"{hint}.weight", I8), a_scale,
                                         g.const(s, f"{hint}.weight_scale"), a_zero, "", bias], hint, domain=MS)


def _per_token(g: Graph, ctx: Ctx, m: nn.Module, x: str, w: np.ndarray, s: np.ndarray, hint: str) -> str:
    y = _per_token_matmul(g, m, x, w, s, hint)
    ctx.layers[hint] = (f"int8 MatMulInteger, per-token dynamic activations (w{m.weight_bits}a{m.act_bits}, "
                        f"per-channel){_smoothed_note(m)}")
    return y


def _float_activations(g: Graph, ctx: Ctx, m: nn.Module, x: str, w: np.ndarray, s: np.ndarray, hint: str) -> str:
    if m.weight_bits <= 4:
        ctx.layers[hint] = f"MatMulNBits (w{m.weight_bits}, float activations){_smoothed_note(m)}"
        return _matmul_nbits(g, w, s, x, hint)
    ctx.layers[hint] = (f"int8 weights, DequantizeLinear + MatMul (w{m.weight_bits}, float activations)"
                        f"{_smoothed_note(m)}")
    wt = g.op("DequantizeLinear", [g.const(w.T, f"{hint}.weight", I8), g.const(s, f"{hint}.weight_scale")],
              hint, axis=1)
    return g.op("MatMul", [x, wt], hint)


def fusable(mods: list[nn.Module]) -> bool:
    """Whether these layers (reading one input) can run as one product: symmetric per-token layers with the
    same activation bits and the same smoothing."""
    if not all(is_quantized(m) and m.per_token and m.token_symmetric for m in mods):
        return False
    return len({m.act_bits for m in mods}) == 1 and _same_smoothing(mods)


def _same_smoothing(mods: list[nn.Module]) -> bool:
    return len({None if m.smooth_factor is None else to_numpy(m.smooth_factor).tobytes() for m in mods}) == 1


def _stacked(ctx: Ctx, mods: list[nn.Module], divide: dict[int, np.ndarray] | None
             ) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """The layers' weight codes stacked along the outputs (N, K), their per-channel scales and their biases
    (None if no layer has one), layer i's scale and bias divided by ``divide[i]``."""
    parts = [weights(ctx, m) for m in mods]
    divide = divide or {}
    codes = np.concatenate([w for w, _, _ in parts])
    scale = np.concatenate([s / divide.get(i, 1.0) for i, (_, s, _) in enumerate(parts)]).astype(F32)
    biases = [b if b is not None else np.zeros(len(w), F32) for w, _, b in parts]
    bias = (np.concatenate([b / divide.get(i, 1.0) for i, b in enumerate(biases)]).astype(F32)
            if any(b is not None for _, _, b in parts) else None)
    return codes, scale, bias


def token_products(g: Graph, ctx: Ctx, mods: list[nn.Module], x: str, hints: list[str], *, smoothed: bool = False,
                   divide: dict[int, np.ndarray] | None = None) -> tuple[str, np.ndarray | None]:
    """Symmetric per-token layers reading x, as one product: (rows, sum of outputs) without bias, and the
    concatenated bias (None if no layer has one). ``divide[i]``: per-output-channel divisors folded into
    layer i's weight scale and bias (the next layer's SmoothQuant factor, where what lies between is linear
    per channel, as attention is in V)."""
    m0, hint = mods[0], hints[0]
    if m0.smooth_factor is not None and not smoothed:
        x = _smooth(g, ctx, m0, x, hint)
    codes, scale, bias = _stacked(ctx, mods, divide)
    q, step = quantize_rows(g, x, codes.shape[1], m0.act_bits, hint)
    for m, name in zip(mods, hints):
        ctx.layers[name] = (
            f"int8 MatMulIntegerToFloat, per-token symmetric activations (w{m.weight_bits}a{m.act_bits}, "
            f"per-channel)" + (_smoothed_note(m) if not smoothed else ", SmoothQuant folded into the op before it")
            + (f", one product with {len(mods) - 1} more" if len(mods) > 1 else ""))
    return row_product(g, q, step, codes, scale, hint), bias


def dynamic_fusable(mods: list[nn.Module]) -> bool:
    """Whether these layers (reading one input) run as one DynamicQuantizeMatMul: inputs on the dynamic
    per-call grid (act_granularity "dynamic"), the same smoothing."""
    return all(is_quantized(m) and m.dynamic_tensor for m in mods) and _same_smoothing(mods)


def dynamic_products(g: Graph, ctx: Ctx, mods: list[nn.Module], x: str, hints: list[str], *, smoothed: bool = False,
                     divide: dict[int, np.ndarray] | None = None) -> str:
    """Layers reading x on the dynamic per-call grid as one com.microsoft DynamicQuantizeMatMul: the kernel
    rounds x on DynamicQuantizeLinear's uint8 grid (what the QAT simulated), multiplies the codes by the
    concatenated int8 weight codes in int32 and scales by the two steps, bias inside: one operator per
    product, no quantization operators around it. ``divide[i]`` as in token_products."""
    m0, hint = mods[0], hints[0]
    if m0.smooth_factor is not None and not smoothed:
        x = _smooth(g, ctx, m0, x, hint)
    codes, scale, bias = _stacked(ctx, mods, divide)
    for m, h in zip(mods, hints):
        ctx.layers[h] = (f"int8 DynamicQuantizeMatMul, per-call dynamic activations (w{m.weight_bits}a8, per-channel)"
                         f"{_smoothed_note(m)}" + (f", one product with {len(mods) - 1} more" if len(mods) > 1 else ""))
    return g.op("DynamicQuantizeMatMul", [x, g.const(codes.T, f"{hint}.weight", I8), g.const(scale, f"{hint}.weight_scale"),
                                          "", g.const(bias, f"{hint}.bias") if bias is not None else ""], hint,
                domain=MS)


def dynamic_attention(g: Graph, ctx: Ctx, mods: list[nn.Module], x: str, hints: list[str], heads: int, *,
                      divide: dict[int, np.ndarray] | None = None) -> str:
    """Q, K and V (dynamic per-call layers reading x, (batch, tokens, hidden)) and the attention over them as
    one com.microsoft QAttention on one DynamicQuantizeLinear of x: the grid the QAT simulated, the product of
    the codes with the stacked int8 weight codes in int32, the two steps and the biases, then softmax(QK^T /
    sqrt(head size)) V, all in one kernel. Out: (batch, tokens, heads x head size). ``divide`` as in
    token_products."""
    m0, hint = mods[0], hints[0]
    if m0.smooth_factor is not None:
        x = _smooth(g, ctx, m0, x, hint)
    codes, scale, bias = _stacked(ctx, mods, divide)
    if bias is None:
        bias = np.zeros(len(codes), F32)
    for m, h in zip(mods, hints):
        ctx.layers[h] = (f"int8 QAttention, per-call dynamic activations (w{m.weight_bits}a8, per-channel)"
                         f"{_smoothed_note(m)}, one product with {len(mods) - 1} more and the attention")
    q, step, zero = g.op("DynamicQuantizeLinear", [x], hint, outputs=3)
    return g.op("QAttention", [q, g.const(codes.T, f"{hint}.weight", I8), g.const(bias, f"{hint}.bias"), step,
                               g.const(scale, f"{hint}.weight_scale"), "", zero,
                               g.const(np.zeros((), np.int8), f"{hint}.weight_zero", I8)],
                f"{hint.rsplit('.', 2)[0]}", domain=MS, num_heads=heads)


def smooth_divisor(ctx: Ctx, m: nn.Module) -> np.ndarray | None:
    """The SmoothQuant factor of m's input channels that are kept (None if m is not smoothed)."""
    if not is_quantized(m) or m.smooth_factor is None:
        return None
    factor = to_numpy(m.smooth_factor)
    idx = ctx.keep.index.get((id(m), "weight", 1))
    return factor if idx is None else factor[idx]


def _smoothed_note(m: nn.Module) -> str:
    return ", SmoothQuant (input / s in-graph)" if m.smooth_factor is not None else ""


def _smooth(g: Graph, ctx: Ctx, m: nn.Module, x: str, hint: str) -> str:
    """x / s, the layer's SmoothQuant factor cut to its kept input columns. A Div, not a Mul by 1 / s: it is
    PyTorch's op, so every value (and every rounding the quantizer makes of it) is the same; layers reading
    one tensor with one factor (Q, K, V) share the node."""
    factor = to_numpy(m.smooth_factor)
    idx = ctx.keep.index.get((id(m), "weight", 1))
    if idx is not None:
        factor = factor[idx]
    key = ("smooth", x, factor.tobytes())
    if key not in g.memo:
        g.memo[key] = g.op("Div", [x, g.const(factor, f"{hint}.smooth_factor")], hint)
    return g.memo[key]


def quantize_tokens(g: Graph, x: str, bits: int, hint: str) -> tuple[str, str, str]:
    """x (float, channels last) -> (uint8 codes, row scale, int32 row zero point), each row on its own
    asymmetric grid: the float ops of the quantized layer's per-token rounding in its order (Round is
    half-to-even in both), so the codes are PyTorch's bit for bit. Not QuantizeLinear: it rounds x / s and
    then adds z, which differs from round(x / s + z) where adding z rounds away the fraction's last bits."""
    key = ("tokens", x, bits)
    if key in g.memo:
        return g.memo[key]
    levels = 2**bits - 1
    axis = g.const([-1], "minus1", I64)
    zero = g.const(0.0, "zero_f")
    lo = g.op("Min", [g.op("ReduceMin", [x, axis], hint, keepdims=1), zero], hint)
    hi = g.op("Max", [g.op("ReduceMax", [x, axis], hint, keepdims=1), zero], hint)
    step = g.op("Div", [g.op("Sub", [hi, lo], hint), g.const(float(levels), f"levels{bits}")], hint)
    step = g.op("Max", [step, g.const(np.finfo(F32).tiny, "tiny")], hint)
    z = g.op("Round", [g.op("Div", [g.op("Neg", [lo], hint), step], hint)], hint)
    v = g.op("Round", [g.op("Add", [g.op("Div", [x, step], hint), z], hint)], hint)
    v = g.op("Clip", [v, zero, g.const(float(levels), f"levels{bits}")], hint)
    g.memo[key] = (g.op("Cast", [v], hint, to=2), step, g.op("Cast", [z], hint, to=6))  # uint8, int32
    return g.memo[key]


def _per_token_matmul(g: Graph, m: nn.Module, x: str, codes: np.ndarray, scale: np.ndarray, hint: str) -> str:
    """x @ (codes * scale).T on integers, x quantized per token. ONNX Runtime's MatMulInteger takes only a
    scalar zero point for A (1.32 rejects per-row ones), so the product runs on the raw codes and each
    row's zero point comes off in int32, exactly: sum_k (q_k - z) c_k = sum_k q_k c_k - z sum_k c_k."""
    q, step, z = quantize_tokens(g, x, m.act_bits, hint)
    acc = g.op("MatMulInteger", [q, g.const(codes.T, f"{hint}.weight", I8)], hint)
    col_sums = g.const(codes.astype(np.int32).sum(1), f"{hint}.weight_col_sums", np.int32)  # (out,)
    acc = g.op("Sub", [acc, g.op("Mul", [z, col_sums], hint)], hint)
    y = g.op("Mul", [g.op("Cast", [acc], hint, to=1), g.const(scale, f"{hint}.weight_scale")], hint)
    return g.op("Mul", [y, step], hint)


def _matmul_nbits(g: Graph, codes: np.ndarray, scale: np.ndarray, x: str, hint: str) -> str:
    """4-bit weights packed two per byte, one block per column (block = K rounded up to a power of 2, at
    least 16), so the block scale is the channel scale; code c is stored as c + 8 (the default zero point)."""
    n, k = codes.shape
    block = max(16, 1 << (k - 1).bit_length())
    u = np.full((n, block), 8, dtype=np.uint8)
    u[:, :k] = (codes.astype(np.int16) + 8).astype(np.uint8)
    packed = (u[:, 0::2] | (u[:, 1::2] << 4)).reshape(n, 1, block // 2)
    return g.op("MatMulNBits", [x, g.const(packed, f"{hint}.weight", U8), g.const(scale, f"{hint}.weight_scale")],
                hint, domain=MS, K=k, N=n, bits=4, block_size=block, accuracy_level=0)


# --- convolutions ----------------------------------------------------------------------------------------

def _pads(m: nn.Module) -> list[int]:
    nd = len(m.kernel_size)
    if not isinstance(m.padding, str):
        return list(m.padding) * 2
    if m.padding == "valid":
        return [0] * (2 * nd)
    total = [d * (k - 1) for d, k in zip(m.dilation, m.kernel_size)]  # "same" (stride 1): torch puts the
    return [t // 2 for t in total] + [t - t // 2 for t in total]  # odd extra pad on the right (SAME_UPPER)


def _conv_attrs(m: nn.Module, groups: int) -> dict[str, Any]:
    if m.padding_mode != "zeros":
        raise ExportError(f"export supports zero-padded convolutions; {type(m).__name__} has padding_mode "
                          f"{m.padding_mode!r}")
    return {"kernel_shape": list(m.kernel_size), "strides": list(m.stride), "dilations": list(m.dilation),
            "pads": _pads(m), "group": groups}


def conv(g: Graph, ctx: Ctx, m: nn.Module, x: str, hint: str) -> str:
    if m.transposed:
        raise ExportError(f"export does not support transposed convolutions ({hint})")
    w, s, b = weights(ctx, m)
    attrs = _conv_attrs(m, w.shape[0] if is_depthwise(m) else m.groups)
    if is_quantized(m) and m.act_bits is not None:
        return _conv_integer(g, ctx, m, x, (w, s, b), attrs, hint)
    if is_quantized(m):
        ctx.layers[hint] = f"int8 weights, DequantizeLinear + Conv (w{m.weight_bits}, float activations)"
        wf = g.op("DequantizeLinear", [g.const(w, f"{hint}.weight", I8), g.const(s, f"{hint}.weight_scale")],
                  hint, axis=0)
    else:
        ctx.layers[hint] = "fp32 Conv"
        wf = g.const(w, f"{hint}.weight")
    inputs = [x, wf] + ([g.const(b, f"{hint}.bias")] if b is not None else [])
    return g.op("Conv", inputs, hint, **attrs)


def _conv_integer(g: Graph, ctx: Ctx, m: nn.Module, x: str, parts: tuple, attrs: dict[str, Any], hint: str) -> str:
    """ConvInteger, then the float scale (DequantizeLinear of the int32 sums) and bias; its parts are kept for the QLinearConv fusion (fuse.py)."""
    w, s, b = parts
    shape = [1, w.shape[0]] + [1] * len(m.kernel_size)  # broadcasts over (B, C, *spatial)
    xq, a_scale, a_zero = quantize_input(g, x, m, hint)
    ctx.layers[hint] = f"int8 ConvInteger (w{m.weight_bits}a{m.act_bits}, per-channel)"
    weight = g.const(w, f"{hint}.weight", I8)
    acc = g.op("ConvInteger", [xq, weight, a_zero], hint, **attrs)
    step = float(np.asarray(act_scale(m)[0]))
    # int32 -> float times the per-channel scale in one node: DequantizeLinear computes float(acc) * scale, the
    # same float product as Cast then Mul (one operator fewer per layer, which small models at batch 1 feel)
    scale = np.asarray(step * s, np.float32).reshape(-1)
    y = g.op("DequantizeLinear", [acc, g.const(scale, f"{hint}.scale")], hint, axis=1)
    if b is not None:
        y = g.op("Add", [y, g.const(b.reshape(shape), f"{hint}.bias")], hint)
    g.root.qconv[y] = {"inputs": [xq, a_scale, a_zero, weight], "attrs": attrs, "step": step, "w_scale": s,
                       "bias": b, "hint": hint, "parts": g.nodes[-(3 if b is not None else 2):], "codes": w,
                       "weight_bits": m.weight_bits}
    return y
