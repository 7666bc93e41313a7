"""`wattless.search`: the accuracy-versus-energy Pareto search over recipes, resumable, shareable.

    result = search("mnist1d", "mobile-npu", trials=20, out="runs/s1")
    result.frontier[0]["metric"], result.frontier[0]["energy_j"]["mobile-npu"]

One Optuna study per (workload, target) maximises the workload's metric (test split) and minimises the
estimated joules per inference on the target. A trial is one `wattless.optimize` run of a recipe drawn from
the recipe space (`RecipeSpace`, built around seed recipes that are enqueued first), trained in
DIR/trials/N with checkpoints. Hopeless trials stop early (`TrialPruner`); limits on size, latency and
energy are Optuna constraints. The study lives in storage (default sqlite:///DIR/study.db): a search
killed at any moment continues when the same command runs again, and workers on several machines share
one study through a server storage (PostgreSQL). DIR/results.json holds the frontier beside the baselines
a user would reach for instead, and DIR/report.html shows them.
"""

from __future__ import annotations

import contextlib
import copy
import fcntl
import hashlib
import json
import logging
import math
import os
import pickle
import signal
import socket
import sqlite3
import statistics
import subprocess
import sys
import threading
import time
import warnings
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from fnmatch import fnmatchcase
from pathlib import Path
from typing import Any, Literal

import torch
from pydantic import BaseModel, ConfigDict, Field
from torch import nn

from wattless._files import check_output_dir
from wattless.energy import Counts, Target, count_each, estimate, resolve_target, set_precision
from wattless.errors import SearchError, StorageError, WattlessError
from wattless.optimize import baseline_model, energy_by_target, eval_samples, load_run, optimize
from wattless.recipe import Recipe, load_recipe, parse_recipe
from wattless.train import torch_threads
from wattless.techniques import ApplyContext, ExitConfig, MoEConfig, apply_, full_path
from wattless.techniques.moe import MoEMLP, find_mlp_blocks
from wattless.workloads import Workload, get_workload

try:
    import optuna
    from optuna.trial import FrozenTrial, TrialState
except ImportError as _exc:  # graceful absence: the rest of wattless works without the search extra
    raise ImportError(f"wattless.search needs optuna ({_exc}): pip install 'wattless[search]'") from _exc

__all__ = [
    "search", "SearchResult", "SearchSpace", "RecipeSpace", "Constraints", "TrialPruner", "ParetoPruner",
    "NoPruner", "compute_baselines", "default_sampler", "default_seeds", "study_name", "default_storage",
    "pareto_front", "summarize", "load_results", "BASELINES", "PTQ_BASELINES", "RESULTS_FILE",
]

RESULTS_FILE = "results.json"
CLAIM_FILE = "search.json"
CLAIM_DEFAULT_STORAGE = "study.db in this folder"
BASELINES = ("fp32", "torch-dynamic-int8", "ort-dynamic-int8", "ort-static-int8")
PTQ_BASELINES = BASELINES[1:]
_HOST = socket.gethostname()
_MAC_LAYERS = (nn.Linear, nn.Conv1d, nn.Conv2d)
_ACTIVATIONS = (nn.ReLU, nn.ReLU6, nn.GELU, nn.SiLU, nn.Tanh, nn.Sigmoid, nn.LeakyReLU, nn.Hardswish, nn.ELU)
# user attrs a resumed trial takes over from the one it resumes
_CARRIED = ("seed", "seed_recipe", "plan", "neighbour_of", "curve")


# --- constraints -------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Constraints:
    """Limits a frontier point must keep. Each becomes an Optuna constraint (value <= 0: kept), relative to
    its limit so that they compare across units."""

    max_size_bytes: float | None = None  # weights at their deployed precision, every unit counted
    max_latency_s: float | None = None  # estimated on the search target
    energy_budget_uj: float | None = None  # estimated microjoules per inference on the search target

    def __post_init__(self) -> None:
        for name, value in asdict(self).items():
            if value is not None and not (math.isfinite(value) and value > 0):
                raise SearchError(f"constraint {name} must be a positive number, got {value}")

    def values(self, point: dict[str, Any], target: str) -> dict[str, float]:
        out = {}
        if self.max_size_bytes is not None:
            out["size"] = point["size_bytes"] / self.max_size_bytes - 1
        if self.max_latency_s is not None:
            out["latency"] = point["latency_s"][target] / self.max_latency_s - 1
        if self.energy_budget_uj is not None:
            out["energy"] = point["energy_j"][target] * 1e6 / self.energy_budget_uj - 1
        return out

    def to_dict(self) -> dict[str, float | None]:
        return asdict(self)


# --- the recipe space ---------------------------------------------------------------------------------------

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
    if chain is None or workload.train.targets is None:
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


def _structure_context(workload: Workload) -> ApplyContext:
    def batches():
        for i in range(0, min(len(workload.train), 512), 64):
            part = workload.train.take(slice(i, i + 64))
            yield workload.prepare_inputs(part.inputs), part.targets

    return ApplyContext(example_input=workload.example_input(8), train_batches=batches)


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
        model = workload.build_model()
        structured = next((p for p in base.prune if p.pattern == "structured"), None)
        exits = _exit_candidates(workload, model)
        dims = {
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
            "bits": {"groups": _layer_groups(model), "weight": sorted(config.weight_bits),
                     "act": sorted(config.act_bits)},
        }
        space = cls(dims, base, workload)
        for seed in seeds:
            space._widen(space.params_of(seed))
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
        if self.dims["act_l1"] is None:
            return base or None
        return {**base, "l1": trial.suggest_float("act_l1", *self.dims["act_l1"], log=True)}

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
        """The name each group's first layer has once experts and exits have reshaped the model (an expert
        layer: a glob over its MoE block)."""
        key = json.dumps([moe, exit_], sort_keys=True)
        if key not in self._globs:
            model = self.workload.build_model()
            original = dict(_mac_layers(model))
            sites = {id(m): s.name for s in find_mlp_blocks(model) for m in (s.fc1, s.fc2)} if moe else {}
            context = _structure_context(self.workload)
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

            self._globs[key] = {g: glob(names[0]) for g, names in self.dims["bits"]["groups"].items()}
        return self._globs[key]

    # -- seeds -----------------------------------------------------------------------------------------------
    def params_of(self, recipe: Recipe) -> dict[str, Any]:
        """The space's parameters closest to ``recipe`` (what enqueuing it as a trial records)."""
        d, p = self.dims, {}
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

    def neighbours(self, params: dict[str, Any]) -> list[dict[str, Any]]:
        """One step from a seed's parameters along each dimension that trades the metric for energy, the moves
        that usually cost the metric least first (fewer bits for the classifier, an exit after the deepest
        block), then both ways along sparsity and activation L1: the trials after the seed, in place of
        random ones, before the sampler models the space."""
        d, out = self.dims, []

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

    def _widen(self, params: dict[str, Any]) -> None:
        d = self.dims
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


