"""BERT sentence encoders (e.g. the ``minilm`` workload): ``input_ids`` of one length per batch, no padding
and no mask, out the mean-pooled, L2-normalised sentence embedding. Attention runs ONNX Runtime's fused
``MultiHeadAttention``; the word table is int8 rows (``GatherBlockQuantized``); pruned heads and FFN
neurons are cut out."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
from torch import nn

from wattless.errors import ExportError
from wattless.export.cut import Keep
from wattless.export.graph import F32, I64, MS, U8, Ctx, Graph, route_outputs, to_numpy, value
from wattless.export.moe import emit_moe
from wattless.export.qlayers import dynamic_attention, dynamic_fusable, fusable, linear, smooth_divisor, token_products
from wattless.export.tokens import ROWS, back_to_tokens, use_rows
from wattless.export.table import gelu
from wattless.techniques.moe import MoEMLP

__all__ = ["is_bert", "build_bert"]


def is_bert(model: nn.Module) -> bool:
    enc = getattr(model, "encoder", None)
    return hasattr(model, "embeddings") and hasattr(getattr(enc, "layer", None), "__len__") and hasattr(model, "config")


def _bert_check(model: nn.Module) -> None:
    cfg = model.config
    act = getattr(cfg, "hidden_act", "gelu")
    if getattr(cfg, "position_embedding_type", "absolute") != "absolute" or act not in ("gelu", "gelu_new"):
        raise ExportError(f"export supports BERT encoders with absolute positions and GELU; this one has "
                          f"position_embedding_type={getattr(cfg, 'position_embedding_type', None)!r}, "
                          f"hidden_act={act!r}")
    if getattr(cfg, "is_decoder", False):
        raise ExportError("export supports BERT encoders, not decoders")


def _alive(alive: np.ndarray) -> np.ndarray:
    if not alive.any():
        alive[0] = True  # an empty tensor helps no runtime; keep one unit
    return np.flatnonzero(alive)


def _kept_heads(out_dense: nn.Module, heads: int) -> np.ndarray:
    """Heads whose columns of the output projection are not all zero (pruned heads are zeroed whole)."""
    size = out_dense.weight.shape[1] // heads
    cols = out_dense.weight.detach().reshape(out_dense.weight.shape[0], heads, size)
    return _alive((cols != 0).any(0).any(-1).cpu().numpy())  # (heads,)


def _kept_neurons(fc2: nn.Module) -> np.ndarray:
    return _alive((fc2.weight.detach() != 0).any(0).cpu().numpy())


def _attention(g: Graph, ctx: Ctx, layer: nn.Module, x: str, p: str, heads: int) -> str:
    att, out = layer.attention.self, layer.attention.output
    size = att.query.weight.shape[0] // heads
    kept = _kept_heads(out.dense, heads)
    for proj in (att.query, att.key, att.value):
        ctx.keep.keep_units(proj, "weight", 0, kept, size)
        ctx.keep.keep_units(proj, "bias", 0, kept, size)
    ctx.keep.keep_units(out.dense, "weight", 1, kept, size)
    if len(kept) < heads:
        ctx.keep.removed[f"{p}.attention"] = {"kept": int(len(kept)), "total": heads}
    heads_kept = {"num_heads": int(len(kept)), "scale": 1.0 / math.sqrt(size)}
    if fusable([att.query, att.key, att.value]) or dynamic_fusable([att.query, att.key, att.value]):
        return _fused_attention(g, ctx, layer, x, p, heads_kept, int(len(kept)) * size)
    q, k, v = (linear(g, ctx, proj, x, f"{p}.attention.self.{n}")
               for proj, n in ((att.query, "query"), (att.key, "key"), (att.value, "value")))
    a = g.op("MultiHeadAttention", [q, k, v], f"{p}.attention", domain=MS, **heads_kept)
    return linear(g, ctx, out.dense, a, f"{p}.attention.output.dense")


def _fused_attention(g: Graph, ctx: Ctx, layer: nn.Module, x: str, p: str, heads: dict[str, Any], width: int) -> str:
    """Q, K and V as one product on one quantization of x; their biases added inside MultiHeadAttention
    (per-token layers) or inside QAttention (per-call dynamic layers, whose product and attention are one
    kernel). The output projection's SmoothQuant factor is folded into V's weight scale and bias (attention
    is linear in V, per channel), so its input needs no Div."""
    att, out = layer.attention.self, layer.attention.output
    mods = [att.query, att.key, att.value]
    divisor = smooth_divisor(ctx, out.dense) if fusable([out.dense]) or dynamic_fusable([out.dense]) else None
    names = [f"{p}.attention.self.{n}" for n in ("query", "key", "value")]
    divide = {2: divisor} if divisor is not None else None
    if dynamic_fusable(mods):  # one DynamicQuantizeLinear and one QAttention: product and attention in one kernel
        a = dynamic_attention(g, ctx, mods, x, names, heads["num_heads"], divide=divide)
        return linear(g, ctx, out.dense, a, f"{p}.attention.output.dense", smoothed=divisor is not None)
    y, bias = token_products(g, ctx, mods, x, names, divide=divide)
    y = back_to_tokens(g, y, x, f"{p}.attention.self", always=True)
    q, k, v = g.op("Split", [y], f"{p}.attention.self", outputs=3, axis=-1, num_outputs=3)
    inputs = [q, k, v] + ([g.const(bias, f"{p}.attention.self.bias")] if bias is not None else [])
    a = g.op("MultiHeadAttention", inputs, f"{p}.attention", domain=MS, **heads)  # (batch, tokens, kept)
    if ROWS in g.memo:
        a = g.op("Reshape", [a, g.const([-1, width], f"{p}.rows", I64)], f"{p}.attention")
    return linear(g, ctx, out.dense, a, f"{p}.attention.output.dense", smoothed=divisor is not None)


def _rows_layout(model: nn.Module) -> bool:
    """Activations as rows when every product is a symmetric per-token one and no MoE block needs tokens."""
    linears = [m for m in model.encoder.modules() if isinstance(m, nn.Linear)]
    moe = any(isinstance(m, MoEMLP) for m in model.modules())
    return bool(linears) and not moe and all(fusable([m]) for m in linears)


def _ffn(g: Graph, ctx: Ctx, layer: nn.Module, x: str, p: str) -> str:
    if isinstance(layer.intermediate, MoEMLP):
        return emit_moe(g, ctx, layer.intermediate, x, f"{p}.intermediate", rank=3)
    fc1, fc2 = layer.intermediate.dense, layer.output.dense
    neurons = _kept_neurons(fc2)
    ctx.keep.keep_units(fc1, "weight", 0, neurons)
    ctx.keep.keep_units(fc1, "bias", 0, neurons)
    ctx.keep.keep_units(fc2, "weight", 1, neurons)
    if len(neurons) < fc2.weight.shape[1]:
        ctx.keep.removed[f"{p}.intermediate"] = {"kept": int(len(neurons)), "total": int(fc2.weight.shape[1])}
    h = gelu(g, linear(g, ctx, fc1, x, f"{p}.intermediate.dense"), f"{p}.intermediate")
    return linear(g, ctx, fc2, h, f"{p}.output.dense")


def _bert_layer(g: Graph, ctx: Ctx, layer: nn.Module, x: str, i: int, eps: float, heads: int) -> str:
    p = f"encoder.layer.{i}"
    o = _attention(g, ctx, layer, x, p, heads)
    x1 = _skip_norm(g, o, x, layer.attention.output.LayerNorm, f"{p}.attention.output.LayerNorm", eps)
    y = _ffn(g, ctx, layer, x1, p)
    return _skip_norm(g, y, x1, layer.output.LayerNorm, f"{p}.output.LayerNorm", eps)


def _skip_norm(g: Graph, y: str, skip: str, norm: nn.LayerNorm, hint: str, eps: float) -> str:
    """LayerNorm(y + skip). Add + LayerNormalization, not com.microsoft SkipLayerNormalization: in onnxruntime
    1.32 on CPU the fused kernel takes about 6 times as long (155 against 26 us on 64 x 384)."""
    return g.op("LayerNormalization", [g.op("Add", [y, skip], hint), g.const(to_numpy(norm.weight), f"{hint}.weight"),
                                       g.const(to_numpy(norm.bias), f"{hint}.bias")], hint, axis=-1,
                epsilon=float(norm.eps if norm.eps is not None else eps))


def _word_embeddings(g: Graph, ctx: Ctx, table: np.ndarray, ids: str) -> str:
    """The word table (most of a small encoder's file) as int8 codes, one scale per 32 values of a row,
    read by GatherBlockQuantized: only the gathered rows are dequantized. The QAT never saw this rounding
    (at most half a step, a 254th of the largest of 32 values); the parity check covers it."""
    name = "embeddings.word_embeddings"
    vocab, dim = table.shape
    block = next((b for b in (32, 16) if dim % b == 0), None)
    if block is None:
        ctx.layers[name] = "fp32 Gather"
        return g.op("Gather", [g.const(table, name), ids], "embeddings", axis=0)
    blocks = table.reshape(vocab, dim // block, block)
    scale = np.maximum(np.abs(blocks).max(-1) / 127, np.finfo(np.float32).tiny).astype(F32)  # (vocab, dim/block)
    codes = np.clip(np.round(blocks / scale[..., None]), -127, 127).reshape(vocab, dim) + 128
    ctx.layers[name] = f"int8 rows, a scale per {block} values (GatherBlockQuantized)"
    return g.op("GatherBlockQuantized", [g.const(codes, name, U8), ids, g.const(scale, f"{name}.scale"),
                                         g.const(np.full(scale.shape, 128), f"{name}.zero", U8)],
                "embeddings", domain=MS, gather_axis=0, quantize_axis=1, block_size=block, bits=8)


def _embeddings(g: Graph, ctx: Ctx, emb: nn.Module, ids: str) -> str:
    length = g.op("Gather", [g.op("Shape", [ids], "embeddings"), g.const(1, "one", I64)], "embeddings")
    positions = g.op("Range", [g.const(0, "zero", I64), length, g.const(1, "one", I64)], "embeddings")
    words = _word_embeddings(g, ctx, to_numpy(emb.word_embeddings.weight), ids)
    pos = g.op("Gather", [g.const(to_numpy(emb.position_embeddings.weight), "embeddings.position_embeddings"),
                          positions], "embeddings", axis=0)
    token_type = to_numpy(emb.token_type_embeddings.weight)[0]  # token_type_ids are all 0 (one sentence)
    e = g.op("Add", [g.op("Add", [words, pos], "embeddings"), g.const(token_type, "embeddings.token_type")],
             "embeddings")
    return g.op("LayerNormalization", [e, g.const(to_numpy(emb.LayerNorm.weight), "embeddings.LayerNorm.weight"),
                                       g.const(to_numpy(emb.LayerNorm.bias), "embeddings.LayerNorm.bias")],
                "embeddings", axis=-1, epsilon=float(emb.LayerNorm.eps))


def build_bert(model: nn.Module, workload: str) -> tuple[Any, Ctx, dict[str, Any]]:
    """(ONNX graph, what each layer became, the file's metadata) of a BERT sentence encoder."""
    from onnx import TensorProto, helper

    _bert_check(model)
    cfg = model.config
    ctx, g, ids = Ctx(Keep()), Graph(), "input_ids"
    x = _embeddings(g, ctx, model.embeddings, ids)
    if _rows_layout(model):  # (batch x tokens, hidden) from here to the pooling
        use_rows(g, ids)
        x = g.op("Reshape", [x, g.const([-1, cfg.hidden_size], "rows_hidden", I64)], "rows")
    for i, layer in enumerate(model.encoder.layer):
        x = _bert_layer(g, ctx, layer, x, i, cfg.layer_norm_eps, cfg.num_attention_heads)
    if ROWS in g.memo:
        x = g.op("Reshape", [x, g.memo[ROWS][0]], "pool")
    pooled = g.op("ReduceMean", [x, g.const([1], "axis1", I64)], "pool", keepdims=0)  # no padding: a plain mean
    g.nodes.append(helper.make_node("LpNormalization", [pooled], ["embedding"], name="embedding", axis=-1, p=2))
    outputs = [value("embedding", TensorProto.FLOAT, ["batch", cfg.hidden_size])]
    routes = route_outputs(g, ctx, outputs)
    graph = helper.make_graph(g.nodes, f"wattless-{workload}", [value(ids, TensorProto.INT64, ["batch", "tokens"])],
                              outputs, g.inits)
    meta = {"kind": "sentence-encoder", "input": {"name": ids, "dtype": "int64", "vocab_size": int(cfg.vocab_size),
                                                  "max_tokens": int(cfg.max_position_embeddings)},
            "embedding_dim": int(cfg.hidden_size), "tokenizer": workload if workload == "minilm" else None,
            "outputs": {"output": "embedding", "exit": None, "routes": routes}, "exits": []}
    return graph, ctx, meta
