"""Decoder language models: count and price a request as a prefill and a loop of decode steps.

A request is a prompt of P tokens (the *prefill*, one forward over all of them, which fills the KV
cache) and N decode steps: step i feeds one token per sequence with P + i tokens already cached, so it
attends over P + i + 1 keys. That is what ``generate(max_new_tokens=N + 1)`` runs after the prefill
(the prefill's last logits give the first new token). A batch of B sequences runs each step once for all
of them: weights are read once per step, activations and the KV cache per sequence.

The trace uses the model's own KV cache (transformers' ``DynamicCache``), so the counted work is what
``generate()`` does; only the cache's bookkeeping is replaced by a count of the bytes a real cache
writes (the new keys and values) and reads (all cached keys and values, by the attention).

Decode steps differ only in the attention over the cache, whose work is linear in the cache length L,
so a step's counts are affine in L. By default two steps are traced (L = P and L = P + N - 1) and the
other N - 2 are interpolated exactly; ``exact=True`` traces every step (tests check the two agree).
Each step is then priced on its own (latency is a roofline max, spill a threshold: neither is linear)
and the prices are averaged.
"""

from __future__ import annotations

import inspect
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from wattless.energy.count import Counts, OpCount, UnitCount, count_each, kv_cache_update, uncounted
from wattless.energy.estimate import Estimate, estimate
from wattless.energy.target import Target, builtin_targets, resolve_target
from wattless.errors import InputError, SpecError

__all__ = ["is_decoder_lm", "DecodeCounts", "DecodeProfile", "count_decode", "profile_decode", "part_of", "PARTS"]

PARTS = ("embeddings", "attention", "mlp", "norms", "lm_head", "other")


def part_of(name: str, type_name: str) -> str:
    """Which part of a decoder a unit belongs to, from its module path and type."""
    n, t = name.lower(), type_name.lower()
    if "lm_head" in n or n.endswith(("head", "unembed")):
        return "lm_head"
    if "embed" in n or t == "embedding" or n.endswith(("wte", "wpe")):
        return "embeddings"
    if "norm" in n or "norm" in t or ".ln_" in n:
        return "norms"
    if "attn" in n or "attention" in n or "rotary" in n:
        return "attention"
    if "mlp" in n or "ffn" in n or "feed_forward" in n or "expert" in n:
        return "mlp"
    return "other"


# --- combining per-step counts ------------------------------------------------------------------------

def _combine(samples: list[dict[str, UnitCount]], weights: list[float]) -> dict[str, UnitCount]:
    """sum_i weights[i] * samples[i], unit by unit and op by op (counts are additive)."""
    out: dict[str, UnitCount] = {}
    for sample, w in zip(samples, weights):
        for name, unit in sample.items():
            acc = out.get(name)
            if acc is None:
                acc = out[name] = UnitCount(name=unit.name, type=unit.type, params=unit.params, calls=unit.calls)
            for op in unit.ops:
                scaled = OpCount(weight_pattern=op.weight_pattern, weight_precision=op.weight_precision,
                                 act_precision=op.act_precision)
                for key, value in vars(op).items():
                    if isinstance(value, float):
                        setattr(scaled, key, value * w)
                match = next((o for o in acc.ops if o.merge_key() == op.merge_key()), None)
                if match is None:
                    acc.ops.append(scaled)
                else:
                    match.add(scaled)
    return out


def _total(sample: dict[str, UnitCount], attr: str) -> float:
    return sum(getattr(o, attr) for u in sample.values() for o in u.ops)


# --- tracing -----------------------------------------------------------------------------------------

def is_decoder_lm(model: nn.Module) -> bool:
    """A transformers-style causal LM with blocks and rotary embeddings (Llama, Qwen2, SmolLM2...)."""
    body = getattr(model, "model", None)
    return hasattr(model, "lm_head") and hasattr(body, "layers") and hasattr(body, "rotary_emb")


def _cache_class() -> type:
    try:
        from transformers import DynamicCache
    except ImportError:
        raise SpecError("decode profiling needs transformers: pip install 'wattless[hf]'") from None

    class CountedCache(DynamicCache):
        """transformers' DynamicCache whose concatenations are bookkeeping: a real cache writes only the
        new entries, which is what it reports to the counter."""

        def update(self, key_states, value_states, layer_idx, *args, **kwargs):
            with uncounted():
                keys, values = super().update(key_states, value_states, layer_idx, *args, **kwargs)
            kv_cache_update((key_states, value_states), (keys, values))
            return keys, values

    return CountedCache