def default_seeds(workload: str, target: str) -> list[Recipe]:
    """The project's ready recipes for this workload and target (recipes/WORKLOAD-*.toml), best first."""
    folder = Path(__file__).resolve().parents[2] / "recipes"
    found = []
    for path in sorted(folder.glob(f"{workload}-*.toml")) if folder.is_dir() else []:
        try:
            recipe = load_recipe(path)
        except WattlessError:
            continue
        if recipe.target == target:
            found.append(recipe)
    return found


def _default_base(target: str) -> Recipe:
    return parse_recipe({"name": "search-base", "target": target, "objective": {"energy_weight": 0.2}, "distill": {},
                         "quantize": {"weight_bits": 8, "act_bits": 8}, "act_sparsity": {"l1": 1e-5}})


def _for_target(recipe: Recipe, target: str) -> Recipe:
    objective = recipe.objective.model_copy(update={"target": None})
    return recipe.model_copy(update={"target": target, "objective": objective})


# --- pruning hopeless trials --------------------------------------------------------------------------------

class TrialPruner:
    """Decides after each epoch whether a trial is hopeless. One method, like Optuna's BasePruner (whose
    report/should_prune Optuna does not support for multi-objective studies)."""

    def prune(self, epoch: int, epochs: int, curve: list[dict[str, Any]],
              finished: list[tuple[int, list[dict[str, Any]]]], reference: float) -> str | None:
        """Why to stop now, or None. ``curve``: this trial's records so far ({epoch, val_metric,
        soft_energy_j}); ``finished``: (number, curve) of completed trials; ``reference``: the fp32
        baseline's validation metric."""
        return None


class NoPruner(TrialPruner):
    """Every trial runs to the end."""


def _at_fraction(curve: list[dict[str, Any]], fraction: float, epochs: int) -> dict[str, Any] | None:
    if not curve:
        return None
    wanted = max(1, round(fraction * epochs))
    return next((r for r in curve if r["epoch"] >= wanted), None)


class ParetoPruner(TrialPruner):
    """Stop a trial, past ``warmup`` of its epochs, whose validation metric is more than ``floor_drop`` below
    the fp32 baseline's, or which a completed trial dominated at the same point of its training: a metric
    at least ``margin`` higher at no more expected energy (the soft energy the objective sees). The warmup
    lets the metric recover from the dip a pruning schedule causes (it ends half-way by default)."""

    def __init__(self, *, warmup: float = 0.7, margin: float = 0.03, floor_drop: float = 0.10) -> None:
        self.warmup, self.margin, self.floor_drop = warmup, margin, floor_drop

    def prune(self, epoch, epochs, curve, finished, reference):
        if epoch < self.warmup * epochs or not curve:
            return None
        now = curve[-1]
        if now["val_metric"] < reference - self.floor_drop:
            return (f"validation metric {now['val_metric']:.4f} at epoch {epoch} is more than "
                    f"{self.floor_drop} below the fp32 baseline's {reference:.4f}")
        if now.get("soft_energy_j") is None:
            return None
        for number, other in finished:
            rec = _at_fraction(other, epoch / epochs, max(r["epoch"] for r in other) if other else 1)
            if rec is None or rec.get("soft_energy_j") is None:
                continue
            better = rec["val_metric"] >= now["val_metric"] + self.margin
            if better and rec["soft_energy_j"] <= now["soft_energy_j"]:
                return (f"dominated at epoch {epoch}: trial {number} had validation metric "
                        f"{rec['val_metric']:.4f} (this {now['val_metric']:.4f}) at no more expected energy")
        return None


# --- baselines ----------------------------------------------------------------------------------------------

_BASELINE_NOTES = {
    "fp32": "the dense fp32 baseline",
    "torch-dynamic-int8": "PyTorch post-training dynamic int8 (torch.ao quantize_dynamic on Linear layers); energy "
                          "priced as int8 weights with fp32 activations on Linear layers only, the rest fp32",
    "ort-dynamic-int8": "ONNX Runtime quantize_dynamic (int8 weights); energy priced as int8 weights with fp32 "
                        "activations on Linear layers only, the rest fp32",
    "ort-static-int8": "ONNX Runtime quantize_static (QDQ, per-channel, MinMax calibration on 256 training inputs); "
                       "energy priced as int8 weights and int8 activations on Linear and Conv layers",
}


def _priced_as(model: nn.Module, kinds: tuple[type, ...], weight: str, act: str) -> nn.Module:
    """A copy whose layers of ``kinds`` declare the precision a post-training quantized deployment runs at."""
    priced = copy.deepcopy(model)
    for m in priced.modules():
        if isinstance(m, kinds):
            set_precision(m, weight, act)
    return priced


def _size_bytes(model: nn.Module, sample: Any) -> float:
    """Weight bytes at their precision, every unit counted (all experts and exit heads)."""
    with full_path(model):
        counts = count_each(model, [sample])
    return float(sum(r["weight_bytes"] for r in counts.mean_records()))


