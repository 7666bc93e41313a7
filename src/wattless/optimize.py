"""`wattless.optimize`: train the baseline if none is cached, apply a recipe, train under the energy
objective, and write the model, the resolved recipe and metrics.json into a run directory."""

from __future__ import annotations

import copy
import hashlib
import json
import os
import re
import tempfile
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import torch
from torch import nn

from wattless.files import atomic_write, check_output_dir, json_safe
from wattless.fingerprint import baseline_key
from wattless.energy import Target, builtin_targets, count_each, estimate, resolve_target
from wattless.energy.decode import is_decoder_lm as is_decoder
from wattless.errors import DamagedFileError, TrainingError, WorkloadError
from wattless.recipe import Recipe, apply_recipe, check_recipe, load_recipe, save_recipe
from wattless.techniques.base import ApplyContext
from wattless.train import EnergyTerm, TrainSettings, load_state, save_state, steps_per_epoch, train
from wattless.workloads import Workload, get_workload
from wattless.workloads.user import SPEC_FORMS

__all__ = ["optimize", "baseline_model", "load_run", "read_run_marker", "eval_samples", "energy_by_target", "Priced", "cache_dir",
           "apply_context", "train_batches", "RunMetrics"]


def cache_dir() -> Path:
    """Where trained baselines are cached: $WATTLESS_CACHE, else ~/.cache/wattless."""
    return Path(os.environ.get("WATTLESS_CACHE", Path.home() / ".cache" / "wattless"))


def _settings(workload: Workload, recipe: Recipe | None = None) -> TrainSettings:
    t = recipe.train if recipe is not None else None
    return TrainSettings(
        epochs=t.epochs if t and t.epochs is not None else workload.default_epochs,
        lr=t.lr if t and t.lr else workload.default_lr,
        batch_size=t.batch_size if t and t.batch_size else workload.batch_size,
        weight_decay=t.weight_decay if t else 0.0, seed=t.seed if t else 0,
        checkpoint_every=t.checkpoint_every if t else 1,
    )


def baseline_model(workload: Workload, *, progress: bool = True, cache: Path | None = None) -> tuple[nn.Module, dict]:
    """The trained dense fp32 baseline and its metrics on the test split, cached across runs under a key of
    everything it depends on (`wattless.fingerprint.baseline_key`: the data, the model's code and initial
    weights, the training settings). A workload whose data has no reliable digest is trained every time."""
    model = workload.build_model()
    if not workload.needs_training:
        return model, workload.evaluate(model, workload.test)
    if workload.train.targets is None:
        raise WorkloadError(f"workload {workload.name!r} has no labels, so its baseline cannot be trained: give "
                            "a pretrained build_model and needs_training=False")
    settings = _settings(workload)
    # the workload's seed, not the training one: it chose the split and the initial weights
    depends = {**settings.__dict__, "threads": workload.train_threads, "workload_seed": workload.seed}
    key = baseline_key(workload, model, depends)
    if key is None:
        warnings.warn(f"the baseline of workload {workload.name!r} is not cached: its splits are not tensors or "
                      "lists of strings, so no digest of its data is reliable; it is trained on every run",
                      RuntimeWarning, stacklevel=2)
        return _train_baseline(model, workload, settings, progress)
    digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:16]
    name = re.sub(r"[^A-Za-z0-9._-]+", "_", workload.name)[:64]
    stem = f"{name}-e{settings.epochs}-s{workload.seed}-{digest}"
    folder = (cache or cache_dir()) / "baselines"
    weights, info = folder / f"{stem}.safetensors", folder / f"{stem}.json"
    if weights.exists() and info.exists():
        try:
            held = json.loads(info.read_text())
            if held.get("key") == key:
                load_state(model, weights)
                return model, held["metrics"]
        except (DamagedFileError, RuntimeError, OSError, ValueError, KeyError, AttributeError):
            pass
        model = workload.build_model()  # a stale or damaged cache entry is retrained, not trusted
    model, metrics = _train_baseline(model, workload, settings, progress)
    folder.mkdir(parents=True, exist_ok=True)
    save_state(model, weights)
    atomic_write(info, json.dumps({"metrics": metrics, "settings": settings.__dict__, "key": key}))
    return model, metrics


