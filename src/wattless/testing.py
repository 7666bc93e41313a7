"""Fakes and tiny models for tests, shipped so users can test their own targets and meters too."""

from __future__ import annotations

import time

import torch
from torch import nn

__all__ = ["FakeMeter", "ReplayMeter", "EarlyExitToy", "tiny_llama"]


class FakeMeter:
    """A meter that reports ``power_w`` x elapsed seconds, as a counter on a steady device would."""

    def __init__(self, power_w: float = 50.0, devices: tuple[str, ...] = ("gpu:0",)) -> None:
        self.power_w, self.devices = power_w, list(devices)
        self._start = 0.0

    def begin(self) -> None:
        self._start = time.perf_counter()

    def end(self) -> dict[str, float]:
        return {self.devices[0]: self.power_w * (time.perf_counter() - self._start)}


class ReplayMeter:
    """A meter that replays recorded window energies in order (joules), like Zeus's replaying test monitor."""

    def __init__(self, window_joules: list[float], devices: tuple[str, ...] = ("cpu:0",)) -> None:
        self._queue, self.devices = list(window_joules), list(devices)

    def begin(self) -> None:
        if not self._queue:
            raise RuntimeError("ReplayMeter ran out of recorded windows")

    def end(self) -> dict[str, float]:
        return {self.devices[0]: self._queue.pop(0)}


class EarlyExitToy(nn.Module):
    """Two blocks and an exit after the first: inputs whose first feature is positive stop early.

    Its path depends on the input, so per-input counts differ (for distribution tests).
    """

    def __init__(self, width: int = 32) -> None:
        super().__init__()
        self.block1 = nn.Linear(width, width)
        self.exit1 = nn.Linear(width, 4)
        self.block2 = nn.Sequential(nn.Linear(width, 4 * width), nn.ReLU(), nn.Linear(4 * width, width))
        self.head = nn.Linear(width, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # x: (1, width)
        h = torch.relu(self.block1(x))
        if bool(x[0, 0] > 0):
            return self.exit1(h)
        return self.head(self.block2(h))


def tiny_llama(*, layers: int = 2, hidden: int = 64, vocab: int = 96, heads: int = 4, kv_heads: int = 2,
               intermediate: int = 128, seed: int = 0, tied: bool = True) -> nn.Module:
    """A seeded Llama-class decoder (transformers LlamaForCausalLM: grouped-query attention, RoPE, RMSNorm,
    SwiGLU, tied embeddings by default) small enough for unit tests, in eval mode; SmolLM2's shape in small."""
    import transformers

    config = transformers.LlamaConfig(
        vocab_size=vocab, hidden_size=hidden, intermediate_size=intermediate, num_hidden_layers=layers,
        num_attention_heads=heads, num_key_value_heads=kv_heads, max_position_embeddings=512,
        rope_theta=100000.0, rms_norm_eps=1e-5, tie_word_embeddings=tied, bos_token_id=1, eos_token_id=2,
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = transformers.LlamaForCausalLM(config)
    return model.eval()