def _units(counts: Counts, target: Target) -> list[dict[str, Any]]:
    est = estimate(counts, target)
    return [{"name": u.name, "type": u.type, "energy_j": u.energy_j, "compute_j": u.compute_j,
             "memory_j": u.memory_j, "static_j": u.static_j, "latency_s": u.latency_s, "macs": u.macs,
             "effective_macs": u.effective_macs} for u in est.units]


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """Optuna's per-trial log lines and experimental-feature warnings stay out of the user's terminal;
    wattless prints its own progress."""
    level = optuna.logging.get_verbosity()
    optuna.logging.set_verbosity(optuna.logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            warnings.filterwarnings("ignore", category=FutureWarning, module="optuna")
            warnings.filterwarnings("ignore", category=UserWarning, module="optuna")
            yield
    finally:
        optuna.logging.set_verbosity(level)


@contextlib.contextmanager
def _hushed_exporters() -> Iterator[None]:
    """The ONNX exporter and ONNX Runtime's quantizer log advice on every call (the quantizer on the root
    logger); none of it concerns the user of a baseline."""
    names = ("", "torch.onnx", "onnxruntime", "onnxscript")
    levels = {name: logging.getLogger(name).level for name in names}
    for name in names:
        logging.getLogger(name).setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        for name, lvl in levels.items():
            logging.getLogger(name).setLevel(lvl)


def _baseline_row(name: str, baseline: nn.Module, workload: Workload, samples: list[Any], folder: Path,
                  target: Target) -> dict[str, Any]:
    from wattless import baselines as bl

    evaluated, priced = baseline, baseline
    if name == "torch-dynamic-int8":
        evaluated, priced = bl.torch_dynamic_int8(baseline), _priced_as(baseline, (nn.Linear,), "int8", "fp32")
    elif name.startswith("ort-"):
        fp32 = bl.export_onnx(baseline, workload.example_input(1), folder / "fp32.onnx")
        if name == "ort-dynamic-int8":
            path = bl.ort_quantize_dynamic(fp32, folder / "dynamic-int8.onnx")
            priced = _priced_as(baseline, (nn.Linear,), "int8", "fp32")
        else:
            calib = [workload.prepare_inputs(workload.train.take(slice(i, i + 32)).inputs)
                     for i in range(0, 256, 32)]
            path = bl.ort_quantize_static(fp32, folder / "static-int8.onnx", calib)
            priced = _priced_as(baseline, (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d), "int8", "int8")
        evaluated = bl.OrtModule(path, threads=1)
    metrics = workload.evaluate(evaluated, workload.test)
    energy, macs = energy_by_target(priced, samples)
    row = {"metric": metrics[workload.metric_name], "metrics": metrics,
           "energy_j": {k: v["energy_j"] for k, v in energy.items()},
           "latency_s": {k: v["latency_s"] for k, v in energy.items()},
           "size_bytes": _size_bytes(priced, samples[0]), "macs": macs, "note": _BASELINE_NOTES[name]}
    if name == "fp32":
        row["breakdown"] = _units(count_each(priced, samples), target)
    return row


def compute_baselines(workload: str | Workload, target: str | Target, *, out: str | Path,
                      names: Sequence[str] = BASELINES, energy_inputs: int = 64, cache: Path | None = None,
                      on_step: Callable[[str], None] | None = None) -> dict[str, dict[str, Any]]:
    """What a user would reach for instead, on the same test data and target: {name: {metric, energy_j
    (every built-in target, estimated), latency_s, size_bytes, note}}. ONNX files go to OUT/baselines/.
    One that cannot run here (e.g. without onnxruntime) is {metric: None, energy_j: {}, error}."""
    wl = get_workload(workload) if isinstance(workload, str) else workload
    tgt = resolve_target(target) if isinstance(target, str) else target
    unknown = sorted(set(names) - set(BASELINES))
    if unknown or "fp32" not in names:
        raise SearchError(f"baselines {unknown or list(names)}: choose among {', '.join(BASELINES)}, fp32 always")
    folder = Path(out) / "baselines"
    folder.mkdir(parents=True, exist_ok=True)
    baseline, _ = baseline_model(wl, progress=False, cache=cache)
    samples = eval_samples(wl, energy_inputs)
    rows = {}
    with _hushed_exporters():
        for name in names:
            try:
                rows[name] = _baseline_row(name, baseline, wl, samples, folder, tgt)
            except Exception as exc:  # noqa: BLE001 - a missing tool leaves a gap, named, not a failed search
                if name == "fp32":
                    raise
                error = f"{type(exc).__name__}: {exc}".splitlines()[0]
                rows[name] = {"metric": None, "energy_j": {}, "error": error, "note": _BASELINE_NOTES[name]}
            if on_step is not None:
                on_step(name)
    return rows


def _cached_baselines(out: Path, wl: Workload, target: Target, names: Sequence[str], energy_inputs: int,
                      cache: Path | None, on_step: Callable[[str], None] | None) -> dict[str, dict[str, Any]]:
    """OUT/baselines.json, computed once per folder (a lock keeps two workers sharing a folder from both
    computing it)."""
    key = {"workload": wl.name, "target": target.name, "names": list(names), "energy_inputs": energy_inputs}
    path = out / "baselines.json"
    with open(out / ".baselines.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if path.exists():
            held = json.loads(path.read_text())
            if held.get("key") == key:
                return held["baselines"]
        rows = compute_baselines(wl, target, out=out, names=names, energy_inputs=energy_inputs, cache=cache,
                                 on_step=on_step)
        _write_json(path, {"key": key, "baselines": rows})
    return rows


# --- storage and the study ----------------------------------------------------------------------------------

def default_storage(out: str | Path) -> str:
    return f"sqlite:///{(Path(out) / 'study.db').resolve()}"


def study_name(workload: str, target: str) -> str:
    """One study per workload and target: workers and resumes find it by this name."""
    return f"wattless-{workload}-{target}"


def _shown(url: str) -> str:
    """The URL with any password hidden, for messages and files."""
    try:
        from sqlalchemy.engine import make_url

        return make_url(url).render_as_string(hide_password=True)
    except Exception:  # noqa: BLE001 - a malformed URL is shown as given (it has no password to hide)
        return url


def _sqlite_wal(url: str) -> None:
    """Put a SQLite study in write-ahead-log mode (kept in the file): readers (a report, a second worker) never
    block the writer, and a process killed mid-write leaves the last committed state readable."""
    from sqlalchemy.engine import make_url

    database = make_url(url).database
    if database and database != ":memory:":
        with contextlib.closing(sqlite3.connect(database, timeout=60)) as con:
            con.execute("PRAGMA journal_mode=WAL")


def _with_driver(url: str) -> str:
    """``postgresql://`` (the form the docs give) with the driver that is installed: SQLAlchemy 2.1 reads the
    bare form as psycopg 3, and many machines have psycopg2 only."""
    import importlib.util

    scheme, sep, rest = url.partition("://")
    if not sep or scheme not in ("postgresql", "postgres"):
        return url
    for module, dialect in (("psycopg", "postgresql+psycopg"), ("psycopg2", "postgresql+psycopg2")):
        if importlib.util.find_spec(module) is not None:
            return f"{dialect}://{rest}"
    return url  # neither: the error below says which driver to install


def _open_storage(url: str) -> optuna.storages.RDBStorage:
    """An RDB storage with heartbeats (a worker that dies mid-trial has the trial retried elsewhere)."""
    from sqlalchemy.exc import IntegrityError, OperationalError, ProgrammingError, SQLAlchemyError

    url = _with_driver(url)
    engine: dict[str, Any] = {}
    if url.startswith("sqlite"):
        engine = {"connect_args": {"timeout": 60}}
        try:
            _sqlite_wal(url)
        except (sqlite3.Error, ValueError, ImportError) as exc:
            raise StorageError(f"cannot open the study storage {_shown(url)}: {type(exc).__name__}: {exc}. Check "
                               "that its folder exists and is writable") from None
    elif url.startswith("postgresql"):
        engine = {"connect_args": {"connect_timeout": 10}, "pool_pre_ping": True}
    try:
        for attempt in range(5):
            try:
                with _quiet():
                    return optuna.storages.RDBStorage(url, engine_kwargs=engine, heartbeat_interval=30,
                                                      grace_period=120, heartbeat_stale_trial_callback=_requeue_stale)
            except (IntegrityError, ProgrammingError, OperationalError) as exc:
                # workers meeting a new database create Optuna's tables at the same moment: one wins, the
                # others find the tables on the next try (SQLite says "table ... already exists")
                if attempt == 4 or (isinstance(exc, OperationalError) and "already exists" not in str(exc)):
                    raise
                time.sleep(0.5 + attempt)
    except (SQLAlchemyError, ImportError, ValueError, OSError, RuntimeError) as exc:
        detail = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise StorageError(
            f"cannot open the study storage {_shown(url)}: {type(exc).__name__}: {detail}. Check the URL, that "
            "the database server is running and reachable from here, and that its driver is installed "
            "(PostgreSQL: pip install psycopg2-binary)"
        ) from None


def _check_out(out: Path, identity: dict[str, str]) -> None:
    """An output folder holds one study; reading only, so a refused command changes nothing."""
    claim = out / CLAIM_FILE
    if claim.exists():
        try:
            held = json.loads(claim.read_text(encoding="utf-8"))
            held.get("study_name")
        except (OSError, UnicodeDecodeError, ValueError, AttributeError) as exc:
            raise SearchError(f"{claim} is damaged ({type(exc).__name__}); {out} cannot be trusted as a search "
                              "folder: choose another --out or remove it") from None
        if {k: held.get(k) for k in identity} != identity:
            raise SearchError(
                f"{out} holds the search of study {held.get('study_name')!r} (workload "
                f"{held.get('workload')!r}, target {held.get('target')!r}, storage {held.get('storage')!r}), not "
                f"{identity['study_name']!r} in {identity['storage']!r}; choose another --out, or run that study's "
                "own command to continue it"
            )
    elif out.exists() and any(out.iterdir()):
        raise SearchError(f"{out} exists and is not a wattless search folder; choose an empty or new --out")


def _study_info(wl: Workload, target: Target, constraints: Constraints, space: RecipeSpace,
                seeds: Sequence[Recipe], neighbours: int) -> dict[str, Any]:
    """The study's settings, stored in it: what it searches, the space, and the plan (the first seed's
    neighbours, enqueued one at a time as workers look for work)."""
    plan = space.neighbours(space.params_of(seeds[0]))[:neighbours] if seeds else []
    return {"version": 1, "workload": wl.name, "target": target.name, "metric_name": wl.metric_name,
            "constraints": constraints.to_dict(), "space": space.dims, "base": space.base.to_dict(),
            "plan": plan, "plan_of": seeds[0].name if seeds else None}


def _open_study(storage, name: str, info: dict[str, Any], sampler, seeds: Sequence[Recipe],
                space: RecipeSpace) -> tuple[optuna.Study, RecipeSpace]:
    """Create the study (and enqueue the seeds) or load it; a study started with other settings is refused
    before anything is written."""
    try:
        study = optuna.create_study(storage=storage, study_name=name, directions=["maximize", "minimize"],
                                    sampler=sampler)
        held = None
    except optuna.exceptions.DuplicatedStudyError:
        study = optuna.load_study(storage=storage, study_name=name, sampler=sampler)
        held = _wait_for_info(study)
    if held is None:
        if study.directions != [optuna.study.StudyDirection.MAXIMIZE, optuna.study.StudyDirection.MINIMIZE]:
            raise SearchError(f"study {name!r} in this storage is not a wattless search; use another storage")
        # the seeds first, the settings last: a worker that finds the settings finds the seeds too
        enqueued = {t.user_attrs.get("seed") for t in study.get_trials(deepcopy=False)}
        for seed in seeds:
            if seed.name not in enqueued:
                attrs = {"seed": seed.name, "seed_recipe": seed.to_dict()}
                study.enqueue_trial(space.params_of(seed), user_attrs=attrs)
        study.set_user_attr("wattless", info)
        return study, space
    for key in ("workload", "target", "metric_name", "constraints"):
        if held.get(key) != info[key]:
            raise SearchError(
                f"study {name!r} was started with {key} = {held.get(key)!r}, this command gives {info[key]!r}; "
                "rerun with the study's settings to continue it, or search into another --out / --storage"
            )
    return study, RecipeSpace(held["space"], parse_recipe(held["base"], "(study base recipe)"), space.workload)


def _wait_for_info(study: optuna.Study, patience_s: float = 15.0) -> dict[str, Any] | None:
    """The settings of a study another worker has just created (it writes them once its seeds are
    enqueued); None after ``patience_s``: its creator died before, and this worker finishes the job."""
    give_up = time.monotonic() + patience_s
    while True:
        held = study.user_attrs.get("wattless")  # user_attrs reads storage on every access
        if held is not None or time.monotonic() > give_up:
            return held
        time.sleep(0.5)


def default_sampler(seed: int | None = None) -> optuna.samplers.BaseSampler:
    """Multi-objective TPE: a few random draws (after the seeds), then it models where good recipes lie;
    the constant liar keeps parallel workers from drawing the same recipe."""
    with _quiet():
        return optuna.samplers.TPESampler(n_startup_trials=5, multivariate=True, group=True, constant_liar=True,
                                          seed=seed)


# --- resuming trials ----------------------------------------------------------------------------------------

def _proc_start(pid: int) -> str | None:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[19]
    except (OSError, IndexError):
        return None


def _alive(worker: dict[str, Any]) -> bool:
    pid = worker.get("pid")
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    stat = Path(f"/proc/{pid}/stat")
    if stat.exists() and stat.read_text().rsplit(")", 1)[1].split()[0] == "Z":
        return False
    return worker.get("start") is None or _proc_start(pid) == worker.get("start")


def _requeue(study: optuna.Study, number: int, params: dict[str, Any], attrs: dict[str, Any]) -> None:
    """Enqueue the resumption of trial ``number`` (same parameters; it takes over the trial's run folder and
    checkpoint), unless one is enqueued already."""
    if any(t.user_attrs.get("resumes") == number for t in study.get_trials(deepcopy=False)):
        return
    carried = {k: v for k, v in attrs.items() if k in _CARRIED}
    study.enqueue_trial(params, user_attrs={**carried, "resumes": number}, skip_if_exists=False)


def _requeue_stale(study: optuna.Study, trial: FrozenTrial) -> None:
    """Optuna's callback for a trial whose worker stopped sending heartbeats (a machine lost)."""
    _requeue(study, trial.number, trial.params, trial.user_attrs)


def _recover(study: optuna.Study) -> None:
    """Trials left running by a dead process of this machine fail now and are resumed, without waiting for
    the heartbeat's grace period (a search killed and started again at once)."""
    for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        worker = t.user_attrs.get("worker")
        if not worker or worker.get("host") != _HOST or _alive(worker):
            continue
        try:
            study.tell(t.number, state=TrialState.FAIL)
        except (RuntimeError, ValueError, optuna.exceptions.UpdateFinishedTrialError):
            continue  # another worker got there first
        _requeue(study, t.number, t.params, t.user_attrs)


def _enqueue_planned(study: optuna.Study, trials: list[FrozenTrial], plan: list[dict[str, Any]],
                     plan_of: str | None = None) -> None:
    """Enqueue the next planned trial, only when nothing waits: a trial enqueued to resume then always comes
    before the plan's next one."""
    if any(t.state == TrialState.WAITING for t in trials):
        return
    done = {t.user_attrs.get("plan") for t in trials}
    nxt = next((i for i in range(len(plan)) if i not in done), None)
    if nxt is not None:
        study.enqueue_trial(plan[nxt], user_attrs={"plan": nxt, "neighbour_of": plan_of})


def _refuse_duplicate_plan(trial: optuna.Trial) -> None:
    """Two workers that look for work at the same moment may both enqueue the plan's next trial: the second
    one stops at once (pruned, with the reason) instead of training the same recipe again."""
    index = trial.user_attrs.get("plan")
    if index is None or trial.user_attrs.get("resumes") is not None:
        return
    first = next(t for t in trial.study.get_trials(deepcopy=False) if t.user_attrs.get("plan") == index)
    if first.number != trial.number:
        trial.set_user_attr("pruned", {"epoch": 0, "reason": f"a second copy of planned trial {first.number}"})
        raise optuna.TrialPruned(f"a second copy of planned trial {first.number}")


# --- one trial ----------------------------------------------------------------------------------------------

class _Deadline(Exception):
    """The search's time is up: the running trial stops at an epoch boundary and is enqueued to resume."""


@dataclass
class _Context:
    workload: Workload
    target: Target
    out: Path
    space: RecipeSpace
    pruner: TrialPruner
    constraints: Constraints
    baseline: nn.Module
    reference_val: float
    energy_inputs: int = 64
    cache: Path | None = None
    deadline: float | None = None
    plan: list[dict[str, Any]] = field(default_factory=list)
    plan_of: str | None = None
    meter: "_Meter | None" = None


def _without_zero_skipping(target: Target) -> Target:
    sparsity = target.sparsity.model_copy(update={"skips_zero_activations": False})
    return target.model_copy(update={"sparsity": sparsity})


@contextlib.contextmanager
def _declared_fp32(model: nn.Module) -> Iterator[nn.Module]:
    """Every module priced at fp32 inside the block; the precisions techniques declared come back after."""
    keys = ("wattless_weight_precision", "wattless_act_precision")
    saved = [(m, {k: m.__dict__[k] for k in keys if k in m.__dict__}) for m in model.modules()]
    set_precision(model, "fp32", "fp32")
    try:
        yield model
    finally:
        for m, held in saved:
            for k in keys:
                m.__dict__.pop(k, None)
            m.__dict__.update(held)


class _Meter:
    """Per-unit energy, size and each technique's share of the saving, of a trained model."""

    def __init__(self, ctx: _Context) -> None:
        self.samples = eval_samples(ctx.workload, ctx.energy_inputs)
        self.few = self.samples[:16]
        self.target, self.dense = ctx.target, _without_zero_skipping(ctx.target)
        counts = count_each(ctx.baseline, self.few)
        self.base = (estimate(counts, self.target).energy_j, estimate(counts, self.dense).energy_j)

    def inspect(self, model: nn.Module) -> tuple[list[dict[str, Any]], float, dict[str, Any]]:
        actual = count_each(model, self.samples)
        few = Counts(actual.samples[: len(self.few)], actual.params, actual.unit_order)
        final = estimate(few, self.target).energy_j
        with full_path(model):
            full = count_each(model, self.few)
        with _declared_fp32(model), full_path(model):
            fp32 = count_each(model, self.few)
        e_full, e_full_dense = estimate(full, self.target).energy_j, estimate(full, self.dense).energy_j
        e_fp_dense = estimate(fp32, self.dense).energy_j
        base, base_dense = self.base
        # in order: structure (both priced at fp32, every activation computed), bit widths, the zeros skipped
        # beyond what the baseline's ReLUs give, each input's path; the factors multiply to base / final
        factors = [("pruning", base_dense / e_fp_dense), ("quantization", e_fp_dense / e_full_dense),
                   ("activation sparsity", (e_full_dense / e_full) / (base_dense / base)),
                   ("early exits and routing", e_full / final)]
        steps, energy = [], base
        for name, factor in factors:
            energy /= factor
            steps.append({"technique": name, "factor": factor, "energy_j_after": energy})
        contributions = {"target": self.target.name, "baseline_j": base, "final_j": final, "steps": steps,
                         "inputs": len(self.few)}
        size = float(sum(r["weight_bytes"] for r in full.mean_records()))
        return _units(actual, self.target), size, contributions


class _Watcher:
    """optimize's on_epoch: the validation metric per epoch (recorded in the trial), the deadline, pruning."""

    def __init__(self, trial: optuna.Trial, ctx: _Context, epochs: int, view: "_View") -> None:
        self.trial, self.ctx, self.epochs, self.view = trial, ctx, epochs, view
        self.curve: list[dict[str, Any]] = list(trial.user_attrs.get("curve", []))
        self.model: nn.Module | None = None
        self._finished: tuple[float, list] = (0.0, [])

    def __call__(self, epoch: int, record: dict[str, float], model: nn.Module) -> None:
        self.model = model
        val = self.ctx.workload.evaluate(model, self.ctx.workload.val)[self.ctx.workload.metric_name]
        for m in model.modules():
            if isinstance(m, MoEMLP):
                m.reset_stats()  # routing statistics describe the final evaluation only
        now = {"epoch": epoch, "val_metric": val, "soft_energy_j": record.get("soft_energy_j"),
               "loss": record.get("loss")}
        self.curve = [r for r in self.curve if r["epoch"] < epoch] + [now]
        self.trial.set_user_attr("curve", self.curve)
        self.view.epoch(epoch, f"val {self.ctx.workload.metric_name} {val:.4f}")
        if self.ctx.deadline is not None and time.time() >= self.ctx.deadline:
            raise _Deadline()
        if self.trial.user_attrs.get("seed"):
            return  # a seed recipe always runs to the end, so the frontier holds it
        reason = self.ctx.pruner.prune(epoch, self.epochs, self.curve, self.finished(), self.ctx.reference_val)
        if reason:
            self.trial.set_user_attr("pruned", {"epoch": epoch, "reason": reason})
            raise optuna.TrialPruned(reason)

    def finished(self) -> list[tuple[int, list[dict[str, Any]]]]:
        fetched, rows = self._finished
        if time.monotonic() - fetched > 30:
            trials = self.trial.study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
            rows = [(t.number, t.user_attrs["curve"]) for t in trials if t.user_attrs.get("curve")]
            self._finished = (time.monotonic(), rows)
        return rows


def _claim_trial(trial: optuna.Trial, out: Path) -> Path:
    """Mark the trial as this process's; a resumption takes over its predecessor's run folder."""
    trial.set_user_attr("worker", {"host": _HOST, "pid": os.getpid(), "start": _proc_start(os.getpid())})
    run_dir = out / "trials" / str(trial.number)
    resumes = trial.user_attrs.get("resumes")
    if resumes is not None:
        old = out / "trials" / str(resumes)
        if old.is_dir() and not run_dir.exists():
            os.replace(old, run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)  # every trial a worker took has its folder there
    return run_dir


class _Objective:
    def __init__(self, ctx: _Context, view: "_View") -> None:
        self.ctx, self.view = ctx, view
        self.number: int | None = None  # the trial this worker ran last

    def __call__(self, trial: optuna.Trial) -> tuple[float, float]:
        self.number = trial.number
        run_dir = _claim_trial(trial, self.ctx.out)
        _refuse_duplicate_plan(trial)
        try:
            return self._run(trial, run_dir)
        except (KeyboardInterrupt, _Deadline) as exc:
            trial.set_user_attr("interrupted", "deadline" if isinstance(exc, _Deadline) else "interrupted")
            _requeue(trial.study, trial.number, dict(trial.params), trial.user_attrs)
            raise
        except WattlessError as exc:
            trial.set_user_attr("error", str(exc))
            raise

    def _run(self, trial: optuna.Trial, run_dir: Path) -> tuple[float, float]:
        ctx, started = self.ctx, time.time()
        recipe = ctx.space(trial)  # a seeded trial draws too, so its parameters are recorded for the sampler
        if trial.user_attrs.get("seed_recipe"):
            recipe = parse_recipe(trial.user_attrs["seed_recipe"], "(seed recipe)")
        trial.set_user_attr("recipe", recipe.to_dict())
        epochs = recipe.train.epochs or ctx.workload.default_epochs
        watcher = _Watcher(trial, ctx, epochs, self.view)
        self.view.trial(trial.number, epochs, trial.user_attrs.get("seed") or recipe.name)
        metrics = optimize(ctx.workload, recipe, run_dir, progress=False, energy_inputs=ctx.energy_inputs,
                           cache=ctx.cache, baselines=False, on_epoch=watcher)
        model = watcher.model if watcher.model is not None else load_run(run_dir, ctx.workload)[0]
        ctx.meter = ctx.meter or _Meter(ctx)
        units, size, contributions = ctx.meter.inspect(model)
        point = {
            "trial": trial.number, "metric": metrics["accuracy"], "metrics": metrics["metrics"],
            "val_metric": watcher.curve[-1]["val_metric"] if watcher.curve else None,
            "energy_j": metrics["energy_j"], "latency_s": metrics["latency_s"], "size_bytes": size,
            "macs": metrics["macs"], "recipe": recipe.to_dict(), "params": dict(trial.params),
            "techniques": metrics["techniques"], "breakdown": units, "contributions": contributions,
            "seed": trial.user_attrs.get("seed"), "run_dir": str(run_dir), "host": _HOST,
            "duration_s": time.time() - started, "epochs": epochs,
        }
        trial.set_user_attr("point", point)
        for key, value in ctx.constraints.values(point, ctx.target.name).items():
            trial.set_constraint(key, value)
        self.view.trial_done()
        return point["metric"], point["energy_j"][ctx.target.name]


# --- budget and workers -------------------------------------------------------------------------------------

def _counted(t: FrozenTrial) -> bool:
    """Trials that use up the --trials budget: finished ones, not those stopped to be resumed."""
    if t.state in (TrialState.COMPLETE, TrialState.PRUNED):
        return True
    return t.state == TrialState.FAIL and "error" in t.user_attrs


@dataclass(frozen=True)
class _Budget:
    trials: int | None
    deadline: float | None  # time.time()

    def allows(self, trials: list[FrozenTrial]) -> bool:
        if self.trials is not None:
            busy = sum(1 for t in trials if _counted(t) or t.state == TrialState.RUNNING)
            if busy >= self.trials:
                return False
        if self.deadline is not None:
            left = self.deadline - time.time()
            typical = _typical_trial_s(trials)
            if left <= 0 or (typical is not None and left < 0.8 * typical):
                return False
        return True


def _typical_trial_s(trials: list[FrozenTrial]) -> float | None:
    spans = [(t.datetime_complete - t.datetime_start).total_seconds() for t in trials
             if t.state == TrialState.COMPLETE and t.datetime_start and t.datetime_complete
             and "resumes" not in t.user_attrs]
    return statistics.median(spans) if spans else None


def _work(study: optuna.Study, ctx: _Context, budget: _Budget, view: "_View",
          after_trial: Callable[[], None] | None = None) -> None:
    """Run trials until the budget is spent. Three failures in a row stop the worker with the last error."""
    from sqlalchemy.exc import OperationalError

    objective, failures = _Objective(ctx, view), 0
    while True:
        _recover(study)
        trials = study.get_trials(deepcopy=False)
        view.progress(trials)
        if not budget.allows(trials):
            return
        _enqueue_planned(study, trials, ctx.plan, ctx.plan_of)
        try:
            with _quiet():
                study.optimize(objective, n_trials=1, catch=(WattlessError,))
        except _Deadline:
            return
        except OperationalError as exc:
            raise StorageError(f"lost the study storage mid-search: {str(exc).splitlines()[0]}; the finished "
                               "trials are kept there: run the same command again once it is reachable") from None
        last = study.trials[objective.number] if objective.number is not None else None
        failed = last is not None and last.state == TrialState.FAIL and "error" in last.user_attrs
        failures = failures + 1 if failed else 0
        if failures >= 3:
            raise SearchError(f"three trials in a row failed; the last: {last.user_attrs['error']}")
        if after_trial is not None:
            after_trial()


@contextlib.contextmanager
def _one_interrupt() -> Iterator[None]:
    """The first Ctrl-C stops the search (KeyboardInterrupt); later ones are ignored until the block ends, so
    a second Ctrl-C cannot cut short the failing of the interrupted trial, the enqueueing of its resumption
    and the partial results. Left alone where SIGINT is not Python's default (ignored, or the caller's own)."""
    if threading.current_thread() is not threading.main_thread() or \
            signal.getsignal(signal.SIGINT) is not signal.default_int_handler:
        yield
        return

    def first(signum, frame) -> None:
        signal.signal(signal.SIGINT, later)
        raise KeyboardInterrupt

    def later(signum, frame) -> None:
        print("wattless: stopping: the study is being saved so that the same command continues it",
              file=sys.stderr, flush=True)

    signal.signal(signal.SIGINT, first)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, signal.default_int_handler)


def _worker_main(cfg: dict[str, Any]) -> None:
    """A spawned worker process: the same study, its own trials, no output of its own."""
    torch.set_num_threads(cfg["threads"])
    try:
        with _one_interrupt(), _quiet():
            ctx, study = _attach(cfg)
            _work(study, ctx, _Budget(cfg["trials"], cfg["deadline"]), _View(False))
    except KeyboardInterrupt:
        pass  # the running trial was enqueued to resume; the primary reports


def _attach(cfg: dict[str, Any]) -> tuple[_Context, optuna.Study]:
    wl, target = get_workload(cfg["workload"]), resolve_target(cfg["target"])
    sampler = cfg["sampler"]
    if sampler is None:
        sampler = default_sampler()
    else:
        sampler.reseed_rng()
    storage = _open_storage(cfg["storage"])
    study = optuna.load_study(storage=storage, study_name=cfg["study_name"], sampler=sampler)
    info = study.user_attrs["wattless"]
    space = RecipeSpace(info["space"], parse_recipe(info["base"], "(study base recipe)"), wl)
    return _context(wl, target, Path(cfg["out"]), space, cfg["pruner"], info, cfg["energy_inputs"],
                    cfg["cache"], cfg["deadline"]), study


def _context(wl: Workload, target: Target, out: Path, space: RecipeSpace, pruner: TrialPruner,
             info: dict[str, Any], energy_inputs: int, cache: Path | None, deadline: float | None) -> _Context:
    baseline, _ = baseline_model(wl, progress=False, cache=cache)
    reference = wl.evaluate(baseline, wl.val)[wl.metric_name]
    return _Context(wl, target, out, space, pruner, Constraints(**info["constraints"]), baseline, reference,
                    energy_inputs, cache, deadline, info.get("plan", []), info.get("plan_of"))


# --- results ------------------------------------------------------------------------------------------------

def pareto_front(points: list[dict[str, Any]], target: str) -> list[dict[str, Any]]:
    """Points no other point beats on both the metric (higher) and energy on ``target`` (lower), by energy."""
    ordered = sorted(points, key=lambda p: (p["energy_j"][target], -p["metric"]))
    front, best = [], -math.inf
    for p in ordered:
        if p["metric"] > best:
            front.append(p)
            best = p["metric"]
    return front


def _feasible(t: FrozenTrial) -> bool:
    return all(v <= 0 for v in t.constraints.values()) if hasattr(t, "constraints") else True


def _trial_row(t: FrozenTrial, target: str) -> dict[str, Any]:
    point = t.user_attrs.get("point") or {}
    curve = t.user_attrs.get("curve") or []
    return {
        "trial": t.number, "state": t.state.name.lower(), "metric": point.get("metric"),
        "energy_j": point.get("energy_j", {}).get(target), "feasible": _feasible(t) if point else None,
        "seed": t.user_attrs.get("seed"), "resumes": t.user_attrs.get("resumes"),
        "pruned": t.user_attrs.get("pruned"), "error": t.user_attrs.get("error"),
        "interrupted": t.user_attrs.get("interrupted"), "params": t.params,
        "epochs_done": curve[-1]["epoch"] if curve else 0,
        "val_metric": curve[-1]["val_metric"] if curve else None,
        "duration_s": (t.datetime_complete - t.datetime_start).total_seconds()
        if t.datetime_complete and t.datetime_start else None,
    }


def summarize(frontier: list[dict[str, Any]], baselines: dict[str, dict[str, Any]], target: str,
              within: float = 0.01) -> dict[str, Any]:
    """The lowest-energy frontier point within ``within`` of the fp32 baseline's metric (0.01 = one accuracy
    point), and its energy ratios against fp32 and the lowest-energy post-training quantization baseline."""
    fp32 = baselines.get("fp32")
    out: dict[str, Any] = {"target": target, "within": within, "chosen_trial": None}
    ptq = {n: b for n, b in baselines.items() if n in PTQ_BASELINES and b.get("metric") is not None}
    if ptq:
        best = min(ptq, key=lambda n: ptq[n]["energy_j"][target])
        out.update(best_ptq=best, best_ptq_energy_j=ptq[best]["energy_j"][target],
                   best_ptq_metric=ptq[best]["metric"])
    if fp32 is None or fp32.get("metric") is None:
        return out
    out.update(fp32_metric=fp32["metric"], fp32_energy_j=fp32["energy_j"][target])
    near = [p for p in frontier if p["metric"] >= fp32["metric"] - within - 1e-12]
    if not near:
        return out
    chosen = min(near, key=lambda p: p["energy_j"][target])
    e = chosen["energy_j"][target]
    out.update(chosen_trial=chosen["trial"], metric=chosen["metric"], energy_j=e,
               metric_drop_points=100 * (fp32["metric"] - chosen["metric"]),
               ratio_vs_fp32=fp32["energy_j"][target] / e)
    if ptq:
        out["ratio_vs_best_ptq"] = out["best_ptq_energy_j"] / e
    return out


def _collect(study: optuna.Study, baselines: dict[str, dict[str, Any]], storage: str,
             info: dict[str, Any]) -> dict[str, Any]:
    target = info["target"]
    trials = study.get_trials(deepcopy=False)
    points = [t.user_attrs["point"] for t in trials
              if t.state == TrialState.COMPLETE and "point" in t.user_attrs and _feasible(t)]
    front = pareto_front(points, target)
    states = {s.name.lower(): sum(1 for t in trials if t.state == s) for s in TrialState}
    return {
        "schema": 1, "workload": info["workload"], "target": target, "metric_name": info["metric_name"],
        "energy_kind": "estimated", "study_name": study.study_name, "storage": _shown(storage),
        "constraints": info["constraints"], "space": info["space"], "trial_counts": states,
        "baselines": baselines, "frontier": front, "summary": summarize(front, baselines, target),
        "trials": [_trial_row(t, target) for t in trials], "written": time.strftime("%Y-%m-%d %H:%M:%S"),
    }


def _write_json(path: Path, data: Any) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(data, indent=2))
    os.replace(tmp, path)


