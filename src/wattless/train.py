"""The one training loop: task (or distillation) loss + technique losses + lambda * E[x] / E_baseline,
or a hard energy budget kept by a Lagrange multiplier updated by dual ascent.

Checkpoints (safetensors for tensors, JSON for the rest) are written atomically every few epochs; an
interrupted run resumes from the last one; a non-finite loss stops the run and keeps the last good one.
"""

from __future__ import annotations

import copy
import json
import math
import os
import shutil
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from rich.progress import BarColumn, MofNCompleteColumn, TextColumn, TimeRemainingColumn
from safetensors.torch import load_file, save_file
from torch import nn

from wattless.progress import progress_bar
from wattless.energy.soft import ExpectedEnergy, unit_costs
from wattless.energy.target import Target
from wattless.errors import DamagedFileError, TrainingError
from wattless.techniques.base import ApplyContext, Technique, apply_, clear_soft_probs
from wattless.techniques.distill import DistillConfig, Distillation
from wattless.workloads import Split, Workload
from wattless.workloads.loaders import Batches, LoaderBatch

__all__ = ["TrainSettings", "EnergyTerm", "train", "model_output", "save_state", "load_state", "torch_threads",
           "steps_per_epoch"]


@dataclass(frozen=True)
class TrainSettings:
    epochs: int
    lr: float
    batch_size: int
    weight_decay: float = 0.0
    seed: int = 0
    checkpoint_every: int = 1


# --- what the model outputs, per kind of workload ------------------------------------------------------

def _pool(output: Any, inputs: Any) -> torch.Tensor:
    """A sentence encoder's output -> (B, D) mean-pooled, normalised embeddings."""
    hidden = output.last_hidden_state if hasattr(output, "last_hidden_state") else output[0]
    mask = inputs["attention_mask"].unsqueeze(-1).to(hidden.dtype)  # (B, T, 1)
    pooled = (hidden * mask).sum(1) / mask.sum(1).clamp_min(1e-9)
    return F.normalize(pooled, dim=-1)


def model_output(model: nn.Module, inputs: Any, labelled: bool) -> torch.Tensor:
    """Logits (B, classes) for a classifier; embeddings (B, D) for an encoder (an unlabelled workload)."""
    if labelled:
        return model(**inputs) if isinstance(inputs, dict) else model(inputs)
    return _pool(model(**inputs), inputs)


# --- the energy term ---------------------------------------------------------------------------------

class EnergyTerm:
    """lambda * mean E[x] / E_ref: a fixed lambda, or a multiplier that keeps mean E[x] under a budget."""

    def __init__(self, model: nn.Module, example: Any, target: Target, reference_j: float, *,
                 weight: float = 0.0, budget_j: float | None = None, dual_lr: float = 0.05) -> None:
        self.model, self.example, self.target = model, example, target
        self.reference_j, self.budget_j, self.dual_lr = reference_j, budget_j, dual_lr
        self.lam = weight
        self.expected = ExpectedEnergy(model, unit_costs(model, example, target))
        self.last_j = float("nan")

    def refresh(self) -> None:
        """Re-cost the units (masks, bits and structure change during training)."""
        self.expected.update_costs(unit_costs(self.model, self.example, self.target))

    def __call__(self, batch_size: int) -> torch.Tensor:
        energy = self.expected(batch_size)  # (B,) joules
        self.last_j = float(energy.mean().detach())
        return self.lam * energy.mean() / self.reference_j

    def dual_step(self) -> None:
        if self.budget_j is not None and math.isfinite(self.last_j):
            self.lam = max(0.0, self.lam + self.dual_lr * (self.last_j / self.budget_j - 1.0))


@contextmanager
def torch_threads(n: int | None) -> Iterator[None]:
    """torch's intra-op thread count set to n inside the block (None: left as it is)."""
    before = torch.get_num_threads()
    if n is not None:
        torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


# --- checkpoints ----------------------------------------------------------------------------------------

