"""Seeding a study: the project's ready recipes, the space's parameters of a recipe, and the one-step
neighbours of the first seed that run right after it (the plan), before the sampler models the space."""

from __future__ import annotations

import math
from fnmatch import fnmatchcase
from pathlib import Path
from typing import Any

import optuna
from optuna.trial import FrozenTrial, TrialState

from wattless.errors import WattlessError
from wattless.recipe import Recipe, load_recipe, parse_recipe

__all__ = ["default_seeds", "default_base", "for_target", "params_of", "neighbours", "widen", "enqueue_planned",
           "refuse_duplicate_plan"]


def default_seeds(workload: str, target: str) -> list[Recipe]:
    """The project's ready recipes for this workload and target (recipes/WORKLOAD-*.toml), best first."""
    folder = Path(__file__).resolve().parents[3] / "recipes"
    found = []
    for path in sorted(folder.glob(f"{workload}-*.toml")) if folder.is_dir() else []:
        try:
            recipe = load_recipe(path)
        except WattlessError:
            continue
        if recipe.target == target:
            found.append(recipe)
    return found


def default_base(target: str) -> Recipe:
    """The base a search without seeds draws around; it keeps the model's activations (no ReLU-fication)."""
    return parse_recipe({"name": "search-base", "target": target, "objective": {"energy_weight": 0.2}, "distill": {},
                         "quantize": {"weight_bits": 8, "act_bits": 8}, "act_sparsity": {"l1": 1e-5, "relufy": False}})


def for_target(recipe: Recipe, target: str) -> Recipe:
    objective = recipe.objective.model_copy(update={"target": None})
    return recipe.model_copy(update={"target": target, "objective": objective})


def params_of(dims: dict[str, Any], recipe: Recipe) -> dict[str, Any]:
    """The parameters of the space ``dims`` closest to ``recipe`` (what enqueuing it as a trial records)."""
    d, p = dims, {}
    if recipe.objective.energy_weight > 0:
        p["energy_weight"] = recipe.objective.energy_weight
    pr = recipe.prune[0] if recipe.prune else None
    p["prune"] = pr.pattern if pr else "none"
    if pr is not None and pr.pattern != "n:m":
        p["sparsity"] = pr.final_sparsity
    if d["moe"] is not None:
        p["moe_experts"] = recipe.moe.experts if recipe.moe else 0
        if recipe.moe:
            p["moe_top_k"] = recipe.moe.top_k
    if d["exit"] is not None:
        ex = recipe.early_exit
        p["exit"] = ex.after[0] if ex is not None and len(ex.after) == 1 else "none"
        if ex is not None:
            p["exit_drop"] = ex.target_accuracy_drop
    if d["act_l1"] is not None and recipe.act_sparsity is not None and recipe.act_sparsity.l1 > 0:
        p["act_l1"] = recipe.act_sparsity.l1
    for group, names in d["bits"]["groups"].items():
        bits = _bits_of(names[0], recipe)
        if bits is not None:
            p[f"wbits_{group}"], p[f"abits_{group}"] = bits
    return {k: v for k, v in p.items() if v is not None}


def _bits_of(name: str, recipe: Recipe) -> tuple[int, int] | None:
    """(weight bits, act bits) the recipe gives the layer named ``name``; None: float or float activations."""
    q = recipe.quantize
    if q is None or any(fnmatchcase(name, g) for g in q.skip):
        return None
    wb, ab = q.weight_bits, q.act_bits
    for glob, bits in q.overrides.items():
        if fnmatchcase(name, glob):
            wb = bits.weight_bits if "weight_bits" in bits.model_fields_set else wb
            ab = bits.act_bits if "act_bits" in bits.model_fields_set else ab
    return None if ab is None else (wb, ab)


def neighbours(dims: dict[str, Any], params: dict[str, Any]) -> list[dict[str, Any]]:
    """One step from a seed's parameters along each dimension that trades the metric for energy, the moves
    that usually cost the metric least first (fewer bits for the classifier, an exit after the deepest
    block), then both ways along sparsity and activation L1: the trials after the seed, in place of
    random ones, before the sampler models the space."""
    d, out = dims, []

    def step(key: str, bounds: list[float] | None, value: float) -> None:
        if bounds is not None and key in params:
            moved = min(bounds[1], max(bounds[0], value))
            if not math.isclose(moved, params[key]):
                out.append({**params, key: moved})

    lower = [b for b in d["bits"]["weight"] if b < params.get("wbits_last", 0)]
    if lower:
        out.append({**params, "wbits_last": lower[-1]})
    if d["exit"] is not None and params.get("exit") == "none":
        out.append({**params, "exit": d["exit"]["after"][-1], "exit_drop": sum(d["exit"]["drop"]) / 2})
    sparsity, l1 = params.get("sparsity", 0.0), params.get("act_l1", 0.0)
    step("sparsity", d["prune"]["sparsity"], sparsity + 0.05)
    step("sparsity", d["prune"]["sparsity"], sparsity - 0.05)
    step("act_l1", d["act_l1"], l1 * 3)
    step("act_l1", d["act_l1"], l1 / 3)
    return out


def widen(dims: dict[str, Any], params: dict[str, Any]) -> None:
    """Widen the ranges and choices of ``dims`` in place so that they hold ``params`` (a seed's)."""
    d = dims
    ranges = {"energy_weight": d["energy_weight"], "sparsity": d["prune"]["sparsity"],
              "act_l1": d["act_l1"], "exit_drop": d["exit"]["drop"] if d["exit"] else None}
    for key, bounds in ranges.items():
        if bounds is not None and key in params:
            bounds[0], bounds[1] = min(bounds[0], params[key]), max(bounds[1], params[key])
    moe = d["moe"] or {}
    choices = {"prune": d["prune"]["patterns"], "exit": d["exit"]["after"] if d["exit"] else None,
               "moe_experts": moe.get("experts"), "moe_top_k": moe.get("top_k")}
    for group in d["bits"]["groups"]:
        choices[f"wbits_{group}"], choices[f"abits_{group}"] = d["bits"]["weight"], d["bits"]["act"]
    for key, options in choices.items():
        value = params.get(key)
        if options is not None and value is not None and value not in ("none", 0) and value not in options:
            options.append(value)
            options.sort(key=str)
    d["bits"]["weight"].sort(), d["bits"]["act"].sort()


def enqueue_planned(study: optuna.Study, trials: list[FrozenTrial], plan: list[dict[str, Any]],
                    plan_of: str | None = None) -> None:
    """Enqueue the next planned trial, only when nothing waits: a trial enqueued to resume then always comes
    before the plan's next one."""
    if any(t.state == TrialState.WAITING for t in trials):
        return
    done = {t.user_attrs.get("plan") for t in trials}
    nxt = next((i for i in range(len(plan)) if i not in done), None)
    if nxt is not None:
        study.enqueue_trial(plan[nxt], user_attrs={"plan": nxt, "neighbour_of": plan_of})


def refuse_duplicate_plan(trial: optuna.Trial) -> None:
    """Two workers that look for work at the same moment may both enqueue the plan's next trial: the second
    one stops at once (pruned, with the reason) instead of training the same recipe again."""
    index = trial.user_attrs.get("plan")
    if index is None or trial.user_attrs.get("resumes") is not None:
        return
    first = next(t for t in trial.study.get_trials(deepcopy=False) if t.user_attrs.get("plan") == index)
    if first.number != trial.number:
        trial.set_user_attr("pruned", {"epoch": 0, "reason": f"a second copy of planned trial {first.number}"})
        raise optuna.TrialPruned(f"a second copy of planned trial {first.number}")