def load_results(out: str | Path) -> dict[str, Any]:
    path = Path(out) / RESULTS_FILE
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise SearchError(f"{path} does not exist: run `wattless search --out {out}` first") from None
    except (OSError, json.JSONDecodeError) as exc:
        raise SearchError(f"{path} cannot be read: {exc}") from None


@dataclass
class SearchResult:
    """What a search left in its folder: the frontier (metric, energy_j per target, recipe...), the baselines,
    how many trials are in each state, and the summary (the best point within one metric point of fp32)."""

    out: Path
    study_name: str
    storage: str
    target: str
    metric_name: str
    frontier: list[dict[str, Any]]
    baselines: dict[str, dict[str, Any]]
    trial_counts: dict[str, int]
    summary: dict[str, Any]
    results_path: Path
    report_path: Path | None = None
    interrupted: bool = False

    @classmethod
    def from_results(cls, out: Path, results: dict[str, Any], report: Path | None, interrupted: bool = False):
        return cls(out, results["study_name"], results["storage"], results["target"], results["metric_name"],
                   results["frontier"], results["baselines"], results["trial_counts"], results["summary"],
                   out / RESULTS_FILE, report, interrupted)


# --- progress -----------------------------------------------------------------------------------------------

class _View:
    """Progress bars of the primary worker: baselines, trials of the whole study, the running trial's epochs."""

    def __init__(self, enabled: bool, total: int | None = None, console=None) -> None:
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

        self.total = total
        self.bar = Progress(TextColumn("{task.description}", style="bold", markup=False), BarColumn(), MofNCompleteColumn(),
                            TextColumn("{task.fields[status]}", markup=False), TimeElapsedColumn(), disable=not enabled,
                            console=console)
        self._search = self._trial = None

    def __enter__(self) -> "_View":
        self.bar.__enter__()
        return self

    def __exit__(self, *exc) -> None:
        self.bar.__exit__(*exc)

    def stage(self, description: str, total: int) -> Callable[[str | None], None]:
        """A step function: stage(name) marks one step done; stage(None) completes the stage."""
        task = self.bar.add_task(description, total=total, status="")

        def step(status: str | None) -> None:
            if status is None:
                self.bar.update(task, completed=total, status="done")
            else:
                self.bar.update(task, advance=1, status=status)

        return step

    def waiting(self, procs: list) -> None:
        if any(p.poll() is None for p in procs) and self._search is not None:
            self.bar.update(self._search, status="waiting for the other workers' last trials")

    def progress(self, trials: list[FrozenTrial]) -> None:
        done = sum(1 for t in trials if _counted(t))
        states = f"{sum(t.state == TrialState.COMPLETE for t in trials)} complete, " \
                 f"{sum(t.state == TrialState.PRUNED for t in trials)} pruned, " \
                 f"{sum(t.state == TrialState.RUNNING for t in trials)} running"
        if self._search is None:
            self._search = self.bar.add_task("search", total=self.total, status=states)
        self.bar.update(self._search, completed=done, status=states)

    def trial(self, number: int, epochs: int, label: str) -> None:
        if self._trial is not None:
            self.bar.remove_task(self._trial)
        self._trial = self.bar.add_task(f"trial {number}", total=epochs, status=label)

    def epoch(self, epoch: int, status: str) -> None:
        if self._trial is not None:
            self.bar.update(self._trial, completed=epoch, status=status)

    def trial_done(self) -> None:
        if self._trial is not None:
            self.bar.remove_task(self._trial)
            self._trial = None


