"""Writing a decoder export and its parity check: logits and perplexity of held-out windows, and greedy
tokens through the KV cache, each against the PyTorch model the file was built from.

    report = export_decoder(model, "smollm2-int4.onnx", windows=workload.test.inputs, tokenizer="smollm2")

The file is written beside ``out`` and moved into place only when the check passes (perplexity within
``ppl_rtol`` of PyTorch's, top-1 tokens agreeing on at least ``min_agree`` of the positions); greedy tokens are
compared and the first position where they part is recorded with both tokens' logits (a near tie, which
rounding in the int8 activations of ``accuracy_level`` 4 can flip), not required to match.
"""

from __future__ import annotations

import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from wattless.energy.decode import is_decoder_lm
from wattless.errors import ParityError
from wattless.export.decoder import build_decoder, kv_bits, save_decoder
from wattless.techniques.weight_only import is_weight_only

__all__ = ["DecoderExport", "export_decoder", "torch_greedy", "is_decoder"]


@dataclass(frozen=True)
class DecoderExport:
    path: Path
    size_bytes: int
    parity: dict[str, Any] | None
    layers: dict[str, str] = field(default_factory=dict)
    kind: str = "decoder-lm"
    notes: list[str] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        return {"path": str(self.path), "kind": self.kind, "size_bytes": self.size_bytes, "parity": self.parity,
                "layers": self.layers, "notes": self.notes}


def is_decoder(model: nn.Module) -> bool:
    return is_decoder_lm(model)


def torch_greedy(model: nn.Module, ids: list[int], n: int) -> tuple[list[int], list[np.ndarray]]:
    """n greedy tokens after ``ids`` with transformers' own cache, and each step's logits."""
    from transformers import DynamicCache

    import inspect

    cache_arg = "cache" if "cache" in inspect.signature(model.forward).parameters else "past_key_values"
    cache, x, tokens, steps = DynamicCache(), torch.tensor([ids]), [], []
    with torch.no_grad():
        for _ in range(n):
            logits = model(x, **{cache_arg: cache}, use_cache=True).logits[0, -1].float()
            steps.append(logits.numpy())
            tokens.append(int(logits.argmax()))
            x = torch.tensor([[tokens[-1]]])
    return tokens, steps


def _layers(model: nn.Module) -> dict[str, str]:
    return {n: (f"MatMulNBits (int{m.bits}, group {m.group_size}, {m.zero_point} zero points)" if is_weight_only(m)
                else "MatMul (fp32)") for n, m in model.named_modules() if isinstance(m, nn.Linear)}


def pricing(model: nn.Module) -> dict[str, Any]:
    """What the energy core prices the exported file at: each weight-only Linear's precision and group bits,
    and the KV cache's precision (recorded in the metadata; the bench prices the float model with it)."""
    weights = {n: {"precision": m.wattless_weight_precision, "group_bits": m.wattless_weight_group_bits}
               for n, m in model.named_modules() if is_weight_only(m)}
    kv = {getattr(m, "wattless_kv_precision", None) for m in model.modules() if hasattr(m, "k_proj")}
    return {"weights": weights, "kv_precision": kv.pop() if len(kv) == 1 and None not in kv else "fp32"}


def _perplexities(model: nn.Module, lm: Any, windows: torch.Tensor) -> dict[str, Any]:
    """PyTorch's and ONNX's perplexity on the windows, and their top-1 agreement (one pass of each)."""
    from wattless.workloads.smollm2 import decoder_metrics

    with torch.no_grad():
        torch_logits = [model(b).logits.float() for b in windows.split(4)]
    ref = torch.cat([t[:, :-1].argmax(-1) for t in torch_logits])
    rows = iter(torch_logits)
    torch_metrics = decoder_metrics(lambda b: next(rows), windows)
    onnx_metrics = decoder_metrics(lambda b: torch.from_numpy(lm.logits(b.numpy())), windows, ref)
    return {"perplexity_torch": torch_metrics["perplexity"], "perplexity_onnx": onnx_metrics["perplexity"],
            "top1_agreement": onnx_metrics["next_token_agreement"], "windows": int(windows.shape[0]),
            "tokens": int(windows.numel())}


def _max_logit_diff(model: nn.Module, lm: Any, ids: torch.Tensor) -> float:
    with torch.no_grad():
        ref = model(ids).logits.float().numpy()
    return float(np.abs(lm.logits(ids.numpy()) - ref).max() / max(np.abs(ref).max(), 1e-12))


