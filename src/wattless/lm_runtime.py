"""Running a decoder export (``kind`` = decoder-lm): prompt in, tokens out, with the KV cache the graph
takes and returns (``wattless.runtime.load`` opens one of these for such a file).

    lm = wattless.runtime.load("smollm2-int4.onnx", threads=2)
    lm.generate("What is the capital of France?", max_new_tokens=32)   # chat template applied, text out
    lm.generate_ids(ids, max_new_tokens=32, temperature=0.0)          # token ids in and out
    lm.logits(ids)                                                    # (B, T, vocab) of a whole window

The prompt runs as one prefill (all its tokens, an empty cache), then one token per step with the cache
the previous step returned (float, or int8 codes and scales when the recipe quantized it). ``temperature`` 0 is greedy (argmax, the first of ties, as torch); above 0
samples from softmax(logits / temperature) with a seeded generator. Generation stops at the tokenizer's
end-of-sequence token or after ``max_new_tokens``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from wattless.errors import ExportError, ModelInputError

__all__ = ["DecoderLM", "Generation"]


@dataclass(frozen=True)
class Generation:
    text: str
    tokens: list[int]  # the new tokens (the end-of-sequence token included when it stopped there)
    prompt_tokens: int
    stopped: str  # "eos" or "length"


class DecoderLM:
    """A decoder export on an ONNX Runtime session, with its tokenizer."""

    def __init__(self, path: str | Path, meta: dict[str, Any], proto_bytes: bytes, *, threads: int | None = None,
                 spin: bool = True) -> None:
        import onnxruntime as ort

        self.path, self.meta, self.kind = Path(path), meta, meta["kind"]
        shape = meta["decoder"]
        self.layers, self.kv_heads, self.head_dim = shape["layers"], shape["kv_heads"], shape["head_dim"]
        self.max_positions, self.vocab = shape["max_positions"], shape["vocab"]
        options = ort.SessionOptions()
        options.log_severity_level = 3
        if threads:
            options.intra_op_num_threads = threads
        if not spin:
            options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        try:
            self.session = ort.InferenceSession(proto_bytes, options, providers=["CPUExecutionProvider"])
        except Exception as exc:
            raise ExportError(f"ONNX Runtime cannot load {self.path}: {exc}") from None
        past = [i for i in self.session.get_inputs() if i.name.startswith("past_key_values.")]
        self._past = [i.name for i in past]
        # a float cache, or int8 codes with a float scale per vector (B, kv_heads, T, 1): [kv_cache] exported
        self._empty = [(np.int8 if i.type == "tensor(int8)" else np.float32, i.shape[3]) for i in past]
        self._present = [o.name for o in self.session.get_outputs() if o.name.startswith("present.")]
        self._float_cache = all(dtype == np.float32 for dtype, _ in self._empty)
        self._tokenizer = None

    @property
    def parity(self) -> dict[str, Any] | None:
        return self.meta.get("parity")

    @property
    def tokenizer(self) -> Any:
        if self._tokenizer is None:
            if self.meta.get("tokenizer") != "smollm2":
                raise ExportError(f"{self.path} names no tokenizer; use generate_ids() with token ids")
            from wattless.models import smollm2_tokenizer

            self._tokenizer = smollm2_tokenizer()
        return self._tokenizer

    # -- one forward ---------------------------------------------------------------------------------------
    def empty_cache(self, batch: int = 1) -> list[np.ndarray]:
        return [np.zeros((batch, self.kv_heads, 0, last), dtype) for dtype, last in self._empty]

    def step(self, ids: np.ndarray, cache: list[np.ndarray], last_only: bool = True) -> tuple[np.ndarray, list[np.ndarray]]:
        """(logits (B, S or 1, V), the new cache) of ids (B, S) after ``cache`` (B, kv, past, D) per entry."""
        past = cache[0].shape[2]
        feed = {"input_ids": ids, "attention_mask": np.ones((ids.shape[0], past + ids.shape[1]), np.int64),
                "logits_to_keep": np.array([1 if last_only else 0], np.int64), **dict(zip(self._past, cache))}
        out = self.session.run(None, feed)
        return out[0], out[1:]

    def logits(self, ids: Any) -> np.ndarray:
        """(B, T, V) float32 logits of every position of token windows ``ids`` (B, T), an empty cache."""
        ids = _token_array(ids, self.vocab)
        return self.step(ids, self.empty_cache(ids.shape[0]), last_only=False)[0]

    # -- generation ----------------------------------------------------------------------------------------
    def generate_ids(self, ids: Sequence[int], *, max_new_tokens: int = 64, temperature: float = 0.0,
                     seed: int = 0, eos: int | None = None) -> tuple[list[int], str]:
        """(new tokens, "eos" or "length") after the prompt ``ids`` (one sequence)."""
        prompt = _token_array([list(ids)], self.vocab)
        _check_settings(max_new_tokens, temperature, prompt.shape[1], self.max_positions)
        rng = np.random.default_rng(seed)
        steps = self._shared_steps(prompt.shape[1] + max_new_tokens) if self._float_cache else None
        if steps is None:
            cache = self.empty_cache()

            def run(ids: np.ndarray) -> np.ndarray:
                nonlocal cache
                logits, cache = self.step(ids, cache)
                return logits
        else:
            run = steps
        logits = run(prompt)
        tokens: list[int] = []
        while True:
            token = _choose(logits[0, -1], temperature, rng)
            tokens.append(token)
            if eos is not None and token == eos:
                return tokens, "eos"
            if len(tokens) == max_new_tokens:
                return tokens, "length"
            logits = run(np.array([[token]], np.int64))

    def _shared_steps(self, max_length: int) -> Any:
        """A step function over one float cache buffer (1, kv_heads, max_length, head_dim) per entry, bound as
        both past and present: GroupQueryAttention then writes the new positions in place (it shares the buffer
        when the two pointers are equal) instead of copying the whole cache into a new present every step."""
        import onnxruntime as ort

        io = self.session.io_binding()
        buffers = [ort.OrtValue.ortvalue_from_numpy(np.zeros((1, self.kv_heads, max_length, last), np.float32))
                   for _, last in self._empty]
        io.bind_output("logits")  # get_outputs() lists the outputs in the order they were bound
        for past, present, buf in zip(self._past, self._present, buffers):
            io.bind_ortvalue_input(past, buf)
            io.bind_ortvalue_output(present, buf)
        keep, length = np.array([1], np.int64), 0

        def run(ids: np.ndarray) -> np.ndarray:
            nonlocal length
            length += ids.shape[1]
            feeds = {"input_ids": np.ascontiguousarray(ids, np.int64), "logits_to_keep": keep,
                     "attention_mask": np.ones((1, length), np.int64)}
            values = {name: ort.OrtValue.ortvalue_from_numpy(array) for name, array in feeds.items()}
            for name, value in values.items():  # OrtValues over the arrays, both held until the run is done
                io.bind_ortvalue_input(name, value)
            self.session.run_with_iobinding(io)
            return io.get_outputs()[0].numpy()

        run.buffers = buffers  # kept alive with the function
        return run

    def prompt_ids(self, prompt: str | list[dict[str, str]], chat: bool = True) -> list[int]:
        """The prompt's token ids: a string or a list of chat messages, through the chat template if ``chat``."""
        if isinstance(prompt, str) and not prompt:
            raise ModelInputError("the prompt is empty: give some text")
        if not chat:
            if not isinstance(prompt, str):
                raise ModelInputError("chat=False takes the prompt as one string")
            return list(self.tokenizer(prompt, add_special_tokens=False)["input_ids"])
        messages = [{"role": "user", "content": prompt}] if isinstance(prompt, str) else prompt
        if not isinstance(messages, list) or not all(isinstance(m, dict) and "content" in m for m in messages):
            raise ModelInputError("the prompt is a string or a list of {'role': ..., 'content': ...} messages")
        ids = self.tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=True)
        return list(ids["input_ids"] if hasattr(ids, "keys") else ids)

    def generate(self, prompt: str | list[dict[str, str]], *, max_new_tokens: int = 64, temperature: float = 0.0,
                 seed: int = 0, chat: bool = True) -> Generation:
        """The model's answer to ``prompt`` (the chat template applied unless ``chat=False``), decoded."""
        ids = self.prompt_ids(prompt, chat)
        tokens, stopped = self.generate_ids(ids, max_new_tokens=max_new_tokens, temperature=temperature, seed=seed,
                                            eos=self.tokenizer.eos_token_id)
        return Generation(self.tokenizer.decode(tokens, skip_special_tokens=True), tokens, len(ids), stopped)


