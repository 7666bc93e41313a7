"""A benchmark's settings, checked: what runs, on which batch sizes, timed how."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from wattless.baselines import ALIASES
from wattless.bench.runtimes import AS_WRITTEN, RUNTIMES
from wattless.errors import BenchError

__all__ = ["Plan", "check_args"]


@dataclass(frozen=True)
class Plan:
    """A benchmark's settings, checked: what runs, on which batch sizes, timed how."""

    runtimes: list[str]
    batches: list[int]
    threads: int
    warmup: int
    repeats: int
    seq_len: int
    encoder: bool
    max_seconds: float
    rounds: int
    isolate: bool
    measure: bool
    timeout_s: float


def check_args(runtimes: Sequence[str], batches: Sequence[int], threads: int, warmup: int, repeats: int,
               seq_len: int, rounds: int) -> list[str]:
    """The runtimes by their bench names (a baseline's name is accepted for its row); bad settings refused."""
    runtimes = [ALIASES.get(r, r) if ALIASES.get(r) in RUNTIMES else r for r in runtimes]
    unknown = [r for r in runtimes if r not in (*RUNTIMES, AS_WRITTEN)]
    if unknown or not runtimes:
        raise BenchError(f"unknown runtime(s) {unknown}: choose among {', '.join((*RUNTIMES, AS_WRITTEN))}")
    if not batches or any(int(b) < 1 for b in batches):
        raise BenchError(f"batch sizes must be positive integers, got {list(batches)}")
    if threads < 1 or warmup < 0 or repeats < 1 or seq_len < 2 or rounds < 1:
        raise BenchError("threads, repeats and rounds must be >= 1, warmup >= 0 and seq_len >= 2")
    return runtimes
