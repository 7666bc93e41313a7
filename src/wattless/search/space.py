"""The recipe space: which dimensions a model and a target can use, and drawing a recipe from a trial."""

from __future__ import annotations

import copy
import hashlib
import json
from collections.abc import Sequence
from typing import Any, Literal

import optuna
from pydantic import BaseModel, ConfigDict, Field
from torch import nn

from wattless.energy import Target
from wattless.optimize import train_batches
from wattless.recipe import Recipe, parse_recipe
from wattless.search import seeds as seeding
from wattless.techniques import ApplyContext, ExitConfig, MoEConfig, apply_
from wattless.techniques.moe import MoEMLP, find_mlp_blocks
from wattless.workloads import Workload

__all__ = ["SearchSpace", "RecipeSpace", "structure_context"]

_MAC_LAYERS = (nn.Linear, nn.Conv1d, nn.Conv2d)
_ACTIVATIONS = (nn.ReLU, nn.ReLU6, nn.GELU, nn.SiLU, nn.Tanh, nn.Sigmoid, nn.LeakyReLU, nn.Hardswish, nn.ELU)


class SearchSpace(BaseModel):
    """What a search may vary around its base recipe (the first seed). Dimensions the model or the target
    cannot use are left out (no experts without an MLP block, no weight patterns the target cannot skip);
    ranges widen to hold every seed recipe."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    epochs: int | None = Field(None, ge=1, description="epochs per drawn recipe (default: the base recipe's)")
    weight_bits: tuple[int, ...] = (2, 4, 8)
    act_bits: tuple[int, ...] = (4, 8)
    prune_patterns: tuple[Literal["none", "structured", "unstructured", "n:m"], ...] | None = None
    sparsity: tuple[float, float] = (0.5, 0.9)
    energy_weight: tuple[float, float] = (0.05, 1.0)
    act_l1: tuple[float, float] = (1e-6, 3e-4)
    exit_drop: tuple[float, float] = (0.0, 0.02)
    experts: tuple[int, ...] = (2, 4, 8)
    top_k: tuple[int, ...] = (1, 2)
    neighbours: int = Field(6, ge=0, description="one-step variations of the first seed tried right after it")
    relufy: bool = Field(False, description="drawn recipes replace smooth activations (GELU, SiLU, ...) by ReLU, "
                         "which changes the architecture; off unless asked for here or by the base recipe's own "
                         "act_sparsity.relufy = true")


def _mac_layers(model: nn.Module) -> list[tuple[str, nn.Module]]:
    return [(n, m) for n, m in model.named_modules() if type(m) in _MAC_LAYERS]


def _layer_groups(model: nn.Module) -> dict[str, list[str]]:
    """Bits are searched per group: the first MAC layer, the last (the classifier), and the rest."""
    names = [n for n, _ in _mac_layers(model)]
    if len(names) <= 1:
        return {"first": names}
    groups = {"first": names[:1], "middle": names[1:-1], "last": names[-1:]}
    return {g: v for g, v in groups.items() if v}


def _chain(model: nn.Module) -> tuple[nn.Sequential | None, str]:
    if isinstance(model, nn.Sequential):
        return model, ""
    for attr in ("features", "blocks"):
        if isinstance(getattr(model, attr, None), nn.Sequential):
            return getattr(model, attr), f"{attr}."
    return None, ""


def _exit_candidates(workload: Workload, model: nn.Module) -> list[str]:
    """Activations of a chain classifier an exit head can follow (not the last one), each checked."""
    chain, prefix = _chain(model)
    if chain is None or not workload.train.labelled:
        return []
    acts = [f"{prefix}{n}" for n, m in chain.named_children() if isinstance(m, _ACTIVATIONS)][:-1]
    ok = []
    for name in acts:
        try:
            context = ApplyContext(example_input=workload.example_input(8))
            apply_(copy.deepcopy(model), ExitConfig(after=[name]), context)
            ok.append(name)
        except Exception:  # noqa: BLE001 - a place the exit technique cannot take is simply not offered
            continue
    return ok


def _patterns_for(target: Target) -> list[str]:
    """Pruning patterns that can lower energy on this target: structured always (work removed outright),
    unstructured and 2:4 only where the target skips such zeros (or counts events)."""
    found = ["none", "structured"]
    if "unstructured" in target.sparsity.weight_patterns or target.events is not None:
        found.append("unstructured")
    if "2:4" in target.sparsity.weight_patterns:
        found.append("n:m")
    return found


def structure_context(workload: Workload) -> ApplyContext:
    return ApplyContext(example_input=workload.example_input(8), train_batches=train_batches(workload))


def _dims(config: SearchSpace, base: Recipe, workload: Workload, target: Target) -> dict[str, Any]:
    """The space as plain data: the dimensions ``workload``'s model and ``target`` can use."""
    model = workload.build_model()
    structured = next((p for p in base.prune if p.pattern == "structured"), None)
    exits = _exit_candidates(workload, model)
    return {
        "epochs": config.epochs or base.train.epochs or workload.default_epochs,
        "energy_weight": list(config.energy_weight),
        "prune": {"patterns": list(config.prune_patterns or _patterns_for(target)),
                  "sparsity": list(config.sparsity),
                  "granularity": structured.granularity if structured else "channel",
                  "schedule": structured.schedule.model_dump() if structured else None},
        "moe": {"experts": sorted(config.experts), "top_k": sorted(config.top_k)}
        if find_mlp_blocks(model) else None,
        "exit": {"after": exits, "drop": list(config.exit_drop)} if exits else None,
        "act_l1": list(config.act_l1) if target.sparsity.skips_zero_activations or target.events else None,
        "relufy": config.relufy or _asks_relufy(base),
        "bits": {"groups": _layer_groups(model), "weight": sorted(config.weight_bits),
                 "act": sorted(config.act_bits)},
    }