def save_state(model: nn.Module, path: Path) -> None:
    """Model tensors as safetensors (shared storage copied, so tied weights save too), written atomically."""
    path = Path(path)
    tensors = {k: v.detach().contiguous().clone() for k, v in model.state_dict().items()}
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        save_file(tensors, str(tmp))
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def read_tensors(path: Path) -> dict[str, torch.Tensor]:
    """The tensors of a safetensors file; DamagedFileError if it is missing, empty, truncated or not one."""
    try:
        return load_file(str(path))
    except FileNotFoundError:
        raise DamagedFileError(f"{path} is missing") from None
    except Exception as exc:  # safetensors raises its own SafetensorError for every kind of damage
        size = Path(path).stat().st_size if Path(path).is_file() else 0
        kind = "empty" if size == 0 else "truncated, damaged or not a safetensors file (a torch .pt is refused)"
        raise DamagedFileError(f"{path} is {kind}: {exc}") from None


def load_state(model: nn.Module, path: Path) -> None:
    """Load ``path``'s tensors into ``model``; DamagedFileError if the file is damaged or of another model."""
    tensors = read_tensors(path)
    try:
        model.load_state_dict(tensors, strict=True)
    except RuntimeError as exc:
        first = str(exc).strip().splitlines()[0].rstrip(":.")
        raise DamagedFileError(f"{path} holds the tensors of another architecture ({first}; "
                               f"{_mismatch(model, tensors)})") from None


def _mismatch(model: nn.Module, tensors: dict[str, torch.Tensor]) -> str:
    own = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    missing, extra = sorted(set(own) - set(tensors)), sorted(set(tensors) - set(own))
    shaped = [k for k in own if k in tensors and tuple(tensors[k].shape) != own[k]]
    parts = [f"{len(missing)} missing", f"{len(extra)} unexpected", f"{len(shaped)} of another shape"]
    return ", ".join(parts) + (f", e.g. {(missing + extra + shaped)[0]}" if missing or extra or shaped else "")


def _optimizer_tensors(opt: torch.optim.Optimizer) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    state = opt.state_dict()
    tensors, scalars = {}, {}
    for idx, entry in state["state"].items():
        for key, value in entry.items():
            if isinstance(value, torch.Tensor):
                tensors[f"{idx}.{key}"] = value.contiguous()
            else:
                scalars[f"{idx}.{key}"] = value
    return tensors, {"param_groups": state["param_groups"], "scalars": scalars}


def _load_optimizer(opt: torch.optim.Optimizer, tensors: dict[str, torch.Tensor], meta: dict[str, Any]) -> None:
    state: dict[int, dict[str, Any]] = {}
    for name, value in [*tensors.items(), *meta["scalars"].items()]:
        idx, key = name.split(".", 1)
        state.setdefault(int(idx), {})[key] = value
    opt.load_state_dict({"state": state, "param_groups": meta["param_groups"]})