# --- the search ---------------------------------------------------------------------------------------------

_WORKER = ("import pickle, sys; from wattless.search import _worker_main; "
           "_worker_main(pickle.load(sys.stdin.buffer))")


def _spawn(n: int, cfg: dict[str, Any]) -> list[subprocess.Popen]:
    """Worker processes started afresh (not forked: torch's threads do not survive a fork; not through
    multiprocessing: a caller's script need not guard its main)."""
    procs = []
    for _ in range(n):
        proc = subprocess.Popen([sys.executable, "-c", _WORKER], stdin=subprocess.PIPE)
        proc.stdin.write(pickle.dumps(cfg))
        proc.stdin.close()
        procs.append(proc)
    return procs


def _stop(procs: list[subprocess.Popen], timeout: float = 30.0) -> None:
    """Ask workers to stop as Ctrl-C would (their running trials are enqueued to resume), then wait."""
    for p in procs:
        if p.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                p.send_signal(signal.SIGINT)
    for p in procs:
        try:
            p.wait(timeout)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()


def search(
    workload: str | Workload,
    target: str,
    *,
    out: str | Path,
    trials: int | None = None,
    minutes: float | None = None,
    storage: str | None = None,
    constraints: Constraints = Constraints(),
    space: SearchSpace = SearchSpace(),
    seeds: Sequence[Recipe] | None = None,
    sampler: optuna.samplers.BaseSampler | None = None,
    pruner: TrialPruner | None = None,
    workers: int = 1,
    baselines: Sequence[str] = BASELINES,
    energy_inputs: int = 64,
    cache: Path | None = None,
    progress: bool = True,
    report: bool = True,
    console=None,
) -> SearchResult:
    """Search recipes for the accuracy-versus-energy frontier of ``workload`` on ``target``; see the module
    docstring. ``trials``: finished trials the study should hold (the same command continues to it);
    ``minutes``: this invocation's time (a trial still running then stops and resumes next time).
    ``seeds``: recipes enqueued first (default: the project's recipes for this workload and target).
    ``workers``: processes on this machine sharing the study (each takes cores / workers threads).
    Ctrl-C leaves the study resumable and a partial results.json and report, then re-raises."""
    if trials is None and minutes is None:
        raise SearchError("give a budget: --trials N (finished trials in the study) and/or --minutes M")
    if (trials is not None and trials < 1) or (minutes is not None and not minutes > 0) or workers < 1:
        raise SearchError(f"--trials and --workers must be >= 1 and --minutes > 0 (got trials={trials}, "
                          f"minutes={minutes}, workers={workers})")
    _check_settings(minutes, energy_inputs, Path(out))
    tgt = resolve_target(target)
    wl = get_workload(workload) if isinstance(workload, str) else workload
    if workers > 1 and not isinstance(workload, str):
        raise SearchError("several workers load the workload themselves: pass it by name or spec, not an object")
    out = Path(out)
    url = storage or default_storage(out)
    name = study_name(wl.name, tgt.name)
    # the folder's own study.db is named relative to it, so a moved folder still continues
    identity = {"study_name": name, "storage": _shown(storage) if storage else CLAIM_DEFAULT_STORAGE,
                "workload": wl.name, "target": tgt.name}
    _check_out(out, identity)
    deadline = time.time() + 60 * minutes if minutes is not None else None
    if storage is None:
        out.mkdir(parents=True, exist_ok=True)
    threads = max(1, (os.cpu_count() or 1) // workers) if workers > 1 else None
    with _one_interrupt(), _quiet(), torch_threads(threads):
        store = _open_storage(url)
        found = default_seeds(wl.name, tgt.name) if seeds is None else seeds
        seeds = [_for_target(s, tgt.name) for s in found]
        base = seeds[0] if seeds else _default_base(tgt.name)
        baseline_model(wl, progress=progress, cache=cache)  # trained and cached once, before workers start
        draft = RecipeSpace.build(space, base, wl, tgt, seeds)
        info = _study_info(wl, tgt, constraints, draft, seeds, space.neighbours)
        study, drawn = _open_study(store, name, info, sampler or default_sampler(), seeds, draft)
        info = study.user_attrs["wattless"]
        out.mkdir(parents=True, exist_ok=True)
        _write_json(out / CLAIM_FILE, identity)
        ctx = _context(wl, tgt, out, drawn, pruner or ParetoPruner(), info, energy_inputs, cache, deadline)
        cfg = {"workload": workload if isinstance(workload, str) else None, "target": target, "out": str(out),
               "storage": url, "study_name": name, "trials": trials, "deadline": deadline,
               "threads": threads or 1, "energy_inputs": energy_inputs, "cache": cache, "pruner": ctx.pruner,
               "sampler": sampler}
        rows: dict[str, dict[str, Any]] = {}

        def publish() -> SearchResult:
            results = _collect(study, rows, url, info)
            _write_json(out / RESULTS_FILE, results)
            return SearchResult.from_results(out, results, _build_report(out) if report else None)

        procs = _spawn(workers - 1, cfg) if workers > 1 else []
        try:
            with _View(progress, trials, console) as view:
                stage = view.stage("baselines", len(baselines))
                rows.update(_cached_baselines(out, wl, tgt, baselines, energy_inputs, cache, stage))
                stage(None)
                publish()
                _work(study, ctx, _Budget(trials, deadline), view, after_trial=publish)
                view.waiting(procs)
                failed = [code for code in (p.wait() for p in procs) if code != 0]
                view.progress(study.get_trials(deepcopy=False))
            if failed:
                warnings.warn(f"{len(failed)} worker process(es) stopped with exit codes {failed} (their error is "
                              "printed above); their trials are resumable: run the same command again",
                              RuntimeWarning, stacklevel=2)
            return publish()
        except KeyboardInterrupt:
            _stop(procs)
            publish()
            raise
        finally:
            _stop(procs)


def _check_settings(minutes: float | None, energy_inputs: int, out: Path) -> None:
    """What search() is given beyond the budget, checked before any work."""
    if minutes is not None and not math.isfinite(minutes):
        raise SearchError(f"--minutes must be a finite number of minutes, got {minutes}")
    if energy_inputs < 1:
        raise SearchError(f"--energy-inputs must be >= 1 (test inputs each model's energy is counted on), got "
                          f"{energy_inputs}")
    check_output_dir(out, "search folder", SearchError)


def _build_report(out: Path) -> Path | None:
    try:
        from wattless.report import build_report
    except ImportError:  # matplotlib absent: results.json is still written
        return None
    return build_report(out)
