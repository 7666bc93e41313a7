"""The library inside the user's own training loop: prepare -> the user's training -> convert -> export.

    prepared = wattless.prepare(model, "recipe.toml", example_inputs, total_steps=len(loader) * epochs)
    for x, y in loader:
        logits = model(x)
        loss = F.cross_entropy(logits, y) + wattless.energy_loss(model, targets=y)  # after the forward
        opt.zero_grad(); loss.backward(); opt.step()
        wattless.step(model)                                                           # after opt.step()
    wattless.convert(model)                                # finish every technique, then the deployed form
    wattless.export(model, example_inputs, "model.onnx")   # ONNX, parity checked on example_inputs

One pass of that loop is one step of wattless's own loop (``wattless.train``), in its order:

    train.py                                  here
    tech.on_step(step, total)                 prepare (step 0), then step() (every next step)
    forward, task loss                        the user's
    + tech.loss(...) + energy(len(batch))     energy_loss(model)
    backward, optimizer step                  the user's
    energy.dual_step(); step += 1             step(model)
    energy.refresh() each epoch               step(model), every ``refresh_every`` steps

The handle lives on the model (``model.wattless_prepared``) so the verbs take the model, as torchao's do; a
copy of the model (export's deployed copy) does not carry it.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

from wattless.energy import count_each, estimate, resolve_target
from wattless.errors import ExportError, RecipeError, TrainingError
from wattless.recipe import Recipe, apply_recipe, check_recipe, parse_recipe
from wattless.techniques.base import ApplyContext, Technique, clear_soft_probs, convert_
from wattless.train import EnergyTerm
from wattless.workloads import Split, Workload
from wattless.workloads.base import classification_evaluate

__all__ = ["Prepared", "prepare", "energy_loss", "step", "convert", "export"]

ATTR = "wattless_prepared"
REFERENCE_INPUTS = 8  # single inputs the dense model is priced on for E_ref, as `wattless optimize` prices it


class Prepared:
    """The live state of a prepared model: the technique handles, the energy term (None without an
    objective), the step counter and the last training forward's inputs and outputs."""

    def __init__(self, model: nn.Module, recipe: Recipe, context: ApplyContext, techniques: list[Technique],
                 energy: EnergyTerm | None, total_steps: int, refresh_every: int) -> None:
        self.recipe, self.context, self.techniques, self.energy = recipe, context, techniques, energy
        self.total_steps, self.refresh_every = total_steps, refresh_every
        self.step, self.converted = 0, False
        self.last_inputs: Any = None
        self.last_outputs: Any = None
        self._hook = model.register_forward_hook(_record, with_kwargs=True)

    def __deepcopy__(self, memo: dict) -> None:
        return None  # a copy of the model (export's deployed copy) is not the one being trained

    @property
    def energy_lambda(self) -> float | None:
        return self.energy.lam if self.energy is not None else None

    @property
    def soft_energy_j(self) -> float | None:
        """Expected joules per input of the last forward that energy_loss priced."""
        return self.energy.last_j if self.energy is not None else None

    def report(self, model: nn.Module) -> dict[str, Any]:
        return {t.name: t.report(model) for t in self.techniques}


def _record(module: nn.Module, args: tuple, kwargs: dict, output: Any) -> None:
    prepared = module.__dict__.get(ATTR)
    if prepared is not None and module.training and torch.is_grad_enabled():
        prepared.last_inputs = args[0] if args else kwargs
        prepared.last_outputs = output


def _handle(model: nn.Module, verb: str) -> Prepared:
    prepared = model.__dict__.get(ATTR)
    if prepared is None:
        raise TrainingError(f"wattless.{verb}(model): this model was not prepared; call wattless.prepare(model, "
                            "recipe, example_inputs) on it first")
    if prepared.converted and verb != "export":
        raise TrainingError(f"wattless.{verb}(model): the model is already converted (its deployed form); prepare "
                            "a fresh model to train again")
    return prepared


