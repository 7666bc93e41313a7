"""A recipe: the declarative composition of techniques and the training objective, one TOML file.

    name = "mnist1d-npu"
    target = "mobile-npu"
    [train]       epochs, lr, batch_size, seed, weight_decay
    [objective]   energy_weight (lambda on E[x] / E_baseline) or energy_budget_uj (+ dual_lr)
    [distill]     teacher, temperature, alpha, hidden_weight
    [quantize]    weight_bits, act_bits, per_channel, learn_step, overrides, skip
    [[prune]]     pattern, sparsity, n, m, granularity, schedule, layers, skip (one table or several)
    [moe]         experts, top_k, blocks, balance_weight
    [early_exit]  after, target_accuracy_drop, loss_weight
    [act_sparsity] l1, relufy, layers
    [analog]      target, hwa, train_weight_noise, seeds, times_s, compare_without_hwa, noise scales
    [spiking]     target, steps, norm, percentile, reset, initial_membrane
    [weight_only] bits, group_size, zero_point, symmetric, method (gptq | rtn), damp, calibration_windows,
                  skip, overrides
    [sparsify]    pattern (2:4 | unstructured), sparsity, method (wanda | magnitude), calibration_windows, skip
    [kv_cache]    bits (a decoder's keys and values as stored in its cache)

Validated on load: an unknown key, a wrong type or an impossible value is an error naming the key and
the file. ``check_recipe`` then applies the recipe to a copy of the model, so combinations that cannot
work on this model (2:4 on a layer whose input is not a multiple of 4, an exit after a block that does
not exist) fail before any training starts.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import tomli_w
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator
from torch import nn

from wattless.files import atomic_write, read_toml, validation_message
from wattless.errors import RecipeError
from wattless.techniques.act_sparsity import ActSparsityConfig
from wattless.techniques.analog import AnalogConfig
from wattless.techniques.base import ApplyContext, Technique, TechniqueConfig, apply_
from wattless.techniques.distill import DistillConfig
from wattless.techniques.early_exit import ExitConfig
from wattless.techniques.moe import MoEConfig
from wattless.techniques.prune import PruneConfig
from wattless.techniques.quantize import QuantConfig
from wattless.techniques.spiking import SpikingConfig
from wattless.techniques.kv_cache import KVCacheConfig
from wattless.techniques.llm_sparsity import SparsifyConfig
from wattless.techniques.weight_only import WeightOnlyConfig

__all__ = ["Recipe", "TrainSection", "Objective", "load_recipe", "parse_recipe", "check_recipe", "apply_recipe",
           "save_recipe"]

_STRICT = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)


class TrainSection(BaseModel):
    model_config = _STRICT
    epochs: int | None = Field(None, ge=0, strict=True, description="default: the workload's")
    lr: float | None = Field(None, gt=0, strict=True)
    batch_size: int | None = Field(None, ge=1, strict=True)
    seed: int = Field(0, strict=True)
    weight_decay: float = Field(0.0, ge=0, strict=True)
    checkpoint_every: int = Field(1, ge=1, strict=True, description="epochs between checkpoints")
    dropout: bool = Field(True, description="false: dropout off in the student (distilling to a fixed teacher)")


class Objective(BaseModel):
    """loss = task + energy_weight * E[x] / E_baseline, or a hard budget kept by a Lagrange multiplier."""

    model_config = _STRICT
    energy_weight: float = Field(0.0, ge=0, strict=True, description="lambda on the expected energy relative to the baseline")
    energy_budget_uj: float | None = Field(None, gt=0, strict=True, description="hard budget in microjoules per inference")
    dual_lr: float = Field(0.05, gt=0, strict=True, description="step of the multiplier's dual ascent")
    target: str | None = Field(None, description="target the objective prices on (default: the recipe's)")

    @model_validator(mode="after")
    def _one_form(self) -> "Objective":
        if self.energy_weight and self.energy_budget_uj is not None:
            raise ValueError("give either energy_weight or energy_budget_uj, not both")
        return self


class Recipe(BaseModel):
    model_config = _STRICT
    name: str = "recipe"
    description: str = ""
    target: str = "mobile-npu"
    train: TrainSection = TrainSection()
    objective: Objective = Objective()
    distill: DistillConfig | None = None
    quantize: QuantConfig | None = None
    prune: tuple[PruneConfig, ...] = ()
    moe: MoEConfig | None = None
    early_exit: ExitConfig | None = None
    act_sparsity: ActSparsityConfig | None = None
    weight_only: WeightOnlyConfig | None = None
    kv_cache: KVCacheConfig | None = None
    sparsify: SparsifyConfig | None = None
    analog: AnalogConfig | None = None
    spiking: SpikingConfig | None = None

    @model_validator(mode="after")
    def _one_kind_of_hardware(self) -> "Recipe":
        if self.analog is not None and self.spiking is not None:
            raise ValueError("give [analog] or [spiking], not both: one recipe deploys to one kind of chip "
                             "(`wattless compare RUN_DIR` prices the run on the others)")
        if self.spiking is not None and (self.moe is not None or self.early_exit is not None):
            raise ValueError("[spiking] converts a plain ReLU network: it does not take [moe] or [early_exit]")
        return self

    @field_validator("prune", mode="before")
    @classmethod
    def _one_or_many(cls, v: Any) -> Any:
        return [v] if isinstance(v, dict) else v

    @property
    def objective_target(self) -> str:
        return self.objective.target or self.target

    def techniques(self) -> list[TechniqueConfig]:
        """In the order they are applied: experts, activations, masks (traced on the plain backbone, before
        exit heads branch off it), exits, then bits (so exit heads and experts are quantized too); weight-only
        k-bit codes on the weights every other technique left; then the analog tiles (on the layers left float)
        or the spiking neurons (on the ReLUs)."""
        ordered: list[TechniqueConfig | None] = [self.moe, self.act_sparsity, *self.prune, self.early_exit,
                                                 self.quantize, self.sparsify, self.weight_only, self.kv_cache,
                                                 self.analog, self.spiking]
        return [c for c in ordered if c is not None]

    def to_dict(self) -> dict[str, Any]:
        return self.model_dump(mode="json", exclude_none=True)


def parse_recipe(data: dict[str, Any], where: str = "(inline)") -> Recipe:
    try:
        return Recipe.model_validate(data)
    except ValidationError as exc:
        raise RecipeError(validation_message(
            exc, f"recipe {where}", "key", "unknown key (check its spelling; see the README for the recipe keys)"
        )) from None


def load_recipe(path: str | Path) -> Recipe:
    return parse_recipe(read_toml(Path(path), "recipe", RecipeError), str(path))


def save_recipe(recipe: Recipe, path: str | Path) -> None:
    atomic_write(Path(path), tomli_w.dumps(recipe.to_dict()))


def apply_recipe(model: nn.Module, recipe: Recipe, context: ApplyContext) -> list[Technique]:
    """Apply every technique of the recipe to ``model`` in place; their live handles, in order."""
    return [apply_(model, config, context) for config in recipe.techniques()]


def check_recipe(recipe: Recipe, model: nn.Module, context: ApplyContext, where: str = "(inline)",
                 labelled: bool = True, trains: bool = True) -> None:
    """Fail before training if the recipe cannot apply to this model; the model itself is not touched."""
    if recipe.early_exit is not None and not labelled:
        raise RecipeError(f"recipe {where}: key `early_exit`: exits need a labelled workload (a classifier)")
    if recipe.distill is None and not labelled and trains:
        raise RecipeError(f"recipe {where}: the workload has no labels, so the student can only learn from the "
                          "baseline: add a [distill] section")
    trial = copy.deepcopy(model)
    for config in recipe.techniques():
        section = config.kind
        try:
            apply_(trial, config, context)  # each handler validates its config against the model first
        except (ValueError, TypeError, KeyError) as exc:
            raise RecipeError(f"recipe {where}: key `{section}`: {exc}") from None