def _token_ids(model: nn.Module, inputs: Any, prompt_tokens: int | None, batch: int) -> torch.Tensor:
    """(batch, P) token ids from the example inputs (their first row, repeated to P tokens), on the
    model's device. The values do not change a count."""
    ids = inputs.get("input_ids") if isinstance(inputs, Mapping) else inputs
    if isinstance(ids, (tuple, list)) and ids:
        ids = ids[0]
    if not isinstance(ids, torch.Tensor) or ids.is_floating_point() or ids.dim() != 2:
        raise InputError("--decode needs token ids as example inputs: a (batch, tokens) integer tensor or "
                         "a dict with `input_ids`")
    row = ids[:1]
    p = prompt_tokens or row.shape[1]
    if p < 1:
        raise InputError(f"--prompt-tokens must be at least 1, got {p}")
    row = row.repeat(1, -(-p // row.shape[1]))[:, :p]
    device = next((t.device for t in model.parameters()), torch.device("cpu"))
    return row.expand(batch, p).contiguous().to(device)


def _forward_kwargs(model: nn.Module) -> tuple[str, bool]:
    """The model's name for the cache argument, and whether it can skip the logits of all but the last
    prompt token (as generate() does)."""
    params = inspect.signature(model.forward).parameters
    cache_arg = "cache" if "cache" in params else "past_key_values"
    return cache_arg, "logits_to_keep" in params


def _pad_cache(cache: Any, n: int) -> None:
    """Append n positions of zeros to every layer of the cache (outside any count): the cache of a later
    step, whose entries' values do not change a count."""
    if n <= 0:
        return
    for i, layer in enumerate(cache.layers):
        k, v = layer.keys, layer.values
        cache.update(k.new_zeros(*k.shape[:-2], n, k.shape[-1]), v.new_zeros(*v.shape[:-2], n, v.shape[-1]), i)


def _kv_precision(cache: Any) -> str:
    from wattless.energy.precision import dtype_precision

    layer = cache.layers[0] if getattr(cache, "layers", None) else None
    return dtype_precision(layer.keys.dtype).name if layer is not None else "fp32"


@dataclass
class DecodeCounts:
    """Counted work of one batched request: the prefill and each decode step (whole batch per step)."""

    prompt_tokens: int
    new_tokens: int
    batch: int
    prefill: Counts  # one sample: the prefill of all B sequences
    steps: Counts  # one sample per decode step, step i with P + i tokens cached
    traced_cache_lengths: tuple[int, ...]  # steps traced; the rest are interpolated
    kv_precision: str = "fp32"

    @property
    def interpolated(self) -> bool:
        return len(self.traced_cache_lengths) < self.new_tokens

    @property
    def dense_assumed(self) -> bool:
        return self.prefill.dense_assumed

    def per_token(self) -> dict[str, UnitCount]:
        """Mean counts of one generated token (one sequence, one step), over the N steps."""
        return _combine(self.steps.samples, [1.0 / (self.new_tokens * self.batch)] * self.new_tokens)

    def per_request(self) -> dict[str, UnitCount]:
        """Counts of one sequence's whole request: its share of the prefill and its N tokens."""
        return _combine([self.prefill.samples[0], self.per_token()], [1.0 / self.batch, float(self.new_tokens)])


def count_decode(
    model: nn.Module,
    inputs: Any,
    *,
    prompt_tokens: int | None = None,
    new_tokens: int = 128,
    batch: int = 1,
    exact: bool = False,
) -> DecodeCounts:
    """Count a prefill of ``prompt_tokens`` (default: the example's length) and ``new_tokens`` decode
    steps for ``batch`` sequences at once, with the model's KV cache. ``exact`` traces every step."""
    if new_tokens < 1 or batch < 1:
        raise InputError(f"--new-tokens and --batch must be at least 1, got {new_tokens} and {batch}")
    ids = _token_ids(model, inputs, prompt_tokens, batch)
    p = ids.shape[1]
    cache_arg, skip_logits = _forward_kwargs(model)
    cache = _cache_class()(config=getattr(model, "config", None))
    first = {"input_ids": ids, cache_arg: cache, "use_cache": True, **({"logits_to_keep": 1} if skip_logits else {})}
    weights: dict = {}  # weight statistics, computed once for all the traces
    prefill = count_each(model, [first], weight_cache=weights)
    step_input = {"input_ids": ids[:, -1:], cache_arg: cache, "use_cache": True}
    lengths = list(range(p, p + new_tokens)) if exact else sorted({p, p + new_tokens - 1})
    traced: list[dict[str, UnitCount]] = []
    for length in lengths:
        _pad_cache(cache, length - cache.get_seq_length())
        traced.append(count_each(model, [step_input], weight_cache=weights).samples[0])
    if exact or len(lengths) == 1:
        samples = traced
    else:  # affine in the cache length: c(L) = c(L0) + (L - L0) / (L1 - L0) * (c(L1) - c(L0))
        span = lengths[1] - lengths[0]
        samples = [_combine(traced, [1 - i / span, i / span]) for i in range(new_tokens)]
    steps = Counts(samples=samples, params=prefill.params, unit_order=prefill.unit_order,
                   dense_assumed=prefill.dense_assumed)
    return DecodeCounts(p, new_tokens, batch, prefill, steps, tuple(lengths), _kv_precision(cache))


# --- pricing -----------------------------------------------------------------------------------------

def _bytes(sample: dict[str, UnitCount], scale: float) -> dict[str, float]:
    return {
        "weights": scale * (_total(sample, "weight_bytes") + _total(sample, "bias_bytes")),
        "kv_read": scale * _total(sample, "kv_read_bytes"),
        "kv_write": scale * _total(sample, "kv_write_bytes"),
        "activations": scale * (_total(sample, "act_read_bytes") + _total(sample, "act_write_bytes")),
    }


def _parts(sample: dict[str, UnitCount], est: dict[str, Estimate], scale: float) -> dict[str, dict]:
    out = {p: {"macs": 0.0, "energy_j": {t: 0.0 for t in est}} for p in PARTS}
    for name, unit in sample.items():
        out[part_of(name, unit.type)]["macs"] += unit.macs * scale
    for t, e in est.items():
        for u in e.units:
            out[part_of(u.name, u.type)]["energy_j"][t] += u.energy_j * scale
    return {p: v for p, v in out.items() if v["macs"] or any(v["energy_j"].values())}


@dataclass
class DecodeProfile:
    """Estimated joules and seconds of a decoder's prefill, its decode tokens and a whole request."""

    counts: DecodeCounts
    prefill: dict[str, Estimate]  # the prefill of the whole batch
    decode: dict[str, Estimate]  # mean over the N steps of one step of the whole batch
    notes: list[str] = field(default_factory=list)

    def energy_per_token_j(self, target: str) -> float:
        return self.decode[target].energy_j / self.counts.batch

    def latency_per_token_s(self, target: str) -> float:
        """Time between two tokens of one sequence: one step (all B sequences advance together)."""
        return self.decode[target].latency_s

    def per_request(self, target: str) -> tuple[float, float]:
        """(joules, seconds) of one sequence's request: its share of the prefill plus N tokens; the time
        is the prefill's (time to first token) plus N steps."""
        c = self.counts
        energy = self.prefill[target].energy_j / c.batch + c.new_tokens * self.energy_per_token_j(target)
        return energy, self.prefill[target].latency_s + c.new_tokens * self.latency_per_token_s(target)

    def _split(self, target: str) -> dict[str, float]:
        c, b = self.counts, self.counts.batch
        pre, dec = self.prefill[target], self.decode[target]
        parts = {k: (getattr(pre, k) + c.new_tokens * getattr(dec, k)) / b for k in ("compute_j", "memory_j", "static_j")}
        energy, latency = self.per_request(target)
        return {"kind": "estimated", "target": target, "energy_j": energy, "energy_j_mean": energy,
                "energy_j_p50": energy, "energy_j_p95": energy, "latency_s": latency, **parts}

    def layers(self) -> list[dict[str, Any]]:
        """Per-unit records of one request (prefill share + N tokens), priced per target."""
        c = self.counts
        merged = Counts([c.per_request()], c.prefill.params, c.prefill.unit_order, c.dense_assumed)
        records = merged.mean_records()
        for rec in records:
            rec["part"] = part_of(rec["name"], rec["type"])
            rec["energy_j"], rec["latency_s"] = {}, {}
        by_name = {r["name"]: r for r in records}
        for t in self.decode:
            shares = ((self.prefill[t], 1 / c.batch, 1.0), (self.decode[t], c.new_tokens / c.batch, c.new_tokens))
            for est, scale, lat_scale in shares:  # energy: the sequence's share; time: the steps it waits for
                for u in est.units:
                    rec = by_name[u.name]
                    rec["energy_j"][t] = rec["energy_j"].get(t, 0.0) + u.energy_j * scale
                    rec["latency_s"][t] = rec["latency_s"].get(t, 0.0) + u.latency_s * lat_scale
        return records

    def to_json(self) -> dict[str, Any]:
        c = self.counts
        b, n = c.batch, c.new_tokens
        per_token = c.per_token()
        pre_sample = c.prefill.samples[0]
        request = c.per_request()
        req = {t: self.per_request(t) for t in self.decode}
        macs_req = _total(request, "macs")
        return {
            "macs": int(round(macs_req)),
            "effective_macs": _total(request, "macs_nz_both"),
            "params": c.prefill.params,
            "inputs": b,
            "macs_per_input": {"mean": macs_req, "p50": macs_req, "p95": macs_req},
            "energy_kind": "estimated",
            "energy_j": {t: r[0] for t, r in req.items()},
            "latency_s": {t: r[1] for t, r in req.items()},
            "energy": {t: self._split(t) for t in self.decode},
            "measured": None,
            "measured_note": "decode profiles are estimated only",
            "layers": self.layers(),
            "decode_config": {
                "prompt_tokens": c.prompt_tokens, "new_tokens": n, "batch": b, "kv_precision": c.kv_precision,
                "traced_cache_lengths": list(c.traced_cache_lengths), "interpolated": c.interpolated,
                "dense_assumed": c.dense_assumed,
            },
            "prefill": {
                "tokens": c.prompt_tokens,
                "macs": _total(pre_sample, "macs") / b,
                "bytes": _bytes(pre_sample, 1 / b),
                "energy_j": {t: e.energy_j / b for t, e in self.prefill.items()},
                "latency_s": {t: e.latency_s for t, e in self.prefill.items()},
                "parts": _parts(pre_sample, self.prefill, 1 / b),
            },
            "decode": {
                "macs": _total(per_token, "macs"),
                "bytes": _bytes(per_token, 1.0),
                "energy_j": {t: self.energy_per_token_j(t) for t in self.decode},
                "latency_s": {t: self.latency_per_token_s(t) for t in self.decode},
                "tokens_per_s": {t: b / e.latency_s if e.latency_s else None for t, e in self.decode.items()},
                "parts": _parts(per_token, self.decode, 1 / b),
            },
            "per_request": {
                "tokens": n,
                "macs": macs_req,
                "energy_j": {t: r[0] for t, r in req.items()},
                "latency_s": {t: r[1] for t, r in req.items()},
            },
            "notes": self.notes,
        }


def _notes(counts: DecodeCounts) -> list[str]:
    notes = []
    if counts.dense_assumed:
        notes.append("counted from shapes (meta tensors, no weights): every weight and activation is assumed dense")
    if counts.interpolated:
        notes.append(f"decode steps traced at cache lengths {list(counts.traced_cache_lengths)}; the others "
                     "interpolated exactly (a step's counts are affine in the cache length)")
    return notes


def profile_decode(
    model: nn.Module,
    inputs: Any,
    targets: Iterable[str | Target] | None = None,
    *,
    prompt_tokens: int | None = None,
    new_tokens: int = 128,
    batch: int = 1,
    exact: bool = False,
) -> DecodeProfile:
    """Count a decoder's request (prefill + ``new_tokens`` decode steps, ``batch`` sequences) and price
    it on each target (all built-ins by default)."""
    resolved = [resolve_target(t) for t in (targets or builtin_targets().values())]
    counts = count_decode(model, inputs, prompt_tokens=prompt_tokens, new_tokens=new_tokens, batch=batch, exact=exact)
    prefill = {t.name: estimate(counts.prefill, t) for t in resolved}
    decode = {t.name: estimate(counts.steps, t) for t in resolved}
    return DecodeProfile(counts, prefill, decode, _notes(counts))

