"""Decoder language models (Llama-class: transformers LlamaForCausalLM and kin, e.g. SmolLM2) as one ONNX graph
with its KV cache as inputs and outputs, built op by op the way ONNX Runtime's own model builder lays such a
model out (com.microsoft GroupQueryAttention with rotary embedding inside, SkipSimplifiedLayerNormalization,
MatMulNBits):

    inputs   input_ids (B, S) int64 · attention_mask (B, past + S) int64 (ones; it gives the lengths)
             logits_to_keep (1,) int64: logits of the last k positions only (0: all)
             past_key_values.{i}.key / .value (B, kv_heads, past, head_dim) float32 (past = 0 on the prompt)
    outputs  logits (B, S or k, vocab) float32 · present.{i}.key / .value (B, kv_heads, past + S, head_dim)

The activations are rows (B * S, width) from the embedding to the LM head, turned into (B, S, width) only for
GroupQueryAttention and the logits, so that a float zero point's correction is one Gemm (``_float_zero_nbits``).
Per block: RMSNorm (fused with the residual add), one packed Q/K/V product, GroupQueryAttention (RoPE on
Q and K, causal, grouped heads, the cache concatenated), the output product, RMSNorm, one packed gate/up
product, SiLU(gate) * up, the down product. A Linear quantized by ``techniques.weight_only`` becomes
MatMulNBits with its own codes, group scales and zero points (3-bit codes stored in 4-bit blocks: the same
values, the 4-bit kernel); any other Linear a float MatMul. ``float_graph`` builds the same graph from a
float model: the ONNX Runtime fp32 baseline, and what ONNX Runtime's own MatMulNBits quantizer takes.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from wattless.errors import ExportError
from wattless.export.graph import MS, U8, Graph, to_numpy, value
from wattless.techniques.weight_only import is_weight_only, packed_weights

__all__ = ["DecoderShape", "decoder_shape", "build_decoder", "save_decoder", "DECODER_KIND", "OPSET",
           "cache_names", "kv_bits"]

DECODER_KIND = "decoder-lm"
TOKENS = "tokens_shape"  # g.memo key: (B, S, -1), the shape that turns rows back into tokens
OPSET = 21
FORMAT = 1


@dataclass(frozen=True)
class DecoderShape:
    layers: int
    hidden: int
    heads: int
    kv_heads: int
    head_dim: int
    intermediate: int
    vocab: int
    eps: float
    max_positions: int

    def to_json(self) -> dict[str, Any]:
        return dict(self.__dict__)


def decoder_shape(model: nn.Module) -> DecoderShape:
    c = getattr(model, "config", None)
    body = getattr(model, "model", None)
    if c is None or body is None or not hasattr(body, "layers") or not hasattr(body, "rotary_emb"):
        raise ExportError(f"{type(model).__name__} is not a Llama-class decoder (a transformers *ForCausalLM with "
                          "model.layers and rotary embeddings); decoder export supports those")
    if getattr(body.rotary_emb, "attention_scaling", 1.0) != 1.0:
        raise ExportError("this model's RoPE scales attention (rope_scaling with an attention factor): not supported")
    head_dim = getattr(c, "head_dim", None) or c.hidden_size // c.num_attention_heads
    if head_dim % 8:
        raise ExportError(f"head size {head_dim} is not a multiple of 8, which ONNX Runtime's GroupQueryAttention needs")
    return DecoderShape(c.num_hidden_layers, c.hidden_size, c.num_attention_heads,
                        getattr(c, "num_key_value_heads", None) or c.num_attention_heads, head_dim,
                        c.intermediate_size, c.vocab_size, float(c.rms_norm_eps), int(c.max_position_embeddings))


def cache_names(layers: int, quantized: bool = False) -> tuple[list[str], list[str]]:
    """(past inputs, present outputs): key then value of each layer; a quantized cache has each one's codes
    then its scales (key, key_scale, value, value_scale)."""
    parts = ("key", "key_scale", "value", "value_scale") if quantized else ("key", "value")
    past = [f"past_key_values.{i}.{kv}" for i in range(layers) for kv in parts]
    present = [f"present.{i}.{kv}" for i in range(layers) for kv in parts]
    return past, present


def kv_bits(model: nn.Module) -> int | None:
    """The bits ``techniques.kv_cache`` stores the cache at (one for every block), or None: a float cache."""
    found = {getattr(layer.self_attn, "wattless_kv_bits", None) for layer in model.model.layers}
    if len(found) != 1:
        raise ExportError(f"the attention blocks store their KV cache at different bits {sorted(map(str, found))}: "
                          "quantize every block's cache alike ([kv_cache] applies to all)")
    return found.pop()


# --- weights ---------------------------------------------------------------------------------------------

def _pack4(codes: np.ndarray, block: int) -> np.ndarray:
    """(N, K) codes 0..15 -> (N, ceil(K / block), block / 2) uint8, two codes a byte, the first in the low
    nibble; K padded to whole blocks (the kernel reads only K)."""
    n, k = codes.shape
    u = np.zeros((n, -(-k // block) * block), np.uint8)
    u[:, :k] = codes
    u = u.reshape(n, -1, block)
    return (u[..., 0::2] | (u[..., 1::2] << 4)).astype(np.uint8)


def _pack_zeros(zeros: np.ndarray) -> np.ndarray:
    """(N, blocks) zero points 0..15 -> (N, ceil(blocks / 2)) uint8, packed like the codes."""
    n, b = zeros.shape
    z = np.zeros((n, b + b % 2), np.uint8)
    z[:, :b] = zeros
    return (z[:, 0::2] | (z[:, 1::2] << 4)).astype(np.uint8)


def _blocks(codes: np.ndarray, zeros: np.ndarray, bits: int, block: int) -> tuple[np.ndarray, np.ndarray, int]:
    """MatMulNBits' B (N, blocks, blob) and zero points, and the bits it runs: 2..4-bit codes in 4-bit blocks
    (the same values, the 4-bit kernel), 8-bit codes a byte each. Float zero points stay float."""
    if bits <= 4:
        packed, width = _pack4(codes, block), 4
        zp = zeros.astype(np.float32) if zeros.dtype.kind == "f" else _pack_zeros(zeros)
    elif bits == 8:
        n, k = codes.shape
        padded = np.zeros((n, -(-k // block) * block), np.uint8)
        padded[:, :k] = codes
        packed, width = padded.reshape(n, -1, block), 8
        zp = zeros.astype(np.float32) if zeros.dtype.kind == "f" else zeros.astype(np.uint8)
    else:
        raise ExportError(f"{bits}-bit weights: decoder export packs 2 to 4 bits (4-bit blocks) or 8 bits")
    return packed, zp, width


def _nbits(g: Graph, x: str, parts: list[dict[str, Any]], hint: str) -> str:
    """MatMulNBits over the layers' codes stacked along the outputs (they share x and their grid)."""
    grids = {(p["bits"], p["group_size"], p["zeros"].dtype.kind) for p in parts}
    if len(grids) != 1:
        raise ExportError(f"{hint}: layers packed together have different grids {sorted(grids)}")
    bits, block, _ = grids.pop()
    codes = np.concatenate([p["codes"] for p in parts])
    scales = np.concatenate([p["scales"] for p in parts]).astype(np.float32)
    zeros = np.concatenate([p["zeros"] for p in parts])
    n, k = codes.shape
    if zeros.dtype.kind == "f" and k % block == 0:
        return _float_zero_nbits(g, x, codes, scales, zeros, bits, block, hint)
    packed, zp, width = _blocks(codes, zeros, bits, block)
    zp_dtype = np.float32 if zp.dtype.kind == "f" else U8
    return g.op("MatMulNBits", [x, g.const(packed, f"{hint}.weight", U8), g.const(scales.reshape(-1), f"{hint}.scales"),
                                g.const(zp.reshape(-1), f"{hint}.zero_points", zp_dtype)],
                hint, domain=MS, K=k, N=n, bits=width, block_size=block, accuracy_level=g.root.accuracy_level)


