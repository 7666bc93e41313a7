"""KV-cache quantization of a decoder: every key and value vector written to the cache (one per token and
KV head, ``head_dim`` numbers) stored at ``bits`` (8: int8) with its own scale, max|x| / (2^(bits-1) - 1).

    [kv_cache]
    bits = 8

The keys and values each attention block computes (its k_proj and v_proj outputs, before RoPE turns the
keys) are rounded to that grid in the forward, so every later token reads what a quantized cache holds;
perplexity and next-token agreement measure its cost. The energy core prices the cache's writes and reads at
``wattless_kv_precision`` (set on each attention block): the bytes a decode token reads from the cache fall
by 4x from fp32. The ONNX export keeps a float cache (its GroupQueryAttention takes float past/present here),
and says so.
"""

from __future__ import annotations

from typing import Any

import torch
from pydantic import Field
from torch import nn

from wattless.energy.count import uncounted
from wattless.techniques.base import ApplyContext, Technique, TechniqueConfig, register

__all__ = ["KVCacheConfig", "KVQuantization", "quantize_vectors"]


class KVCacheConfig(TechniqueConfig):
    kind = "kv_cache"
    bits: int = Field(8, ge=2, le=8, strict=True)


def quantize_vectors(x: torch.Tensor, head_dim: int, bits: int) -> torch.Tensor:
    """x (..., heads * head_dim) with each head_dim vector rounded to its own symmetric k-bit grid."""
    qmax = 2 ** (bits - 1) - 1
    v = x.unflatten(-1, (-1, head_dim))
    scale = v.abs().amax(-1, keepdim=True).clamp(min=1e-12) / qmax
    return (torch.clamp(torch.round(v / scale), -qmax, qmax) * scale).flatten(-2)


def _attention_blocks(model: nn.Module) -> list[nn.Module]:
    blocks = [m for m in model.modules() if hasattr(m, "k_proj") and hasattr(m, "v_proj")]
    if not blocks:
        raise ValueError("the model has no attention blocks with k_proj and v_proj (a transformers decoder): "
                         "KV-cache quantization applies to decoders")
    return blocks


class KVQuantization(Technique):
    name = "kv_cache"

    def __init__(self, config: KVCacheConfig, handles: list[Any], blocks: int) -> None:
        self.config, self.handles, self.blocks = config, handles, blocks

    def report(self, model: nn.Module) -> dict[str, Any]:
        return {"bits": self.config.bits, "attention_blocks": self.blocks, "kv_precision": f"int{self.config.bits}"}


def _hook(head_dim: int, bits: int):
    def quantize(_m: nn.Module, _args: tuple, out: torch.Tensor) -> torch.Tensor:
        with uncounted():  # what the cache stores; its bytes are priced at wattless_kv_precision
            return quantize_vectors(out, head_dim, bits)
    return quantize


@register(KVCacheConfig)
def _prepare(model: nn.Module, config: KVCacheConfig, context: ApplyContext) -> KVQuantization:
    blocks = _attention_blocks(model)
    handles = []
    for block in blocks:
        head_dim = getattr(block, "head_dim", None) or block.k_proj.out_features // block.config.num_key_value_heads
        block.wattless_kv_precision = f"int{config.bits}"
        block.wattless_kv_bits = config.bits
        for proj in (block.k_proj, block.v_proj):
            handles.append(proj.register_forward_hook(_hook(head_dim, config.bits)))
    return KVQuantization(config, handles, len(blocks))


@register(KVCacheConfig, step="convert")
def _convert(model: nn.Module, config: KVCacheConfig | None) -> None:
    """The deployed form keeps the hooks: the cache's values are what they are at run time."""