def _train_baseline(model: nn.Module, workload: Workload, settings: TrainSettings,
                    progress: bool) -> tuple[nn.Module, dict]:
    train(model, workload, settings, progress=progress)
    return model, workload.evaluate(model, workload.test)


def eval_samples(workload: Workload, n: int) -> list[Any]:
    """The first n test inputs, each prepared on its own (no padding shared between sentences)."""
    n = min(n, len(workload.test))
    return [workload.prepare_inputs(workload.test.take(slice(i, i + 1)).inputs) for i in range(n)]


class Priced(NamedTuple):
    """A model priced on every built-in target: ``estimates`` {target: {energy_j, latency_s, p50, p95}},
    ``macs`` the mean MACs left after structured pruning (all-zero rows and columns removed) and
    ``dense_macs`` the mean MACs of the dense layer shapes."""

    estimates: dict[str, Any]
    macs: float
    dense_macs: float


def energy_by_target(model: nn.Module, samples: list[Any]) -> Priced:
    """Estimated joules per inference on every built-in target, each input on its hard path."""
    counts = count_each(model, samples)
    out = {}
    for name, target in builtin_targets().items():
        est = estimate(counts, target)
        out[name] = {"energy_j": est.energy_j, "latency_s": est.latency_s, "p50": est.energy_j_p50,
                     "p95": est.energy_j_p95}
    return Priced(out, float(np.mean(counts.total("kept_macs"))), float(np.mean(counts.total("macs"))))


def train_batches(workload: Workload) -> Callable[[], Iterator[tuple[Any, Any]]]:
    """The batches techniques calibrate and shape themselves on: the first 512 training inputs, 64 at a time."""
    def batches():
        for i in range(0, min(len(workload.train), 512), 64):
            part = workload.train.take(slice(i, i + 64))
            yield workload.prepare_inputs(part.inputs), part.targets

    return batches


def apply_context(workload: Workload, teacher: nn.Module | None = None, steps: int = 0) -> ApplyContext:
    """What techniques see when a recipe is applied to ``workload``'s model: example and training inputs, the
    validation split, the teacher and the number of training steps."""
    val = workload.val
    extras = {"val": (workload.prepare_inputs(val.inputs), val.targets), "evaluate": workload.evaluate,
              "val_split": val}
    return ApplyContext(example_input=workload.example_input(8), train_batches=train_batches(workload),
                        teacher=teacher, total_steps=steps, extras=extras)