def _recipe(recipe: Recipe | str | Path | Mapping[str, Any], target: str | None) -> tuple[Recipe, str]:
    from wattless.optimize import _resolve_recipe  # the same loading and target override as `wattless optimize`

    if isinstance(recipe, Mapping):
        return _resolve_recipe(parse_recipe(dict(recipe)), target)
    if not isinstance(recipe, (Recipe, str, Path)):
        raise RecipeError(f"recipe: give a Recipe, a TOML path or a dict, not {type(recipe).__name__}")
    return _resolve_recipe(recipe, target)


def _singles(example_inputs: Any) -> list[Any]:
    """Up to REFERENCE_INPUTS single inputs (B=1) of an example batch; a non-tensor batch is one input."""
    if isinstance(example_inputs, torch.Tensor) and example_inputs.dim() >= 2:
        return [example_inputs[i : i + 1] for i in range(min(REFERENCE_INPUTS, len(example_inputs)))]
    return [example_inputs]


def _energy_term(recipe: Recipe, model: nn.Module, reference_j: float, sample: Any) -> EnergyTerm | None:
    obj = recipe.objective
    if not (obj.energy_weight or obj.energy_budget_uj is not None):
        return None
    budget = obj.energy_budget_uj * 1e-6 if obj.energy_budget_uj is not None else None
    return EnergyTerm(model, sample, resolve_target(recipe.objective_target), reference_j,
                      weight=obj.energy_weight, budget_j=budget, dual_lr=obj.dual_lr)


def prepare(model: nn.Module, recipe: Recipe | str | Path | Mapping[str, Any], example_inputs: Any, *,
            train_batches: Callable[[], Iterator[tuple[Any, Any]]] | None = None, target: str | None = None,
            total_steps: int | None = None, val: Any = None, refresh_every: int = 100) -> Prepared:
    """Apply every technique of ``recipe`` to ``model`` in place (fake-quant, masks, heads...) for training
    in the caller's own loop; returns the handle (also kept on the model for the other verbs).

    ``recipe``: a Recipe, a TOML path or a dict, validated as `wattless optimize` validates it (RecipeError)
    and tried on a copy of the model first. ``train_batches``: a callable yielding (inputs, targets), for the
    techniques that calibrate on data (else they use ``example_inputs``). ``target``: in place of the
    recipe's. ``total_steps``: the optimizer steps the caller will run, for schedules (gradual pruning);
    None or 0: the final masks from the first step. ``val``: (inputs, targets) for early-exit calibration.
    ``refresh_every``: steps between re-costing the energy term's units (as train() does each epoch)."""
    recipe, where = _recipe(recipe, target)
    if recipe.distill is not None:
        raise RecipeError(f"recipe {where}: key `distill`: wattless.prepare does not distil (your loop owns the "
                          "task loss); remove [distill] and add the teacher's loss to yours, or use `wattless optimize`")
    if ATTR in model.__dict__:
        raise TrainingError("wattless.prepare(model, ...): this model is already prepared; prepare a fresh copy")
    if refresh_every < 1:
        raise TrainingError(f"refresh_every must be >= 1 (steps between re-costing the energy term), got {refresh_every}")
    context = ApplyContext(example_input=example_inputs, train_batches=train_batches, total_steps=total_steps or 0,
                           val=val)
    check_recipe(recipe, model, context, where, labelled=True)
    samples = _singles(example_inputs)
    reference_j = (estimate(count_each(model, samples), resolve_target(recipe.objective_target)).energy_j
                   if recipe.objective.energy_weight or recipe.objective.energy_budget_uj is not None else math.nan)
    techniques = apply_recipe(model, recipe, context)
    energy = _energy_term(recipe, model, reference_j, samples[0])
    prepared = Prepared(model, recipe, context, techniques, energy, total_steps or 0, refresh_every)
    model.__dict__[ATTR] = prepared
    for tech in techniques:
        tech.on_step(0, prepared.total_steps)  # train() calls it before each step's forward
    return prepared


