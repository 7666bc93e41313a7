"""One trial: the objective (train the drawn recipe, record its point), the watcher of its epochs (validation
curve, deadline, pruning) and the energy attribution of the trained model (per unit, per technique)."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import optuna
from optuna.trial import TrialState
from torch import nn

from wattless.energy import Counts, Target, count_each, estimate, set_precision
from wattless.errors import WattlessError
from wattless.optimize import baseline_model, eval_samples, load_run, optimize
from wattless.recipe import parse_recipe
from wattless.search.constraints import Constraints
from wattless.search.pruners import TrialPruner
from wattless.search.resume import HOST, claim_trial, requeue
from wattless.search.results import SearchPoint, breakdown
from wattless.search.seeds import refuse_duplicate_plan
from wattless.search.space import RecipeSpace
from wattless.techniques import full_path
from wattless.techniques.moe import MoEMLP
from wattless.workloads import Workload

if TYPE_CHECKING:
    from wattless.search.view import View

__all__ = ["Deadline", "TrialContext", "trial_context", "Objective"]


class Deadline(Exception):
    """The search's time is up: the running trial stops at an epoch boundary and is enqueued to resume."""


@dataclass
class TrialContext:
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


def trial_context(wl: Workload, target: Target, out: Path, space: RecipeSpace, pruner: TrialPruner,
                  info: dict[str, Any], energy_inputs: int, cache: Path | None,
                  deadline: float | None) -> TrialContext:
    """What every trial of this worker shares: the study's settings (``info``) and the fp32 baseline."""
    baseline, _ = baseline_model(wl, progress=False, cache=cache)
    reference = wl.evaluate(baseline, wl.val)[wl.metric_name]
    return TrialContext(wl, target, out, space, pruner, Constraints(**info["constraints"]), baseline, reference,
                        energy_inputs, cache, deadline, info.get("plan", []), info.get("plan_of"))


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

    def __init__(self, ctx: TrialContext) -> None:
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
        size = float(sum(r["weight_bytes"] for r in full.mean_records()))
        return breakdown(actual, self.target), size, self._contributions(full, fp32, final)

    def _contributions(self, full: Counts, fp32: Counts, final: float) -> dict[str, Any]:
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
        return {"target": self.target.name, "baseline_j": base, "final_j": final, "steps": steps,
                "inputs": len(self.few)}


class _Watcher:
    """optimize's on_epoch: the validation metric per epoch (recorded in the trial), the deadline, pruning."""

    def __init__(self, trial: optuna.Trial, ctx: TrialContext, epochs: int, view: "View") -> None:
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
            raise Deadline()
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


class Objective:
    """Optuna's objective: (metric on the test split, joules per inference on the search target)."""

    def __init__(self, ctx: TrialContext, view: "View") -> None:
        self.ctx, self.view = ctx, view
        self.number: int | None = None  # the trial this worker ran last

    def __call__(self, trial: optuna.Trial) -> tuple[float, float]:
        self.number = trial.number
        run_dir = claim_trial(trial, self.ctx.out)
        refuse_duplicate_plan(trial)
        try:
            return self._run(trial, run_dir)
        except (KeyboardInterrupt, Deadline) as exc:
            trial.set_user_attr("interrupted", "deadline" if isinstance(exc, Deadline) else "interrupted")
            requeue(trial.study, trial.number, dict(trial.params), trial.user_attrs)
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
        point = SearchPoint(
            trial=trial.number, metric=metrics["accuracy"], metrics=metrics["metrics"],
            val_metric=watcher.curve[-1]["val_metric"] if watcher.curve else None,
            energy_j=metrics["energy_j"], latency_s=metrics["latency_s"], size_bytes=size,
            macs=metrics["macs"], recipe=recipe.to_dict(), params=dict(trial.params),
            techniques=metrics["techniques"], breakdown=units, contributions=contributions,
            seed=trial.user_attrs.get("seed"), run_dir=str(run_dir), host=HOST,
            duration_s=time.time() - started, epochs=epochs,
        ).to_json()
        trial.set_user_attr("point", point)
        for key, value in ctx.constraints.values(point, ctx.target.name).items():
            trial.set_constraint(key, value)
        self.view.trial_done()
        return point["metric"], point["energy_j"][ctx.target.name]
