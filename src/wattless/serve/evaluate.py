"""`wattless cascade eval`: the calibrated cascade on the test split, beside each tier alone.

The cascade's figures come from `Cascade.predict`, the very code the server answers with; each tier alone
runs every test input. Joules are estimated, each tier on its own target (`wattless.serve.pricing`)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from wattless.errors import CascadeError
from wattless.serve.calibrate import cascade_workload, tier_outputs
from wattless.serve.cascade import Cascade, confidences, load_cascade

__all__ = ["evaluate", "cascade_figures"]


def cascade_figures(cascade: Cascade, x: np.ndarray, y: np.ndarray, batch: int = 256) -> dict[str, Any]:
    preds = [p for i in range(0, len(x), batch) for p in cascade.predict(x[i : i + batch])]
    tiers = np.asarray([p.tier for p in preds])
    return {"accuracy": float(np.mean([p.label == t for p, t in zip(preds, y)])),
            "energy_j_per_request": float(np.mean([p.energy_j for p in preds])), "energy_kind": "estimated",
            "escalation_rate": float((tiers > 0).mean()),
            "answered_by": [float((tiers == t).mean()) for t in range(len(cascade.tiers))]}


def _tier_alone(tier: Any, x: np.ndarray, y: np.ndarray) -> dict[str, Any]:
    logits, paths = tier_outputs(tier.model, x)
    return {"name": tier.spec.name, "target": tier.spec.target, "accuracy": float((confidences(logits)[1] == y).mean()),
            "energy_j_per_request": float(np.mean([tier.prices.price(p) for p in paths])), "energy_kind": "estimated"}


def evaluate(cascade_path: str | Path, workload: Any = None) -> dict[str, Any]:
    """Accuracy and estimated joules per request of the cascade and of each tier alone on the test split."""
    path = Path(cascade_path)
    cascade = load_cascade(path)
    if cascade.kind != "classifier":
        raise CascadeError(f"cascade {path} serves a {cascade.kind}; eval measures classifiers' accuracy")
    wl = cascade_workload(cascade.spec, workload, path)
    if wl.test.targets is None:
        raise CascadeError(f"workload {wl.name!r} has no labelled test split to evaluate on")
    x = wl.prepare_inputs(wl.test.inputs).detach().cpu().numpy().astype(np.float32)
    y = wl.test.targets.detach().cpu().numpy()
    tiers = [_tier_alone(t, x, y) for t in cascade.tiers]
    figures = cascade_figures(cascade, x, y)
    reference = tiers[-1]
    return {"name": cascade.name, "workload": wl.name, "split": "test", "inputs": len(x), "energy_kind": "estimated",
            "tiers": tiers, "cascade": figures, "reference": reference["name"],
            "accuracy_drop_points": 100 * (reference["accuracy"] - figures["accuracy"]),
            "energy_ratio": reference["energy_j_per_request"] / figures["energy_j_per_request"]}