def read_run_marker(out: Path) -> dict[str, Any]:
    marker = out / "run.json"
    try:
        held = json.loads(marker.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise DamagedFileError(f"{marker} is damaged ({type(exc).__name__}: {exc}), so {out} is not a readable run "
                               "directory; train into a new --out (or remove this one)") from None
    if not isinstance(held, dict) or not isinstance(held.get("identity"), dict):
        raise DamagedFileError(f"{marker} is not a wattless run marker (no identity), so {out} is not a readable run "
                               "directory; train into a new --out (or remove this one)")
    return held


def _finished(out: Path, identity: dict[str, Any]) -> dict[str, Any] | None:
    """The metrics of this very run if ``out`` holds it finished (read only), else None."""
    if not (out / "run.json").is_file() or read_run_marker(out)["identity"] != identity:
        return None
    if not all((out / f).is_file() for f in ("metrics.json", "model.safetensors", "recipe.toml")):
        return None
    try:
        metrics = json.loads((out / "metrics.json").read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError):
        return None  # written again from the final checkpoint
    return metrics if isinstance(metrics, dict) else None


def _claim_run_dir(out: Path, identity: dict[str, Any], workload_spec: str | None) -> None:
    """A run directory holds one run: resuming the same one is fine, another one is refused untouched.
    run.json keeps the spec the workload was built from (None: a Workload object with none), for `load_run`."""
    marker = out / "run.json"
    if marker.exists():
        held = read_run_marker(out)
        if held.get("identity") != identity:
            raise TrainingError(
                f"{out} holds another run (workload {held.get('identity', {}).get('workload')!r}, recipe "
                f"{held.get('identity', {}).get('recipe_name')!r}); choose another --out or remove it"
            )
        return
    if out.exists() and any(out.iterdir()):
        raise TrainingError(f"{out} exists and is not a wattless run directory; choose an empty or new --out")
    out.mkdir(parents=True, exist_ok=True)
    atomic_write(marker, json.dumps({"identity": identity, "workload_spec": workload_spec}))


def _ptq_int8(baseline: nn.Module, workload: Workload, samples: list[Any], fp32_metric: float, target: str,
              within: float = 0.01) -> dict[str, Any]:
    """The post-training quantization a user would reach for (`wattless.baselines`, as search and bench run
    it): the lowest-energy PTQ baseline on ``target`` within ``within`` of fp32's metric, else the most accurate one
    (``within_tolerance`` false), with every PTQ baseline's metric and joules beside it."""
    from wattless import baselines as bl

    with tempfile.TemporaryDirectory(prefix="wattless-ptq-") as folder:
        rows = bl.run_baselines(workload, baseline, ("fp32", *bl.PTQ), folder, samples)
    choice = bl.choose_ptq(rows, target, fp32_metric, within)
    name = choice["best_ptq"] or choice.get("most_accurate_ptq")
    if name is None:
        return {"accuracy": None, "energy_j": {}, "name": None, "note": choice["best_ptq_note"]}
    row = rows[name]
    return {"accuracy": row["metric"], "metrics": row["metrics"], "energy_j": row["energy_j"], "name": name,
            "note": row["note"], "within_tolerance": choice["best_ptq_within"], "within": within,
            "baselines": {n: {"metric": r.get("metric"), "energy_j": r.get("energy_j"), "error": r.get("error")}
                          for n, r in rows.items() if n != "fp32"}}


def optimize(
    workload: str | Workload,
    recipe: str | Path | Recipe,
    out: str | Path,
    *,
    target: str | None = None,
    progress: bool = True,
    energy_inputs: int = 64,
    cache: Path | None = None,
    baselines: bool = True,
    on_epoch: Callable[[int, dict[str, float], nn.Module], None] | None = None,
) -> dict[str, Any]:
    """Apply ``recipe`` to ``workload``'s baseline, train, and write model.safetensors, recipe.toml and
    metrics.json into ``out``. Returns the metrics. An interrupted run resumes from its checkpoint.

    ``on_epoch(epoch, record, model)`` is called after each training epoch with the model being trained
    (a search evaluates it there and may raise to stop a hopeless run; its checkpoint is kept)."""
    recipe, where = _resolve_recipe(recipe, target)
    wl = get_workload(workload, seed=recipe.train.seed) if isinstance(workload, str) else workload
    objective_target = resolve_target(recipe.objective_target)
    out = Path(out)
    identity = _check_run(out, wl, recipe, energy_inputs)
    done = _finished(out, identity)
    if done is not None:  # a finished run is left as it is
        return {**done, "already_done": True}
    baseline, base_metrics = baseline_model(wl, progress=progress, cache=cache)
    teacher = _teacher(recipe, baseline)
    settings = _settings(wl, recipe)
    context = apply_context(wl, teacher, settings.epochs * steps_per_epoch(wl.train, settings.batch_size))
    check_recipe(recipe, baseline, context, where, labelled=wl.train.labelled, trains=settings.epochs > 0)
    _claim_run_dir(out, identity, wl.spec)
    decoder = is_decoder(baseline)  # priced per token below; one whole-window count here, no classifier PTQ
    samples = eval_samples(wl, 1 if decoder else energy_inputs)
    baselines = baselines and not decoder
    student, techniques, energy, result = _train_student(
        wl, recipe, baseline, teacher, settings, context, samples, objective_target, out, progress,
        {**identity, "seed": recipe.train.seed}, on_epoch)
    target = objective_target.name
    metrics = wl.evaluate(student, wl.test)
    hard, macs, dense_macs = energy_by_target(student, samples)
    base_energy, base_macs, _ = energy_by_target(baseline, samples)
    save_state(student, out / "model.safetensors")
    save_recipe(recipe, out / "recipe.toml")
    report = RunMetrics(
        workload=wl.name, recipe=recipe.name, target=target, metric_name=wl.metric_name, metrics=metrics,
        baseline_metrics=base_metrics, estimates=hard, baseline_estimates=base_energy, macs=macs,
        dense_macs=dense_macs, baseline_macs=base_macs,
        objective=_objective_record(recipe, result, hard[target]["energy_j"], target) if energy is not None else None,
        techniques={t.name: t.report(student) for t in techniques}, training=_training_record(result),
        ptq_int8=_ptq_int8(baseline, wl, samples, base_metrics[wl.metric_name], target) if baselines else None,
    ).to_json()
    report.update(_hardware_sections(student, wl, recipe, samples, out, progress, cache, hard))
    if decoder:
        report["decode"] = decode_energy(student, baseline, wl)
    report = json_safe(report)  # a figure that could not be computed is null, never a bare NaN in the JSON
    atomic_write(out / "metrics.json", json.dumps(report, indent=2, allow_nan=False))
    return report


def _hardware_sections(student: nn.Module, wl: Workload, recipe: Recipe, samples: list[Any], out: Path,
                       progress: bool, cache: Path | None, hard: dict[str, Any]) -> dict[str, Any]:
    """metrics.json's ``analog`` (accuracy over time on programmed chips, and the same recipe trained
    without hardware-aware training when asked) and ``spiking`` (accuracy and joules over T) sections."""
    from wattless import hardware

    sections: dict[str, Any] = {}
    if recipe.analog is not None:
        section = hardware.analog_section(student, wl, recipe.analog)
        section["energy_j"] = {recipe.analog.target: hard[recipe.analog.target]["energy_j"]}
        section["energy_kind"] = "estimated"
        if recipe.analog.compare_without_hwa and recipe.analog.hwa:
            twin = recipe.model_copy(update={
                "name": f"{recipe.name}-without-hwa",
                "analog": recipe.analog.model_copy(update={"hwa": False, "compare_without_hwa": False})})
            twin_metrics = optimize(wl, twin, out / "without_hwa", progress=progress, energy_inputs=len(samples),
                                    cache=cache, baselines=False)
            section["accuracy_without_hwa"] = twin_metrics["analog"]["accuracy"]
            section["without_hwa_digital_accuracy"] = twin_metrics["analog"]["digital_accuracy"]
            section["without_hwa_run"] = str(out / "without_hwa")
        sections["analog"] = section
    if recipe.spiking is not None:
        sections["spiking"] = hardware.spiking_section(student, wl, recipe.spiking, samples)
    return sections


def decode_energy(model: nn.Module, baseline: nn.Module, wl: Workload, prompt_tokens: int = 128,
                  new_tokens: int = 64) -> dict[str, Any]:
    """A decoder's estimated joules per generated token (batch 1) on every built-in target, beside the
    baseline's, and their ratio: what a token costs, not a whole window."""
    from wattless.energy.decode import profile_decode

    ids = wl.test.inputs[:1, :prompt_tokens]
    got = {}
    for name, m in (("energy_j_per_token", model), ("baseline_energy_j_per_token", baseline)):
        prof = profile_decode(m, {"input_ids": ids}, prompt_tokens=prompt_tokens, new_tokens=new_tokens)
        got[name] = {t: prof.energy_per_token_j(t) for t in builtin_targets()}
    ratio = {t: got["baseline_energy_j_per_token"][t] / j for t, j in got["energy_j_per_token"].items() if j}
    return {"energy_kind": "estimated", "prompt_tokens": prompt_tokens, "new_tokens": new_tokens, "batch": 1,
            **got, "energy_ratio": ratio}


def _check_run(out: Path, wl: Workload, recipe: Recipe, energy_inputs: int) -> dict[str, str]:
    """The run's identity, once its folder and settings are known to be usable (nothing is written yet)."""
    check_output_dir(out, "run directory", TrainingError)
    if energy_inputs < 1:
        raise TrainingError(f"energy_inputs must be >= 1 (test inputs each model's energy is counted on), got {energy_inputs}")
    return {"workload": wl.name, "recipe_name": recipe.name,
            "recipe_sha": hashlib.sha256(json.dumps(recipe.to_dict(), sort_keys=True).encode()).hexdigest()}


def _train_student(wl, recipe, baseline, teacher, settings, context, samples, objective_target, out, progress,
                   identity, on_epoch) -> tuple[nn.Module, list[Any], "EnergyTerm | None", Any]:
    """A copy of the baseline with the recipe's techniques, trained, finished and in eval mode."""
    torch.manual_seed(settings.seed)
    student = copy.deepcopy(baseline)
    if not recipe.train.dropout:
        _no_dropout(student)
    techniques = apply_recipe(student, recipe, context)
    energy = _energy_term(recipe, student, baseline, samples, objective_target)
    result = train(student, wl, settings, techniques=techniques, teacher=teacher, distill=recipe.distill,
                   energy=energy, run_dir=out, progress=progress, identity=identity,
                   on_epoch=None if on_epoch is None else lambda epoch, record: on_epoch(epoch, record, student))
    for tech in techniques:
        tech.finish(student, context)
    return student.eval(), techniques, energy, result


def _resolve_recipe(recipe: str | Path | Recipe, target: str | None) -> tuple[Recipe, str]:
    """The recipe (loaded if a path; ``target`` in place of its own) and where it came from, for messages."""
    if isinstance(recipe, (str, Path)):
        where = str(recipe)
        recipe = load_recipe(recipe)
    else:
        where = "(inline)"
    if target is not None:
        resolve_target(target)
        recipe = recipe.model_copy(update={"target": target})
    return recipe, where


def _energy_term(recipe: Recipe, student: nn.Module, baseline: nn.Module, samples: list[Any],
                 target: Target) -> EnergyTerm | None:
    """lambda * E[x] / E_baseline, or the budget, on the objective's target; None without either."""
    obj = recipe.objective
    if not (obj.energy_weight or obj.energy_budget_uj is not None):
        return None
    reference = estimate(count_each(baseline, samples[:8]), target).energy_j
    return EnergyTerm(student, samples[0], target, reference, weight=obj.energy_weight,
                      budget_j=obj.energy_budget_uj * 1e-6 if obj.energy_budget_uj else None, dual_lr=obj.dual_lr)


def _no_dropout(model: nn.Module) -> None:
    for m in model.modules():
        if isinstance(m, nn.Dropout):
            m.p = 0.0


def _teacher(recipe: Recipe, baseline: nn.Module) -> nn.Module | None:
    if recipe.distill is None:
        return None
    if recipe.distill.teacher == "baseline":
        teacher = copy.deepcopy(baseline)
    else:
        from wattless.spec import load_model

        teacher, _ = load_model(recipe.distill.teacher)
    for p in teacher.parameters():
        p.requires_grad_(False)
    return teacher.eval()


@dataclass(frozen=True)
class RunMetrics:
    """What one run leaves in metrics.json. ``estimates`` and ``baseline_estimates``: per built-in target,
    {energy_j, latency_s, p50, p95} (estimated, each input on its hard path)."""

    workload: str
    recipe: str
    target: str
    metric_name: str
    metrics: dict[str, float]
    baseline_metrics: dict[str, float]
    estimates: dict[str, dict[str, float]]
    baseline_estimates: dict[str, dict[str, float]]
    macs: float  # left after structured pruning, as the energy core counts them
    dense_macs: float  # of the dense layer shapes, before pruning removed rows and columns
    baseline_macs: float
    objective: dict[str, Any] | None
    techniques: dict[str, Any]
    training: dict[str, Any]
    ptq_int8: dict[str, Any] | None = None  # written only when the run priced the baselines

    def to_json(self) -> dict[str, Any]:
        hard, base, name = self.estimates, self.baseline_estimates, self.metric_name
        out = {
            "workload": self.workload, "recipe": self.recipe, "target": self.target, "metric_name": name,
            "accuracy": self.metrics[name], "metrics": self.metrics,
            "baseline_accuracy": self.baseline_metrics[name], "baseline_metrics": self.baseline_metrics,
            "energy_kind": "estimated",
            "energy_j": {k: v["energy_j"] for k, v in hard.items()},
            "baseline_energy_j": {k: v["energy_j"] for k, v in base.items()},
            "energy_ratio": {k: base[k]["energy_j"] / v["energy_j"] for k, v in hard.items() if v["energy_j"]},
            "energy_distribution_j": {k: {"mean": v["energy_j"], "p50": v["p50"], "p95": v["p95"]}
                                      for k, v in hard.items()},
            "latency_s": {k: v["latency_s"] for k, v in hard.items()},
            "macs": self.macs, "dense_macs": self.dense_macs, "baseline_macs": self.baseline_macs,
            "objective": self.objective, "techniques": self.techniques, "training": self.training,
        }
        if self.ptq_int8 is not None:
            out["ptq_int8"] = self.ptq_int8
        return out


def _objective_record(recipe: Recipe, result: Any, hard_j: float, target: str) -> dict[str, Any]:
    """The soft expected energy training saw beside the hard energy of the test inputs' paths."""
    soft = result.soft_energy_j
    return {
        "target": target, "soft_energy_j": soft, "hard_energy_j": hard_j,
        "soft_hard_gap": (hard_j - soft) / soft if soft else None,
        "energy_lambda": result.energy_lambda,
        "energy_budget_uj": recipe.objective.energy_budget_uj,
        "note": "soft: differentiable expected energy averaged over the last training epoch; hard: each "
                "eval input's executed path counted and priced",
    }


def _training_record(result: Any) -> dict[str, Any]:
    return {"epochs_run": result.epochs_run, "steps": result.steps, "final_loss": result.final_loss,
            "resumed_from_epoch": result.resumed_from_epoch, "history": result.history}


def load_run(run_dir: str | Path, workload: str | Workload | None = None) -> tuple[nn.Module, Recipe, Workload]:
    """Rebuild an optimized model from its run directory: baseline architecture + recipe + saved tensors. The
    workload is the one run.json names (its spec) unless ``workload`` is given."""
    run_dir = Path(run_dir)
    recipe = load_recipe(run_dir / "recipe.toml")
    wl = _run_workload(run_dir, recipe) if workload is None else workload
    wl = get_workload(wl, seed=recipe.train.seed) if isinstance(wl, str) else wl
    model = wl.build_model()
    context = apply_context(wl)
    apply_recipe(model, recipe, context)
    load_state(model, run_dir / "model.safetensors")
    return model.eval(), recipe, wl


def _run_workload(run_dir: Path, recipe: Recipe) -> Workload:
    """The workload run.json's spec rebuilds (its name, for runs made before the spec was kept)."""
    held = read_run_marker(run_dir)
    spec = held.get("workload_spec") or held["identity"].get("workload")
    if not isinstance(spec, str):
        raise DamagedFileError(f"{run_dir / 'run.json'} names no workload; pass the run's workload "
                               f"(--workload SPEC, with SPEC {SPEC_FORMS})")
    try:
        return get_workload(spec, seed=recipe.train.seed)
    except WorkloadError as exc:
        raise WorkloadError(f"the run in {run_dir} cannot rebuild its workload from {spec!r} ({exc}); pass the "
                            f"run's workload as --workload SPEC, with SPEC {SPEC_FORMS}") from exc