def _choose(logits: np.ndarray, temperature: float, rng: np.random.Generator) -> int:
    if temperature == 0:
        return int(np.argmax(logits))
    z = logits.astype(np.float64) / temperature
    p = np.exp(z - z.max())
    return int(rng.choice(len(p), p=p / p.sum()))


def _check_settings(max_new_tokens: Any, temperature: Any, prompt_len: int, max_positions: int) -> None:
    if isinstance(max_new_tokens, bool) or not isinstance(max_new_tokens, int) or max_new_tokens < 1:
        raise ModelInputError(f"max_new_tokens must be a whole number >= 1, got {max_new_tokens!r}")
    if isinstance(temperature, bool) or not isinstance(temperature, (int, float)) or not math.isfinite(temperature) \
            or temperature < 0:
        raise ModelInputError(f"temperature must be a finite number >= 0 (0: greedy), got {temperature!r}")
    if prompt_len + max_new_tokens > max_positions:
        raise ModelInputError(f"{prompt_len} prompt tokens + max_new_tokens {max_new_tokens} exceed the model's "
                              f"{max_positions} positions: shorten the prompt or ask for fewer tokens")


def _token_array(ids: Any, vocab: int) -> np.ndarray:
    try:
        x = np.asarray(ids.numpy() if hasattr(ids, "numpy") else ids)
    except ValueError:
        raise ModelInputError("token ids must form a rectangular (batch, tokens) array") from None
    if x.ndim != 2 or x.shape[1] == 0 or x.dtype.kind not in "iu":
        raise ModelInputError(f"token ids must be a non-empty (batch, tokens) integer array, got shape {x.shape} "
                              f"of {x.dtype}")
    if x.min() < 0 or x.max() >= vocab:
        raise ModelInputError(f"token ids must lie in 0..{vocab - 1}, got {x.min()}..{x.max()}")
    return x.astype(np.int64)
