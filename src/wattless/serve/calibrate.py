"""Calibrating a cascade on held-out data: each tier's threshold, and each tier's joules per path.

Thresholds come from the early exits' own rule (`techniques.early_exit.greedy_thresholds`): the tiers are
exits in order, the last tier is the final head, and a tier answers an input when its maximum softmax
probability reaches its threshold. Each threshold is the lowest that keeps accuracy at most
``target_accuracy_drop`` below the last tier alone with the same one-sided paired (McNemar) margin at
``confidence``. The result, with the accuracy and joules it predicts on the held-out data, is written to
``cascade.calibration.json`` beside the cascade."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Callable

import numpy as np

from wattless.errors import CascadeError
from wattless.serve.cascade import confidences, open_tier
from wattless.serve.config import CascadeSpec, TierSpec, load_cascade_spec
from wattless.serve.pricing import PathPrices, price_paths, price_sentences
from wattless.serve.record import file_digest, write_calibration

__all__ = ["calibrate", "simulate", "tier_outputs", "cascade_workload"]


def cascade_workload(spec: CascadeSpec, workload: Any, where: Path) -> Any:
    """The workload (name, spec or Workload) with the seed the tiers' runs were trained with, so that its
    held-out split is held out for every tier."""
    from wattless.recipe import load_recipe
    from wattless.workloads import get_workload

    workload = workload if workload is not None else spec.workload
    if workload is None:
        raise CascadeError(f"cascade {where} names no workload: pass --workload NAME (or set `workload` in the file)")
    if not isinstance(workload, str):
        return workload
    seeds = {load_recipe(t.run / "recipe.toml").train.seed for t in spec.tiers if t.run is not None}
    if len(seeds) > 1:
        raise CascadeError(f"cascade {where}: the tiers' runs were trained with different seeds {sorted(seeds)}, so "
                           "no split of the workload is held out for all of them; train them with one seed")
    return get_workload(workload, seed=seeds.pop() if seeds else 0)


def tier_outputs(model: Any, x: np.ndarray, batch: int = 256) -> tuple[np.ndarray, list[Any]]:
    """(N, classes) logits and the N paths of an exported tier on x, in batches."""
    logits, paths = [], []
    for i in range(0, len(x), batch):
        result = model.run(x[i : i + batch])
        logits.append(result.outputs)
        paths += result.paths
    return np.concatenate(logits), paths


def simulate(conf: np.ndarray, correct: np.ndarray, energy_j: np.ndarray, thresholds: list[float]) -> dict[str, Any]:
    """The cascade's figures from every tier's (T, N) confidence, correctness and joules on the same inputs."""
    n_tiers, n = conf.shape
    thr = np.asarray([*thresholds, -math.inf])[:, None]
    taken = (conf >= thr).argmax(0)  # the first tier that answers; the last always does
    spent = np.cumsum(energy_j, 0)[taken, np.arange(n)]
    return {"accuracy": float(correct[taken, np.arange(n)].mean()), "energy_j_per_request": float(spent.mean()),
            "energy_kind": "estimated", "escalation_rate": float((taken > 0).mean()),
            "answered_by": [float((taken == t).mean()) for t in range(n_tiers)],
            "reached": [float((taken >= t).mean()) for t in range(n_tiers)]}


def _thresholds(conf: np.ndarray, correct: np.ndarray, settings: Any) -> list[float]:
    import torch

    from wattless.techniques.early_exit import greedy_thresholds

    if len(conf) == 1:
        return []
    found = greedy_thresholds(torch.from_numpy(conf[:-1]).float(), torch.from_numpy(correct[:-1]),
                              torch.from_numpy(correct[-1]), settings.target_accuracy_drop, settings.confidence)
    return [float(t) for t in found]


def _prices(tier: TierSpec, samples: list[Any], paths: list[Any], where: Path) -> PathPrices:
    from wattless.energy import resolve_target
    from wattless.optimize import load_run

    if tier.run is None:
        raise CascadeError(f"cascade {where}: tier {tier.name!r} has no `run`: give the `wattless optimize` run "
                           "directory its export came from, so the energy core can price its paths")
    model, _, _ = load_run(tier.run)
    return price_paths(model, samples, paths, resolve_target(tier.target))


def _held_out(wl: Any, where: Path) -> tuple[np.ndarray, np.ndarray, Any]:
    val = wl.val
    if val is None or val.targets is None or len(val) == 0:
        raise CascadeError(f"cascade {where}: workload {wl.name!r} has no labelled validation split to calibrate on")
    inputs = wl.prepare_inputs(val.inputs)
    return inputs.detach().cpu().numpy().astype(np.float32), val.targets.detach().cpu().numpy(), inputs


def calibrate(cascade_path: str | Path, workload: Any = None, *,
              log: Callable[[str], None] | None = None) -> dict[str, Any]:
    """Calibrate the cascade on the workload's validation split; writes and returns the calibration."""
    path = Path(cascade_path)
    spec = load_cascade_spec(path)
    settings, say = spec.calibration, log or (lambda _msg: None)
    wl = cascade_workload(spec, workload, path)
    first = open_tier(spec.tiers[0])
    if first.kind == "sentence-encoder":
        return _calibrate_encoder(path, spec, wl, first, say)
    x, y, inputs = _held_out(wl, path)
    m = min(len(x), settings.price_inputs)
    samples = [inputs[i : i + 1] for i in range(m)]
    conf, correct, energy, prices = [], [], [], []
    for tier in spec.tiers:
        say(f"tier {tier.name}: running {tier.model.name} on {len(x)} held-out inputs, pricing {m} on {tier.target}")
        logits, paths = tier_outputs(open_tier(tier), x)
        c, k = confidences(logits)
        table = _prices(tier, samples, paths[:m], path)
        conf.append(c)
        correct.append(k == y)
        prices.append(table)
        energy.append([table.price(p) for p in paths])
    conf, correct, energy = np.stack(conf), np.stack(correct), np.asarray(energy)
    thresholds = _thresholds(conf, correct, settings)
    record = _record(spec, wl, thresholds, prices, conf, correct, energy)
    out = write_calibration(path, record)
    say(f"calibration written to {out}")
    return {**record, "path": str(out)}