def _float_zero_nbits(g: Graph, x: str, codes: np.ndarray, scales: np.ndarray, zeros: np.ndarray, bits: int,
                      block: int, hint: str) -> str:
    """x @ ((q - z) * s)^T with float zero points z, as x @ ((q - c) * s)^T on MatMulNBits' fast integer path
    (c = 2^(bits-1), the middle code, as an integer zero point) plus the group sums of x times (c - z) * s:
    Gemm(x @ G, (c - z) * s, C = that product), with G the (K, K / block) 0/1 matrix that sums each group
    (one constant per K, shared). x is rows (tokens, K), as everywhere in this graph, so the offset and its
    addition are one Gemm: two operators beside each product where the 3-D form took four (a Reshape, a
    ReduceSum, a MatMul and a Sub; SmolLM2 decode 0.90x -> 1.05x llama.cpp, README). ONNX Runtime's kernels take float
    zero points only on a slow path. Centred codes keep the int8 activations of accuracy_level 4 accurate:
    their rounding error meets |q - c| <= 2^(bits-1), not codes up to 2^bits - 1 (perplexity 19.68 against
    19.42 with c = 0 on SmolLM2)."""
    n, k = codes.shape
    middle = 2 ** (bits - 1)
    packed, zp, width = _blocks(codes, np.full_like(zeros, middle, dtype=np.uint8), bits, block)
    y = g.op("MatMulNBits", [x, g.const(packed, f"{hint}.weight", U8), g.const(scales.reshape(-1), f"{hint}.scales"),
                             g.const(zp.reshape(-1), f"{hint}.zero_points", U8)],
             hint, domain=MS, K=k, N=n, bits=width, block_size=block, accuracy_level=g.root.accuracy_level)
    key = ("group_sums", k, block)
    if key not in g.memo:
        summing = np.zeros((k, k // block), np.float32)
        summing[np.arange(k), np.arange(k) // block] = 1.0
        g.memo[key] = g.const(summing, f"group_sums.{k}.{block}")
    sums = g.op("MatMul", [x, g.memo[key]], hint)  # (tokens, K / block)
    offset = g.const(((middle - zeros) * scales).T.astype(np.float32), f"{hint}.zero_offsets")  # (K / block, N)
    return g.op("Gemm", [sums, offset, y], hint)


def _bias(g: Graph, y: str, layers: list[nn.Linear], hint: str) -> str:
    if all(m.bias is None for m in layers):
        return y
    b = np.concatenate([to_numpy(m.bias) if m.bias is not None else np.zeros(m.out_features, np.float32)
                        for m in layers])
    return g.op("Add", [y, g.const(b, f"{hint}.bias")], hint)


def _linear(g: Graph, x: str, layers: list[nn.Linear], hint: str) -> str:
    """x @ [W_1; W_2; ...]^T (+ biases): one product for layers reading the same input."""
    if all(is_weight_only(m) for m in layers):
        y = _nbits(g, x, [packed_weights(m) for m in layers], hint)
    elif not any(is_weight_only(m) for m in layers):
        w = np.concatenate([to_numpy(m.weight) for m in layers]).T.copy()  # (K, N)
        y = g.op("MatMul", [x, g.const(w, f"{hint}.weight")], hint)
    else:
        return g.op("Concat", [_linear(g, x, [m], f"{hint}.{i}") for i, m in enumerate(layers)], hint, axis=-1)
    return _bias(g, y, layers, hint)


# --- the graph -------------------------------------------------------------------------------------------

def _norm(g: Graph, x: str, residual: str | None, weight: torch.Tensor, eps: float, hint: str) -> tuple[str, str]:
    """(RMSNorm(x + residual) * weight, x + residual); the first block's input has no residual."""
    from onnx import helper

    gamma = g.const(to_numpy(weight), f"{hint}.weight")
    if residual is None:
        return g.op("SimplifiedLayerNormalization", [x, gamma], hint, epsilon=eps, axis=-1), x
    out, total = g.name(f"{hint}.normed"), g.name(f"{hint}.residual")
    g.nodes.append(helper.make_node("SkipSimplifiedLayerNormalization", [x, residual, gamma], [out, "", "", total],
                                    name=g.name(f"{hint}.SkipSimplifiedLayerNormalization"), domain=MS, epsilon=eps))
    return out, total


def _rope_caches(model: nn.Module, shape: DecoderShape) -> tuple[np.ndarray, np.ndarray]:
    """(max_positions, head_dim / 2) cos and sin of position x inverse frequency (the model's own)."""
    inv_freq = model.model.rotary_emb.inv_freq.detach().double().cpu()
    freqs = torch.outer(torch.arange(shape.max_positions, dtype=torch.float64), inv_freq)
    return freqs.cos().float().numpy(), freqs.sin().float().numpy()


def _attention(g: Graph, x: str, block: nn.Module, i: int, shape: DecoderShape, lengths: tuple[str, str],
               rope: tuple[str, str], bits: int | None) -> str:
    from onnx import helper

    a = block.self_attn
    hint = f"layers.{i}.attn"
    qkv = _linear(g, x, [a.q_proj, a.k_proj, a.v_proj], f"layers.{i}.attn.qkv")
    qkv = g.op("Reshape", [qkv, g.memo[TOKENS]], hint)  # rows -> (B, S, width): GroupQueryAttention's layout
    past, present = cache_names(shape.layers, bits is not None)
    if bits is None:
        cache_in, cache_out = [past[2 * i], past[2 * i + 1]], [present[2 * i], present[2 * i + 1]]
    else:
        qkv = _round_new_kv(g, qkv, shape, bits, hint)
        k, ks, v, vs = past[4 * i : 4 * i + 4]
        cache_in = [_dequantize(g, k, ks, hint), _dequantize(g, v, vs, hint)]
        cache_out = [g.name(f"{hint}.present_key"), g.name(f"{hint}.present_value")]
    out = g.name(f"{hint}.gqa")
    g.nodes.append(helper.make_node(
        "GroupQueryAttention", [qkv, "", "", *cache_in, *lengths, *rope],
        [out, *cache_out], name=out, domain=MS, num_heads=shape.heads,
        kv_num_heads=shape.kv_heads, do_rotary=1, rotary_interleaved=0, scale=1.0 / math.sqrt(shape.head_dim)))
    if bits is not None:
        for full, (codes, scales), (new_codes, new_scales) in zip(
                cache_out, (past[4 * i : 4 * i + 2], past[4 * i + 2 : 4 * i + 4]),
                (present[4 * i : 4 * i + 2], present[4 * i + 2 : 4 * i + 4])):
            _store(g, full, codes, scales, new_codes, new_scales, bits, hint)
    out = g.op("Reshape", [out, g.const([-1, shape.heads * shape.head_dim], f"{hint}.rows", np.int64)], hint)
    return _linear(g, out, [a.o_proj], f"layers.{i}.attn.o")


# --- a quantized KV cache: int8 codes (B, kv_heads, T, head_dim) and a float scale per vector (B, kv_heads, T, 1)

def _vector_grid(g: Graph, x: str, bits: int, hint: str) -> tuple[str, str]:
    """(x / scale rounded and clipped, scale) with scale = max|x| / (2^(bits-1) - 1) over the last axis."""
    qmax = 2 ** (bits - 1) - 1
    amax = g.op("ReduceMax", [g.op("Abs", [x], hint), g.const([-1], f"{hint}.lastaxis", np.int64)], hint, keepdims=1)
    scale = g.op("Div", [g.op("Max", [amax, g.const(1e-12, f"{hint}.tiny")], hint), g.const(float(qmax), f"{hint}.qmax")],
                 hint)
    q = g.op("Clip", [g.op("Round", [g.op("Div", [x, scale], hint)], hint), g.const(-float(qmax), f"{hint}.lo"),
                      g.const(float(qmax), f"{hint}.hi")], hint)
    return q, scale


def _round_new_kv(g: Graph, qkv: str, shape: DecoderShape, bits: int, hint: str) -> str:
    """The new tokens' keys and values rounded to the cache's grid before attention, as the PyTorch technique
    does (on k_proj / v_proj outputs, before RoPE turns the keys)."""
    kvw = shape.kv_heads * shape.head_dim
    q, k, v = g.op("Split", [qkv, g.const([shape.heads * shape.head_dim, kvw, kvw], f"{hint}.qkv_split", np.int64)],
                   hint, outputs=3, axis=-1)
    heads = g.const([0, 0, shape.kv_heads, shape.head_dim], f"{hint}.kv_heads", np.int64)
    flat = g.const([0, 0, kvw], f"{hint}.kv_flat", np.int64)
    rounded = []
    for x in (k, v):
        codes, scale = _vector_grid(g, g.op("Reshape", [x, heads], hint), bits, hint)
        rounded.append(g.op("Reshape", [g.op("Mul", [codes, scale], hint), flat], hint))
    return g.op("Concat", [q, *rounded], hint, axis=-1)


def _dequantize(g: Graph, codes: str, scales: str, hint: str) -> str:
    from onnx import TensorProto

    return g.op("Mul", [g.op("Cast", [codes], hint, to=TensorProto.FLOAT), scales], hint)


def _store(g: Graph, full: str, codes: str, scales: str, out_codes: str, out_scales: str, bits: int, hint: str) -> None:
    """present = past's codes and scales, then the new positions of ``full`` (GroupQueryAttention's float
    present, RoPE applied) on the grid: what was stored is never rounded again."""
    from onnx import TensorProto, helper

    start = g.op("Shape", [codes], hint, start=2, end=3)
    new = g.op("Slice", [full, start, g.const([2**62], f"{hint}.end", np.int64), g.const([2], f"{hint}.axis2", np.int64)],
               hint)
    q, scale = _vector_grid(g, new, bits, hint)
    g.nodes.append(helper.make_node("Concat", [codes, g.op("Cast", [q], hint, to=TensorProto.INT8)], [out_codes],
                                    name=out_codes, axis=2))
    g.nodes.append(helper.make_node("Concat", [scales, scale], [out_scales], name=out_scales, axis=2))


def _mlp(g: Graph, x: str, block: nn.Module, i: int, shape: DecoderShape) -> str:
    m = block.mlp
    if getattr(getattr(m, "act_fn", None), "__class__", type).__name__ not in ("SiLU", "SiLUActivation"):
        raise ExportError(f"layer {i}: MLP activation {type(m.act_fn).__name__} is not SiLU: not supported")
    gu = _linear(g, x, [m.gate_proj, m.up_proj], f"layers.{i}.mlp.gate_up")
    gate, up = g.op("Split", [gu], f"layers.{i}.mlp", outputs=2, axis=-1, num_outputs=2)
    act = g.op("Mul", [g.op("Mul", [gate, g.op("Sigmoid", [gate], f"layers.{i}.mlp")], f"layers.{i}.mlp"), up],
               f"layers.{i}.mlp")
    return _linear(g, act, [m.down_proj], f"layers.{i}.mlp.down")


def _lengths(g: Graph) -> tuple[str, str]:
    """seqlens_k (B,) int32 = tokens so far - 1, and the total sequence length (scalar int32)."""
    from onnx import TensorProto

    total = g.op("ReduceSum", ["attention_mask", g.const([1], "axis1", np.int64)], "lengths", keepdims=0)
    seqlens = g.op("Cast", [g.op("Sub", [total, g.const(1, "one", np.int64)], "lengths")], "lengths",
                   to=TensorProto.INT32)
    width = g.op("Gather", [g.op("Shape", ["attention_mask"], "lengths"), g.const(1, "index1", np.int64)], "lengths")
    return seqlens, g.op("Cast", [width], "lengths", to=TensorProto.INT32)


def _last(g: Graph, x: str) -> str:
    """The last ``logits_to_keep`` positions of x (rows, H) as (B, k, H); 0 keeps them all (what generate's
    prefill skips)."""
    start = g.op("Neg", ["logits_to_keep"], "keep")
    x = g.op("Reshape", [x, g.memo[TOKENS]], "keep")
    return g.op("Slice", [x, start, g.const([2**62], "keep.end", np.int64), g.const([1], "keep.axis", np.int64)], "keep")


def _value_infos(shape: DecoderShape, bits: int | None) -> tuple[list[Any], list[Any]]:
    from onnx import TensorProto

    past, present = cache_names(shape.layers, bits is not None)

    def cache(name: str, length: str) -> Any:
        if name.endswith("_scale"):
            return value(name, TensorProto.FLOAT, ["batch", shape.kv_heads, length, 1])
        dtype = TensorProto.FLOAT if bits is None else TensorProto.INT8
        return value(name, dtype, ["batch", shape.kv_heads, length, shape.head_dim])

    inputs = [value("input_ids", TensorProto.INT64, ["batch", "sequence"]),
              value("attention_mask", TensorProto.INT64, ["batch", "total_sequence"]),
              value("logits_to_keep", TensorProto.INT64, [1])]
    inputs += [cache(n, "past_sequence") for n in past]
    outputs = [value("logits", TensorProto.FLOAT, ["batch", "sequence", shape.vocab])]
    outputs += [cache(n, "total_sequence") for n in present]
    return inputs, outputs


def build_decoder(model: nn.Module, *, accuracy_level: int = 4) -> tuple[Any, DecoderShape]:
    """The ONNX graph of a Llama-class decoder (float or weight-only quantized) and its shape.
    ``accuracy_level``: MatMulNBits' compute type (4: int8 activations per block, ONNX Runtime's fastest on
    CPU; 0: float activations, the closest to PyTorch's numbers)."""
    from onnx import helper

    shape = decoder_shape(model)
    bits = kv_bits(model)
    g = Graph()
    g.accuracy_level = accuracy_level
    body = model.model
    cos, sin = _rope_caches(model, shape)
    rope = (g.const(cos, "rope.cos"), g.const(sin, "rope.sin"))
    lengths = _lengths(g)
    g.memo[TOKENS] = g.op("Concat", [g.op("Shape", ["input_ids"], "tokens"), g.const([-1], "tokens.width", np.int64)],
                          "tokens", axis=0)  # (B, S, -1)
    h = g.op("Gather", [g.const(to_numpy(body.embed_tokens.weight), "embed_tokens.weight"), "input_ids"], "embed")
    h = g.op("Reshape", [h, g.const([-1, shape.hidden], "rows", np.int64)], "embed")  # (B * S, H): the rows
    x, residual = _norm(g, h, None, body.layers[0].input_layernorm.weight, shape.eps, "layers.0.input_norm")
    for i, block in enumerate(body.layers):
        attn = _attention(g, x, block, i, shape, lengths, rope, bits)
        x, residual = _norm(g, attn, residual, block.post_attention_layernorm.weight, shape.eps, f"layers.{i}.post_norm")
        mlp = _mlp(g, x, block, i, shape)
        nxt = body.layers[i + 1].input_layernorm.weight if i + 1 < shape.layers else body.norm.weight
        x, residual = _norm(g, mlp, residual, nxt, shape.eps, f"layers.{i + 1}.input_norm" if i + 1 < shape.layers else "norm")
    logits = _linear(g, _last(g, x), [model.lm_head], "lm_head")
    g.nodes.append(helper.make_node("Identity", [logits], ["logits"], name="logits"))
    inputs, outputs = _value_infos(shape, bits)
    return helper.make_graph(g.nodes, "wattless-decoder", inputs, outputs, g.inits), shape


def save_decoder(graph: Any, meta: dict[str, Any], path: Path) -> None:
    """An ONNX model with the wattless metadata (``kind`` = decoder-lm) and its weights inside the file."""
    import onnx
    from onnx import helper

    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET), helper.make_opsetid(MS, 1)],
                              producer_name="wattless")
    model.ir_version = min(model.ir_version, 10)
    for key, val in {"format": FORMAT, "kind": DECODER_KIND, **meta}.items():
        entry = model.metadata_props.add()
        entry.key, entry.value = f"wattless.{key}", json.dumps(val)
    onnx.save(model, str(path))