def energy_loss(model: nn.Module, *, targets: torch.Tensor | None = None) -> torch.Tensor:
    """What to add to the task loss after the forward and before backward: every technique's loss (exit
    heads need ``targets``) + lambda * E[x] / E_ref of the last training forward (0 without an objective)."""
    prepared = _handle(model, "energy_loss")
    if prepared.last_inputs is None:
        raise TrainingError("wattless.energy_loss(model): no training forward since the last step; call it after "
                            "model(inputs) in train mode with gradients on")
    inputs, outputs = prepared.last_inputs, prepared.last_outputs
    total = torch.zeros(())
    extras = {"logits": outputs, "targets": targets}
    for tech in prepared.techniques:
        extra = tech.loss(model, inputs, extras)
        if extra is not None:
            total = total + extra
    if prepared.energy is not None:
        total = total + prepared.energy(_batch_size(inputs, outputs))
    prepared.last_inputs = prepared.last_outputs = None  # read once, as the energy term reads its densities
    return total


def _batch_size(inputs: Any, outputs: Any) -> int:
    if isinstance(inputs, Mapping):
        inputs = next(iter(inputs.values()))
    for value in (inputs, outputs):
        if isinstance(value, torch.Tensor) and value.dim() >= 1:
            return len(value)
    raise TrainingError("wattless.energy_loss(model): cannot tell the batch size of the last forward (its first "
                        f"input is {type(inputs).__name__}); give the model a tensor batch")


def step(model: nn.Module) -> int:
    """After optimizer.step(): the energy term's dual step (budget recipes), the step counter, the energy
    term's re-costing every ``refresh_every`` steps, then each technique's on_step for the next step's
    forward. Returns the number of steps taken."""
    prepared = _handle(model, "step")
    if prepared.energy is not None:
        prepared.energy.dual_step()
    prepared.step += 1
    if prepared.energy is not None and prepared.step % prepared.refresh_every == 0:
        prepared.energy.refresh()
    for tech in prepared.techniques:
        tech.on_step(prepared.step, prepared.total_steps)
    return prepared.step


def convert(model: nn.Module) -> nn.Module:
    """After training: finish every technique (calibrated thresholds, final masks), then each technique's
    convert step (masks baked in, quantizer steps frozen): the deployed form, in eval mode, in place."""
    prepared = _handle(model, "convert")
    for tech in prepared.techniques:
        tech.finish(model, prepared.context)
    clear_soft_probs(model)
    prepared.last_inputs = prepared.last_outputs = None
    prepared._hook.remove()
    model.eval()
    convert_(model, prepared.recipe.techniques())
    prepared.converted = True
    return model


def export(model: nn.Module, example_inputs: torch.Tensor, path: str | Path, *, targets: torch.Tensor | None = None,
           **options: Any):
    """Export ``model`` to the ONNX file ``path`` (see wattless.export.export_model for ``options``), its
    parity checked on ``example_inputs``: ONNX Runtime's outputs against PyTorch's, and the classes they give
    (against ``targets`` where given, else against the PyTorch model's own classes). Returns the ExportReport."""
    from wattless.export import export_model

    return export_model(model, _example_workload(model, example_inputs, targets), path, **options)


def _example_workload(model: nn.Module, inputs: torch.Tensor, targets: torch.Tensor | None) -> Workload:
    """An in-memory workload whose every split is ``inputs``: what export_model's parity check reads."""
    from wattless.export.classifier import logits_of
    from wattless.export.write import _deployed

    if not isinstance(inputs, torch.Tensor):
        raise ExportError(f"wattless.export: example_inputs must be one tensor batch, not {type(inputs).__name__}")
    from wattless.export.parity import SAME_CLASS

    metric = "accuracy" if targets is not None else SAME_CLASS
    if targets is None:  # the classes the deployed PyTorch model gives: the parity's metric is agreement with them
        with torch.no_grad():
            targets = logits_of(_deployed(model)(inputs)).argmax(-1)
    split = Split(inputs, targets)
    accuracy = classification_evaluate(256)
    return Workload(name=type(model).__name__, metric_name=metric, build_model=lambda: model,
                    train=split, val=split, test=split, example_input=lambda n: inputs[:n],
                    evaluate=lambda m, s: {metric: accuracy(m, s)["accuracy"]}, needs_training=False,
                    default_epochs=0, batch_size=len(inputs))