def _greedy(model: nn.Module, lm: Any, prompts: list[list[int]], n: int) -> list[dict[str, Any]]:
    results = []
    for ids in prompts:
        want, steps = torch_greedy(model, ids, n)
        got, _ = lm.generate_ids(ids, max_new_tokens=n)
        first = next((i for i, (a, b) in enumerate(zip(want, got)) if a != b), None)
        row: dict[str, Any] = {"prompt_tokens": len(ids), "tokens": n, "equal": first is None}
        if first is not None:
            logit = steps[first]
            row.update(first_difference=first, torch_token=want[first], onnx_token=got[first],
                       why=(f"near tie: PyTorch's logits {logit[want[first]]:.4f} for its token and "
                            f"{logit[got[first]]:.4f} for ONNX's"))
        results.append(row)
    return results


def check_decoder(model: nn.Module, path: Path, windows: torch.Tensor, prompts: list[list[int]], *, greedy_tokens: int,
                  ppl_rtol: float, min_agree: float) -> dict[str, Any]:
    from wattless.runtime import load

    lm = load(path)
    parity = {**_perplexities(model, lm, windows), "max_relative_logit_diff": _max_logit_diff(model, lm, windows[:1]),
              "greedy": _greedy(model, lm, prompts, greedy_tokens), "ppl_rtol": ppl_rtol, "min_agree": min_agree}
    rel = abs(parity["perplexity_onnx"] / parity["perplexity_torch"] - 1)
    parity["passed"] = rel <= ppl_rtol and parity["top1_agreement"] >= min_agree
    return parity


def _describe(p: dict[str, Any]) -> str:
    return (f"perplexity {p['perplexity_onnx']:.4f} (ONNX) vs {p['perplexity_torch']:.4f} (PyTorch), top-1 agreement "
            f"{p['top1_agreement']:.4f} (needs {p['min_agree']}); perplexity may differ by {p['ppl_rtol']:.1%}")


def export_decoder(model: nn.Module, out: str | Path, *, windows: torch.Tensor, prompts: list[list[int]] | None = None,
                   tokenizer: str | None = None, workload: str = "", accuracy_level: int = 4, check: bool = True,
                   greedy_tokens: int = 16, ppl_rtol: float = 0.01, min_agree: float | None = None) -> DecoderExport:
    """Export a Llama-class decoder (float or weight-only quantized) with its KV cache; ``windows`` (N, T) are the
    held-out token windows of the parity check, ``prompts`` its greedy prompts (default: the windows' first 32
    tokens). Nothing is left at ``out`` when the check fails (ParityError). ``min_agree`` defaults to 0.97 with
    float activations (accuracy_level 0) and 0.95 with int8 ones (4), which flip near-tie top-1 tokens: on
    SmolLM2 they agree at 0.961 (perplexity +0.5 %), llama.cpp's own int8 activations at 0.965."""
    if min_agree is None:
        min_agree = 0.97 if accuracy_level == 0 else 0.95
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    graph, shape = build_decoder(model, accuracy_level=accuracy_level)
    bits = kv_bits(model)
    meta = {"decoder": shape.to_json(), "tokenizer": tokenizer, "workload": workload, "accuracy_level": accuracy_level,
            "kv_cache": {"dtype": "float32"} if bits is None else
            {"dtype": "int8", "bits": bits, "scales": "float32 per vector (token x KV head), max|x| / (2^(bits-1) - 1)"},
            "layers": _layers(model), "pricing": pricing(model)}
    fd, name = tempfile.mkstemp(prefix=f".{out.name}.", suffix=".tmp", dir=out.parent)
    os.close(fd)
    tmp = Path(name)
    try:
        save_decoder(graph, meta, tmp)
        parity = None
        if check:
            prompts = prompts or [row[:32].tolist() for row in windows[:2]]
            parity = check_decoder(model, tmp, windows, prompts, greedy_tokens=greedy_tokens, ppl_rtol=ppl_rtol,
                                   min_agree=min_agree)
            if not parity["passed"]:
                raise ParityError(f"decoder export parity check failed: {_describe(parity)}; nothing was written to {out}")
            save_decoder(graph, {**meta, "parity": parity}, tmp)
        os.replace(tmp, out)
    finally:
        tmp.unlink(missing_ok=True)
    notes = []
    if any(getattr(m, "wattless_kv_bits", None) for m in model.modules()):
        notes.append("the model quantizes its KV cache; this export keeps the cache in fp32 (the parity check "
                     "compares it with the quantized-cache PyTorch model)")
    return DecoderExport(path=out, size_bytes=out.stat().st_size, parity=parity, layers=meta["layers"], notes=notes)