def _write_checkpoint(ckpt: Path, model: nn.Module, opt: torch.optim.Optimizer, info: dict[str, Any]) -> None:
    tmp = ckpt.with_name(ckpt.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    save_state(model, tmp / "model.safetensors")
    tensors, meta = _optimizer_tensors(opt)
    save_file(tensors, str(tmp / "optimizer.safetensors"))
    (tmp / "state.json").write_text(json.dumps({**info, "optimizer": meta}))
    old = ckpt.with_name(ckpt.name + ".old")
    shutil.rmtree(old, ignore_errors=True)
    if ckpt.exists():
        os.replace(ckpt, old)
    os.replace(tmp, ckpt)
    shutil.rmtree(old, ignore_errors=True)


def _read_checkpoint(ckpt: Path, model: nn.Module, opt: torch.optim.Optimizer,
                     identity: dict[str, Any] | None) -> dict[str, Any]:
    """The checkpoint's state, loaded into model and opt; refused, untouched, if it belongs to another run."""
    try:
        info = json.loads((ckpt / "state.json").read_text(encoding="utf-8"))
        if not isinstance(info, dict) or not isinstance(info.get("epoch"), int):
            raise ValueError("not a wattless checkpoint state")
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise DamagedFileError(f"checkpoint {ckpt} is damaged ({exc}); remove {ckpt} to train from the start") from None
    if identity is not None and info.get("identity") != identity:
        held = info.get("identity") or {}
        raise TrainingError(
            f"checkpoint {ckpt} belongs to another run (workload {held.get('workload')!r}, recipe "
            f"{held.get('recipe_name')!r}, seed {held.get('seed')!r}), not to this one (workload "
            f"{identity.get('workload')!r}, recipe {identity.get('recipe_name')!r}, seed {identity.get('seed')!r}); "
            f"nothing was changed: remove {ckpt} to train this run from the start"
        )
    scratch = copy.deepcopy(model.state_dict())
    try:
        load_state(model, ckpt / "model.safetensors")
        _load_optimizer(opt, read_tensors(ckpt / "optimizer.safetensors"), info.pop("optimizer"))
    except DamagedFileError:
        model.load_state_dict(scratch)
        raise
    except (KeyError, ValueError, TypeError, RuntimeError) as exc:
        model.load_state_dict(scratch)
        raise DamagedFileError(f"checkpoint {ckpt} is damaged ({type(exc).__name__}: {exc}); remove it to train "
                               "from the start") from None
    return info


def _ends_worse(last: float, first: float, epochs: int) -> bool:
    """Training that ends far above where it started has diverged (an lr far too large), even when gradient
    clipping kept every loss finite; a compressed model at chance level stays below this bar."""
    return epochs >= 2 and last > max(10 * first, first + 5.0)


# --- the loop ---------------------------------------------------------------------------------------------

@dataclass
class TrainResult:
    epochs_run: int
    steps: int
    final_loss: float
    resumed_from_epoch: int | None
    energy_lambda: float | None
    soft_energy_j: float | None
    history: list[dict[str, float]] = field(default_factory=list)


def steps_per_epoch(split: Split | Batches, batch_size: int) -> int:
    """Optimizer steps in one epoch: batch_size rows per step for a Split, the loader's own batches for Batches."""
    if isinstance(split, Batches):
        return max(1, split.num_batches)
    return max(1, math.ceil(len(split) / batch_size))


def _batches(split: Split | Batches, batch_size: int, gen: torch.Generator) -> Iterator[Split | LoaderBatch]:
    if isinstance(split, Batches):  # the user's loader, in its own order and batch size
        yield from split.batches()
        return
    order = torch.randperm(len(split), generator=gen)
    for i in range(0, len(split), batch_size):
        yield split.take(order[i : i + batch_size])


def _distiller(model: nn.Module, workload: Workload, teacher: nn.Module | None,
               distill: DistillConfig | None) -> Distillation | None:
    """The teacher through the technique door; a labelled workload distils only when the recipe says so."""
    if teacher is None or (distill is None and (workload.train.labelled or workload.loss is not None)):
        return None
    return apply_(model, distill or DistillConfig(), ApplyContext(example_input=None, teacher=teacher))


def _user_loss(workload: Workload, out: Any, batch: Split | LoaderBatch) -> torch.Tensor:
    loss = workload.loss(out, batch.raw if isinstance(batch, LoaderBatch) else batch)
    if not isinstance(loss, torch.Tensor) or loss.numel() != 1:
        got = f"a tensor of shape {tuple(loss.shape)}" if isinstance(loss, torch.Tensor) else type(loss).__name__
        raise TrainingError(f"workload {workload.name!r}: its loss(outputs, batch) returned {got}; it must return "
                            "one scalar tensor (e.g. end it with .mean()) that autograd can differentiate")
    return loss


def _loss(model: nn.Module, batch: Split | LoaderBatch, workload: Workload, techniques: list[Technique],
          distiller: Distillation | None) -> tuple[torch.Tensor, Any]:
    labelled = batch.targets is not None
    inputs = workload.prepare_inputs(batch.inputs)
    if workload.loss is not None:
        out = model_output(model, inputs, labelled=True)  # the model's own outputs, for the user's loss
        task = _user_loss(workload, out, batch)
        if distiller is not None:
            task = distiller.classifier_loss(out, task, inputs)
    elif labelled:
        out = model_output(model, inputs, labelled)
        task = F.cross_entropy(out, batch.targets)
        if distiller is not None:
            task = distiller.classifier_loss(out, task, inputs)
    else:
        if distiller is None:
            raise TrainingError(f"workload {workload.name!r} has no labels: its recipe needs a [distill] section")
        task, out = distiller.encoder_loss(model, inputs, _pool)
    extras = {"logits": out, "targets": batch.targets}
    for tech in techniques:
        extra = tech.loss(model, inputs, extras)
        if extra is not None:
            task = task + extra
    return task, inputs


def train(
    model: nn.Module,
    workload: Workload,
    settings: TrainSettings,
    *,
    techniques: list[Technique] = (),
    teacher: nn.Module | None = None,
    distill: DistillConfig | None = None,
    energy: EnergyTerm | None = None,
    run_dir: Path | None = None,
    progress: bool = True,
    on_epoch: Callable[[int, dict[str, float]], None] | None = None,
    identity: dict[str, Any] | None = None,
) -> TrainResult:
    """Train ``model`` in place; checkpoints under run_dir/checkpoint, resumed from if present. Runs on the
    workload's ``train_threads``. ``identity`` (the run's workload, recipe and seed) is written into each
    checkpoint, and a checkpoint that carries another is refused rather than resumed."""
    with torch_threads(workload.train_threads):
        return _train(model, workload, settings, techniques, teacher, distill, energy, run_dir, progress, on_epoch,
                      identity)


DIVERGED_RATIO = 1e6  # an epoch's mean task loss this many times the first step's: the run has blown up


def _diverged(what: str, loss: float, first: float, kept: str) -> TrainingError:
    return TrainingError(f"the loss diverged: {what} it was {loss:.4g}, against {first:.4g} at the first step; "
                         f"training stopped and {kept}. Lower the learning rate (train.lr) or the energy weight.")


def _resume(ckpt, model, opt, sched, energy, techniques, identity, workload, gen) -> dict[str, Any]:
    info = _read_checkpoint(ckpt, model, opt, identity)
    if energy is not None:
        if info.get("energy_lambda") is not None:
            energy.lam = info["energy_lambda"]
        model.train()
        energy.refresh()  # costs of the loaded masks and bits, as the straight run refreshed them
    if sched is not None:
        sched.load_state_dict(info["scheduler"])
    for tech, state in zip(techniques, info.get("techniques", [])):
        tech.load_state(state)
    for _ in range(info["epoch"] if isinstance(workload.train, Split) else 0):
        torch.randperm(len(workload.train), generator=gen)  # replay the data order, as the straight run drew it
    if info.get("rng") is not None:
        torch.set_rng_state(torch.tensor(info["rng"], dtype=torch.uint8))
    return info


@dataclass
class _Run:
    """One training run's moving parts and state: the optimizer and schedule, where it resumed, the history."""

    model: nn.Module
    workload: Workload
    settings: TrainSettings
    techniques: list[Technique]
    energy: "EnergyTerm | None"
    ckpt: Path | None
    identity: dict[str, Any] | None
    on_epoch: Callable[[int, dict[str, Any]], None] | None
    distiller: Distillation | None = None
    start_epoch: int = 0
    resumed: int | None = None
    history: list[dict[str, Any]] = field(default_factory=list)
    first_loss: float | None = None
    task_value: float | None = None
    step: int = 0
    saved: int = 0
    loss_value: float = float("nan")

    def __post_init__(self) -> None:
        s = self.settings
        torch.manual_seed(s.seed)
        self.gen = torch.Generator().manual_seed(s.seed)
        self.params = [p for p in self.model.parameters() if p.requires_grad]
        self.opt = torch.optim.AdamW(self.params, lr=s.lr, weight_decay=s.weight_decay)
        self.steps_per_epoch = steps_per_epoch(self.workload.train, s.batch_size)
        self.total = s.epochs * self.steps_per_epoch
        self.sched = torch.optim.lr_scheduler.OneCycleLR(self.opt, max_lr=s.lr, total_steps=max(self.total, 1),
                                                         pct_start=0.1, anneal_strategy="cos") if self.total else None

    def resume(self) -> None:
        """Pick up the checkpoint in the run folder, if there is one (refused if it is another run's)."""
        if self.ckpt is not None and (self.ckpt / "state.json").exists():
            info = _resume(self.ckpt, self.model, self.opt, self.sched, self.energy, self.techniques, self.identity,
                           self.workload, self.gen)
            self.start_epoch, self.resumed, self.history = info["epoch"], info["epoch"], info.get("history", [])
            self.first_loss = info.get("first_loss")
        self.step, self.saved = self.start_epoch * self.steps_per_epoch, self.start_epoch
        if self.history:  # a run resumed at its end reports its last epoch
            self.loss_value = self.history[-1]["loss"]
            if self.energy is not None and self.history[-1].get("soft_energy_j") is not None:
                self.energy.last_j = self.history[-1]["soft_energy_j"]

    def kept(self) -> str:
        return (f"the last good checkpoint (epoch {self.saved}) is kept in {self.ckpt}" if self.ckpt is not None
                and self.saved else "no checkpoint had been written yet")

    def one_step(self, batch: Split | LoaderBatch, epoch: int) -> tuple[float, float]:
        """One optimizer step; (loss with the energy term, task loss)."""
        for tech in self.techniques:
            tech.on_step(self.step, self.total)
        loss, _ = _loss(self.model, batch, self.workload, self.techniques, self.distiller)
        task_loss = float(loss.detach())
        if self.first_loss is None and math.isfinite(task_loss):
            self.first_loss = task_loss
        if self.energy is not None:
            loss = loss + self.energy(len(batch))
        if not torch.isfinite(loss):
            raise TrainingError(f"the loss became {float(loss.detach())} at epoch {epoch + 1}, step {self.step}; "
                                f"training stopped and {self.kept()}. Lower the learning rate or the energy weight.")
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(self.params, 5.0)
        self.opt.step()
        if self.sched is not None:
            self.sched.step()
        if self.energy is not None:
            self.energy.dual_step()
        self.step += 1
        return float(loss.detach()), task_loss

    def one_epoch(self, epoch: int, tick: Callable[[str], None]) -> None:
        self.model.train()
        running, task_running, n = 0.0, 0.0, 0
        for batch in _batches(self.workload.train, self.settings.batch_size, self.gen):
            loss, task_loss = self.one_step(batch, epoch)
            running, task_running, n = running + loss, task_running + task_loss, n + 1
            status = f"loss {running / n:.4f}"
            if self.energy is not None:
                status += f"  E {self.energy.last_j * 1e6:.4g} uJ  lambda {self.energy.lam:.3g}"
            tick(status)
        self.loss_value, self.task_value = running / max(n, 1), task_running / max(n, 1)
        if self.first_loss is not None and self.task_value > DIVERGED_RATIO * max(self.first_loss, 1e-3):
            raise _diverged(f"over epoch {epoch + 1}", self.task_value, self.first_loss, self.kept())
        self.end_epoch(epoch)

    def end_epoch(self, epoch: int) -> None:
        record = {"epoch": epoch + 1, "loss": self.loss_value}
        if self.energy is not None:
            self.energy.refresh()
            record.update(soft_energy_j=self.energy.last_j, energy_lambda=self.energy.lam)
        self.history.append(record)
        every = self.settings.checkpoint_every
        if self.ckpt is not None and ((epoch + 1) % every == 0 or epoch + 1 == self.settings.epochs):
            _write_checkpoint(self.ckpt, self.model, self.opt, {
                "epoch": epoch + 1, "history": self.history,
                "scheduler": self.sched.state_dict() if self.sched else None,
                "energy_lambda": self.energy.lam if self.energy is not None else None, "identity": self.identity,
                "techniques": [t.state() for t in self.techniques], "first_loss": self.first_loss,
                "rng": torch.get_rng_state().tolist(),
            })
            self.saved = epoch + 1
        if self.on_epoch is not None:
            self.on_epoch(epoch + 1, record)

    def result(self) -> TrainResult:
        if (self.first_loss is not None and self.task_value is not None
                and _ends_worse(self.task_value, self.first_loss, self.settings.epochs)):
            raise _diverged("over the last epoch", self.task_value, self.first_loss,
                            f"its result is not written (the checkpoint is in {self.ckpt})" if self.ckpt
                            else "its result is dropped")
        energy = self.energy
        return TrainResult(
            epochs_run=self.settings.epochs - self.start_epoch, steps=self.step, final_loss=self.loss_value,
            resumed_from_epoch=self.resumed, energy_lambda=energy.lam if energy is not None else None,
            soft_energy_j=energy.last_j if energy is not None else None, history=self.history,
        )


def _train(model, workload, settings, techniques, teacher, distill, energy, run_dir, progress,
           on_epoch, identity) -> TrainResult:
    run = _Run(model, workload, settings, techniques, energy, run_dir / "checkpoint" if run_dir is not None else None,
               identity, on_epoch)
    run.resume()
    run.distiller = _distiller(model, workload, teacher, distill)
    bar = progress_bar(TextColumn("{task.description}", style="bold", markup=False), BarColumn(), MofNCompleteColumn(),
                       TextColumn("{task.fields[status]}", markup=False), TimeRemainingColumn(), disable=not progress)
    with bar:
        task_id = bar.add_task(f"training {workload.name}", total=run.total, completed=run.step, status="")
        for epoch in range(run.start_epoch, settings.epochs):
            run.one_epoch(epoch, lambda status: bar.update(task_id, advance=1, status=status))
    clear_soft_probs(model)
    return run.result()
