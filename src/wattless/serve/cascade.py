"""A calibrated cascade, ready to answer: every input runs on tier 0; one whose confidence (the maximum
softmax probability, as the early exits use) is below the tier's threshold goes on to the next tier. Its
estimated energy is the sum over the tiers it ran on, each priced on its own target for the path the input
took there (`wattless.serve.pricing`).

    cascade = load_cascade("cascade.toml")
    cascade.predict(x)        # x (batch, *input shape) -> [Prediction], one per input
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from wattless.errors import CascadeError, ModelInputError
from wattless.serve.config import CascadeSpec, TierSpec, load_cascade_spec
from wattless.serve.pricing import PathPrices
from wattless.serve.record import prices_of, read_calibration, thresholds_of

__all__ = ["Tier", "Prediction", "Embedded", "Cascade", "load_cascade", "confidences", "open_tier"]


@dataclass(frozen=True)
class Tier:
    spec: TierSpec
    model: Any  # wattless.runtime.ExportedModel
    threshold: float  # answers when confidence >= threshold; inf: never (the last tier: -inf, always)
    prices: PathPrices


@dataclass(frozen=True)
class Prediction:
    """One input's answer: its class, the confidence of the tier that answered, and the estimated joules
    of every tier it ran on (tier 0 always)."""

    label: int
    confidence: float
    tier: int
    tier_name: str
    energy_by_tier_j: tuple[float, ...]
    targets: tuple[str, ...]

    @property
    def escalated(self) -> bool:
        return self.tier > 0

    @property
    def energy_j(self) -> float:
        return float(sum(self.energy_by_tier_j))

    def to_json(self) -> dict[str, Any]:
        return {"class": self.label, "confidence": self.confidence, "tier": self.tier, "tier_name": self.tier_name,
                "escalated": self.escalated, "energy_j": self.energy_j, "energy_kind": "estimated",
                "energy_targets": list(self.targets),
                "energy_by_tier": [{"tier": i, "target": t, "energy_j": e, "kind": "estimated"}
                                   for i, (t, e) in enumerate(zip(self.targets, self.energy_by_tier_j))]}


@dataclass(frozen=True)
class Embedded:
    """One sentence's embedding, its token count and its estimated joules on the tier's target."""

    embedding: list[float]
    tokens: int
    energy_j: float


def confidences(logits: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(B, classes) logits -> (B,) maximum softmax probability and (B,) class."""
    z = logits - logits.max(-1, keepdims=True)
    p = np.exp(z)
    p /= p.sum(-1, keepdims=True)
    return p.max(-1), logits.argmax(-1)


def _kind_name(dtype: np.dtype) -> str:
    return {"b": "booleans", "U": "strings", "S": "strings", "O": "mixed values (objects or null)"}.get(
        dtype.kind, str(dtype))


def open_tier(tier: TierSpec) -> Any:
    from wattless import runtime

    return runtime.load(tier.model, threads=tier.threads)


