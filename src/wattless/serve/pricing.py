"""Each tier's joules per request, by the path a request takes through it.

The energy core counts the tier's model (its `wattless optimize` run, in PyTorch) on held-out inputs, each
on its hard path, and prices the counts on the tier's target (`wattless.energy`). The export reports, per
input, the path it took (exit, experts; `wattless.runtime`); a path's price is the mean estimated joules of
the held-out inputs that took it. Inputs on one path can still differ a little (zero activations that a
target skips); the table says on how many inputs each price rests. A path never seen in calibration is
charged the costliest path that was (an upper bound, never a guess below).

A sentence encoder's work grows with the sentence's length, so its prices are by token count ("tokens:12"),
and a length not seen in calibration is priced by linear interpolation between the nearest priced lengths
(beyond them: the line through the two nearest)."""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass
from typing import Any

import numpy as np

from wattless.runtime import PathTaken

__all__ = ["path_key", "tokens_key", "PathPrices", "price_paths", "price_sentences"]


def path_key(path: PathTaken) -> str:
    """A stable name for a path: "full", "exit:relu2", "final|moe.fc1:0,3" ..."""
    parts = ["full" if path.exit_name is None else f"exit:{path.exit_name}" if path.exit_name != "final" else "final"]
    parts += [f"{block}:{','.join(map(str, experts))}" for block, experts in sorted(path.experts.items())]
    return "|".join(parts)


def tokens_key(tokens: int) -> str:
    return f"tokens:{tokens}"


@dataclass(frozen=True)
class PathPrices:
    """Estimated joules per request on ``target`` by path key, and the held-out inputs behind each price."""

    target: str
    energy_j: dict[str, float]
    inputs: dict[str, int]
    by_tokens: bool = False  # sentence encoders: keys "tokens:N", other lengths interpolated

    @property
    def fallback_j(self) -> float:
        return max(self.energy_j.values())

    def price(self, path: PathTaken) -> float:
        return self.energy_j.get(path_key(path), self.fallback_j)

    def price_tokens(self, tokens: int) -> float:
        """A sentence of ``tokens`` tokens (sentence encoders)."""
        held = self.energy_j.get(tokens_key(tokens))
        if held is not None or not self.by_tokens:
            return self.fallback_j if held is None else held
        points = sorted((int(k.split(":")[1]), v) for k, v in self.energy_j.items())
        n, e = np.asarray([p[0] for p in points], float), np.asarray([p[1] for p in points])
        if len(n) == 1 or n[0] <= tokens <= n[-1]:
            return float(np.interp(tokens, n, e))
        a, b = (0, 1) if tokens < n[0] else (-2, -1)
        return max(float(e[a] + (e[b] - e[a]) / (n[b] - n[a]) * (tokens - n[a])), 0.0)

    def to_json(self) -> dict[str, Any]:
        out = {"kind": "estimated", "target": self.target,
               "paths": {k: {"energy_j": v, "inputs": self.inputs[k]} for k, v in self.energy_j.items()},
               "fallback_j": self.fallback_j}
        if self.by_tokens:
            out["by_tokens"] = True
        return out

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> "PathPrices":
        paths = data["paths"]
        if not paths:
            raise ValueError("a tier's price table holds no path")
        return cls(target=str(data["target"]), energy_j={k: float(v["energy_j"]) for k, v in paths.items()},
                   inputs={k: int(v["inputs"]) for k, v in paths.items()}, by_tokens=bool(data.get("by_tokens")))


def price_paths(model: Any, samples: list[Any], paths: list[PathTaken], target: Any) -> PathPrices:
    """``samples``: single inputs (each a complete model input); ``paths``: the path the export took on each
    (the same inputs); ``target``: a resolved Target. Counted by the energy core, each input on its path."""
    from wattless.energy import count_each, estimate

    per_input = estimate(count_each(model, samples), target).per_input_energy_j
    groups: dict[str, list[float]] = defaultdict(list)
    for path, energy_j in zip(paths, per_input):
        groups[path_key(path)].append(energy_j)
    return PathPrices(target=target.name, energy_j={k: float(np.mean(v)) for k, v in groups.items()},
                      inputs={k: len(v) for k, v in groups.items()})


def price_sentences(model: Any, samples: list[Any], tokens: list[int], target: Any) -> PathPrices:
    """A sentence encoder priced by token count: ``samples`` one tokenized sentence each, ``tokens`` their
    lengths (other lengths are interpolated)."""
    from wattless.energy import count_each, estimate

    per_input = estimate(count_each(model, samples), target).per_input_energy_j
    groups: dict[str, list[float]] = defaultdict(list)
    for n, energy_j in zip(tokens, per_input):
        groups[tokens_key(n)].append(energy_j)
    return PathPrices(target=target.name, energy_j={k: float(np.mean(v)) for k, v in groups.items()},
                      inputs={k: len(v) for k, v in groups.items()}, by_tokens=True)