def _asks_relufy(recipe: Recipe) -> bool:
    """Whether the recipe itself sets act_sparsity.relufy = true (not merely leaves it at its default)."""
    act = recipe.act_sparsity
    return act is not None and "relufy" in act.model_fields_set and act.relufy


class RecipeSpace:
    """A function trial -> Recipe over the dimensions in ``dims`` (bits per layer group, pruning pattern and
    level, experts and top-k, exit placement and threshold drop, lambda, activation L1), the rest of each
    recipe taken from ``base``. ``dims`` is plain data stored in the study, so every worker and every resume
    draws from the same space."""

    def __init__(self, dims: dict[str, Any], base: Recipe, workload: Workload) -> None:
        self.dims, self.base, self.workload = dims, base, workload
        self._globs: dict[str, dict[str, str]] = {}

    @classmethod
    def build(cls, config: SearchSpace, base: Recipe, workload: Workload, target: Target,
              seeds: Sequence[Recipe] = ()) -> "RecipeSpace":
        space = cls(_dims(config, base, workload, target), base, workload)
        for seed in seeds:
            seeding.widen(space.dims, space.params_of(seed))
        return space

    # -- drawing ---------------------------------------------------------------------------------------------
    def __call__(self, trial: optuna.Trial) -> Recipe:
        d = self.dims
        lam = trial.suggest_float("energy_weight", *d["energy_weight"], log=True)
        prune, moe, exit_ = self._prune(trial), self._moe(trial), self._exit(trial)
        act = self._act(trial)
        quant = self._quant(trial, moe, exit_)
        data = self.base.to_dict()
        for key in ("prune", "moe", "early_exit", "act_sparsity", "quantize"):
            data.pop(key, None)
        data["objective"] = {"energy_weight": lam}
        data["train"] = {**data.get("train", {}), "epochs": d["epochs"]}
        sections = {"prune": [prune] if prune else None, "moe": moe, "early_exit": exit_, "act_sparsity": act,
                    "quantize": quant}
        data.update({k: v for k, v in sections.items() if v})
        digest = hashlib.sha256(json.dumps(trial.params, sort_keys=True).encode()).hexdigest()[:10]
        data["name"], data["description"] = f"search-{digest}", "drawn by wattless search"
        return parse_recipe(data, "(search space)")

    def _prune(self, trial: optuna.Trial) -> dict[str, Any] | None:
        d = self.dims["prune"]
        pattern = trial.suggest_categorical("prune", d["patterns"])
        if pattern == "none":
            return None
        if pattern == "n:m":
            return {"pattern": "n:m", "n": 2, "m": 4}
        out = {"pattern": pattern, "sparsity": trial.suggest_float("sparsity", *d["sparsity"])}
        if pattern == "structured":
            out["granularity"] = d["granularity"]
            if d["schedule"]:
                out["schedule"] = d["schedule"]
        return out

    def _moe(self, trial: optuna.Trial) -> dict[str, Any] | None:
        d = self.dims["moe"]
        if d is None:
            return None
        experts = trial.suggest_categorical("moe_experts", [0, *d["experts"]])
        if not experts:
            return None
        return {"experts": experts, "top_k": min(trial.suggest_categorical("moe_top_k", d["top_k"]), experts)}

    def _exit(self, trial: optuna.Trial) -> dict[str, Any] | None:
        d = self.dims["exit"]
        if d is None:
            return None
        after = trial.suggest_categorical("exit", ["none", *d["after"]])
        if after == "none":
            return None
        return {"after": [after], "target_accuracy_drop": trial.suggest_float("exit_drop", *d["drop"])}

    def _act(self, trial: optuna.Trial) -> dict[str, Any] | None:
        base = self.base.act_sparsity.model_dump(mode="json") if self.base.act_sparsity else {}
        relufy = self.dims.get("relufy", True)  # a study stored before the choice was draws as it did then
        if self.dims["act_l1"] is None:
            return {**base, "relufy": relufy} if base else None
        return {**base, "l1": trial.suggest_float("act_l1", *self.dims["act_l1"], log=True), "relufy": relufy}

    def _quant(self, trial: optuna.Trial, moe: dict | None, exit_: dict | None) -> dict[str, Any]:
        d = self.dims["bits"]
        bits = {g: (trial.suggest_categorical(f"wbits_{g}", d["weight"]),
                    trial.suggest_categorical(f"abits_{g}", d["act"])) for g in d["groups"]}
        top = "middle" if "middle" in bits else next(iter(bits))
        globs = self._group_globs(moe, exit_)
        overrides = {globs[g]: {"weight_bits": w, "act_bits": a} for g, (w, a) in bits.items()
                     if g != top and (w, a) != bits[top]}
        rest = self.base.quantize.model_dump(mode="json") if self.base.quantize else {}
        for key in ("weight_bits", "act_bits", "overrides"):
            rest.pop(key, None)
        return {**rest, "weight_bits": bits[top][0], "act_bits": bits[top][1], "overrides": overrides}

    def _group_globs(self, moe: dict | None, exit_: dict | None) -> dict[str, str]:
        key = json.dumps([moe, exit_], sort_keys=True)
        if key not in self._globs:
            self._globs[key] = _group_globs(self.workload, self.dims["bits"]["groups"], moe, exit_)
        return self._globs[key]

    # -- seeds -----------------------------------------------------------------------------------------------
    def params_of(self, recipe: Recipe) -> dict[str, Any]:
        """The space's parameters closest to ``recipe`` (what enqueuing it as a trial records)."""
        return seeding.params_of(self.dims, recipe)

    def neighbours(self, params: dict[str, Any]) -> list[dict[str, Any]]:
        """One step from a seed's parameters along each dimension that trades the metric for energy
        (`wattless.search.seeds.neighbours`)."""
        return seeding.neighbours(self.dims, params)


def _group_globs(workload: Workload, groups: dict[str, list[str]], moe: dict | None,
                 exit_: dict | None) -> dict[str, str]:
    """The name each group's first layer has once experts and exits have reshaped the model (an expert
    layer: a glob over its MoE block)."""
    model = workload.build_model()
    original = dict(_mac_layers(model))
    sites = {id(m): s.name for s in find_mlp_blocks(model) for m in (s.fc1, s.fc2)} if moe else {}
    context = structure_context(workload)
    if moe:
        apply_(model, MoEConfig(**moe), context)
    if exit_:
        apply_(model, ExitConfig(**exit_), context)
    final = {id(m): n for n, m in model.named_modules()}
    blocks = [n for n, m in model.named_modules() if isinstance(m, MoEMLP)]

    def glob(name: str) -> str:
        module = original[name]
        if id(module) in final:
            return final[id(module)]
        site = sites[id(module)]
        return next(b for b in blocks if b == site or b.endswith(f".{site}")) + ".*"

    return {g: glob(names[0]) for g, names in groups.items()}