class Cascade:
    """The tiers in order, their thresholds and price tables; stateless between calls."""

    def __init__(self, spec: CascadeSpec, tiers: list[Tier], path: Path | None = None) -> None:
        self.spec, self.tiers, self.path = spec, tiers, path
        first = tiers[0].model
        self.kind: str = first.kind
        self.input_shape: tuple[int, ...] = tuple(first.meta["input"].get("shape", ()))

    @property
    def name(self) -> str:
        return self.spec.name

    def check(self, inputs: Any) -> np.ndarray:
        """A (batch, *input shape) float32 array, or ModelInputError naming what is wrong."""
        if self.kind != "classifier":
            raise ModelInputError(f"this cascade serves a {self.kind}; POST /v1/embeddings instead")
        try:
            x = np.asarray(inputs)
        except (ValueError, TypeError):
            raise ModelInputError(f"inputs must be equal-length nested lists of numbers, shape "
                                  f"(batch, {', '.join(map(str, self.input_shape))}); got ragged lists") from None
        if x.ndim >= 1 and len(x) == 0:
            raise ModelInputError("empty batch: send at least one input")
        if x.dtype.kind not in "iuf":
            raise ModelInputError(f"inputs must be numbers; got {_kind_name(x.dtype)}")
        want = f"(batch, {', '.join(map(str, self.input_shape))})"
        if x.ndim == 0 or x.shape[1:] != self.input_shape:
            raise ModelInputError(f"wrong shape {tuple(x.shape)}: inputs must have shape {want}")
        if not np.isfinite(x).all():
            raise ModelInputError(f"inputs hold {int(np.isnan(x).sum())} NaN and {int(np.isinf(x).sum())} infinite "
                                  "values; send finite numbers")
        return np.ascontiguousarray(x, dtype=np.float32)

    def check_sentences(self, sentences: list[str]) -> np.ndarray:
        """Sentences as a (n,) object array (what the batcher joins), or ModelInputError."""
        if self.kind != "sentence-encoder":
            raise ModelInputError(f"this cascade serves a {self.kind}; POST /v1/predict instead")
        empty = [i for i, s in enumerate(sentences) if not s.strip()]
        if empty:
            raise ModelInputError(f"input {empty[0]} is an empty sentence: every input needs some text")
        out = np.empty(len(sentences), dtype=object)
        out[:] = sentences
        return out

    def embed(self, sentences: np.ndarray) -> list[Embedded]:
        """Unit-norm embeddings of tier 0 (the only tier of an encoder cascade), each sentence priced by its
        token count."""
        from wattless.runtime import MAX_SENTENCE_TOKENS

        tier = self.tiers[0]
        batch = [str(s) for s in sentences]
        vectors = tier.model.embed(batch)
        ids = tier.model.tokenizer(batch, truncation=True, max_length=MAX_SENTENCE_TOKENS, padding=False,
                                   return_token_type_ids=False, return_attention_mask=False)["input_ids"]
        return [Embedded(v.tolist(), len(t), tier.prices.price_tokens(len(t))) for v, t in zip(vectors, ids)]

    def predict(self, x: np.ndarray) -> list[Prediction]:
        """x: (batch, *input shape) float32, checked (``check``). Each tier runs on the rows still going."""
        n, last = len(x), len(self.tiers) - 1
        label, conf = np.zeros(n, np.int64), np.zeros(n)
        answered = np.full(n, last)
        energy = np.zeros((len(self.tiers), n))
        rows = np.arange(n)
        for t, tier in enumerate(self.tiers):
            result = tier.model.run(x[rows])
            c, k = confidences(result.outputs)
            energy[t, rows] = [tier.prices.price(p) for p in result.paths]
            label[rows], conf[rows] = k, c
            going = c < tier.threshold
            answered[rows[~going]] = t
            rows = rows[going]
            if t == last or not len(rows):
                break
        targets = tuple(t.spec.target for t in self.tiers)
        return [Prediction(int(label[i]), float(conf[i]), int(answered[i]), self.tiers[answered[i]].spec.name,
                           tuple(float(e) for e in energy[: answered[i] + 1, i]), targets[: answered[i] + 1])
                for i in range(n)]


def load_cascade(path: str | Path) -> Cascade:
    """The cascade file with its calibration, every tier's export open (ONNX Runtime)."""
    path = Path(path)
    spec = load_cascade_spec(path)
    record = read_calibration(path, spec)
    thresholds = [*thresholds_of(record), -math.inf]
    tiers = [Tier(t, open_tier(t), th, p) for t, th, p in zip(spec.tiers, thresholds, prices_of(record, path))]
    kinds = {t.model.kind for t in tiers}
    if len(kinds) > 1:
        raise CascadeError(f"cascade {path} mixes {sorted(kinds)} tiers; every tier must be of one kind")
    if kinds == {"sentence-encoder"} and len(tiers) > 1:
        raise CascadeError(f"cascade {path}: a sentence-encoder cascade has one tier (an embedding has no "
                           "confidence to escalate on)")
    return Cascade(spec, tiers, path)