def _calibrate_encoder(path: Path, spec: CascadeSpec, wl: Any, model: Any, say: Callable[[str], None]) -> dict[str, Any]:
    """A sentence encoder: one tier (an embedding has no confidence to escalate on), priced by token count on
    the validation sentences; no labels needed."""
    from wattless.energy import resolve_target
    from wattless.optimize import load_run

    if len(spec.tiers) != 1:
        raise CascadeError(f"cascade {path}: a sentence-encoder cascade has one tier (an embedding has no "
                           f"confidence to escalate on); it has {len(spec.tiers)}")
    tier = spec.tiers[0]
    if tier.run is None:
        raise CascadeError(f"cascade {path}: tier {tier.name!r} has no `run`: give the `wattless optimize` run "
                           "directory its export came from, so the energy core can price it")
    sentences = list(wl.val.inputs)[: spec.calibration.price_inputs]
    samples = [wl.prepare_inputs(sentences[i : i + 1]) for i in range(len(sentences))]
    tokens = [int(s["input_ids"].shape[-1]) for s in samples]
    say(f"tier {tier.name}: pricing {len(samples)} held-out sentences on {tier.target}")
    prices = price_sentences(load_run(tier.run)[0], samples, tokens, resolve_target(tier.target))
    energy = float(np.mean([prices.price_tokens(n) for n in tokens]))
    record = {"cascade": spec.name, "workload": wl.name, "split": "val", "inputs": len(samples),
              "kind": "sentence-encoder", "reference": "the only tier",
              "tiers": [{"name": tier.name, "target": tier.target, "model": str(tier.model),
                         "model_sha256": file_digest(tier.model), "threshold": None, "never_answers": False,
                         "prices": prices.to_json()}],
              "predicted": {"tiers": [{"name": tier.name, "target": tier.target, "energy_j_per_request": energy,
                                       "energy_kind": "estimated"}]}}
    out = write_calibration(path, record)
    say(f"calibration written to {out}")
    return {**record, "path": str(out)}


def _record(spec: CascadeSpec, wl: Any, thresholds: list[float], prices: list[PathPrices], conf: np.ndarray,
            correct: np.ndarray, energy: np.ndarray) -> dict[str, Any]:
    tiers = [{"name": t.name, "target": t.target, "model": str(t.model), "model_sha256": file_digest(t.model),
              "threshold": None if i == len(spec.tiers) - 1 or math.isinf(thresholds[i]) else thresholds[i],
              "never_answers": i < len(thresholds) and math.isinf(thresholds[i]),
              "prices": p.to_json()} for i, (t, p) in enumerate(zip(spec.tiers, prices))]
    alone = [{"name": t.name, "target": t.target, "accuracy": float(correct[i].mean()),
              "energy_j_per_request": float(energy[i].mean()), "energy_kind": "estimated"}
             for i, t in enumerate(spec.tiers)]
    return {"cascade": spec.name, "workload": wl.name, "split": "val", "inputs": int(conf.shape[1]),
            "target_accuracy_drop": spec.calibration.target_accuracy_drop,
            "confidence": spec.calibration.confidence, "reference": "the last tier alone",
            "rule": "wattless.techniques.early_exit.greedy_thresholds (one-sided paired margin)",
            "tiers": tiers, "predicted": {"tiers": alone, "cascade": simulate(conf, correct, energy, thresholds)}}
