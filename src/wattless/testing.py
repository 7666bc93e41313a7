"""Fakes and tiny models for tests, shipped so users can test their own targets and meters too."""

from __future__ import annotations

import time

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["FakeMeter", "ReplayMeter", "EarlyExitToy", "SECNN", "tiny_llama"]


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


class _SqueezeExcite(nn.Module):
    def __init__(self, channels: int) -> None:
        super().__init__()
        self.fc1, self.fc2 = nn.Linear(channels, channels // 2), nn.Linear(channels // 2, channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, C, L)
        w = torch.sigmoid(self.fc2(F.silu(self.fc1(x.mean(-1)))))
        return x * w.unsqueeze(-1)


class _ResidualBlock(nn.Module):
    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv, self.bn = nn.Conv1d(channels, channels, 3, padding=1), nn.BatchNorm1d(channels)
        self.se = _SqueezeExcite(channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.se(F.silu(self.bn(self.conv(x))))


class SECNN(nn.Module):
    """A residual 1-D CNN with squeeze-and-excitation on (B, L) signals, written as users write models (a custom
    forward, ``unsqueeze``, SiLU, BatchNorm1d, skips): a stem, ``depth`` SE blocks in a ModuleList, a head."""

    def __init__(self, classes: int = 10, channels: int = 32, depth: int = 2) -> None:
        super().__init__()
        self.stem, self.bn = nn.Conv1d(1, channels, 5, padding=2), nn.BatchNorm1d(channels)
        self.blocks = nn.ModuleList([_ResidualBlock(channels) for _ in range(depth)])
        self.head = nn.Linear(channels, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = F.silu(self.bn(self.stem(x.unsqueeze(1))))
        for block in self.blocks:
            h = block(h)
        return self.head(h.mean(-1))


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
