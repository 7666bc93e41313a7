"""The one training loop: task (or distillation) loss + technique losses + lambda * E[x] / E_baseline,
or a hard energy budget kept by a Lagrange multiplier updated by dual ascent.

Checkpoints (safetensors for tensors, JSON for the rest) are written atomically every few epochs; an
interrupted run resumes from the last one; a non-finite loss stops the run and keeps the last good one.
"""

from __future__ import annotations

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

from wattless._progress import progress_bar
from wattless.energy.soft import ExpectedEnergy, unit_costs
from wattless.energy.target import Target
from wattless.errors import TrainingError
from wattless.techniques.base import ApplyContext, Technique, apply_, clear_soft_probs
from wattless.techniques.distill import DistillConfig, Distillation
from wattless.workloads import Split, Workload

__all__ = ["TrainSettings", "EnergyTerm", "train", "model_output", "save_state", "load_state", "torch_threads"]


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
    """Model tensors as safetensors (shared storage copied, so tied weights save too)."""
    tensors = {k: v.detach().contiguous().clone() for k, v in model.state_dict().items()}
    save_file(tensors, str(path))


def load_state(model: nn.Module, path: Path) -> None:
    model.load_state_dict(load_file(str(path)), strict=True)


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


def _read_checkpoint(ckpt: Path, model: nn.Module, opt: torch.optim.Optimizer) -> dict[str, Any]:
    info = json.loads((ckpt / "state.json").read_text())
    load_state(model, ckpt / "model.safetensors")
    _load_optimizer(opt, load_file(str(ckpt / "optimizer.safetensors")), info.pop("optimizer"))
    return info


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


def _batches(split: Split, batch_size: int, gen: torch.Generator) -> Iterator[Split]:
    order = torch.randperm(len(split), generator=gen)
    for i in range(0, len(split), batch_size):
        yield split.take(order[i : i + batch_size])


def _distiller(model: nn.Module, workload: Workload, teacher: nn.Module | None,
               distill: DistillConfig | None) -> Distillation | None:
    """The teacher through the technique door; a labelled workload distils only when the recipe says so."""
    if teacher is None or (distill is None and workload.train.targets is not None):
        return None
    return apply_(model, distill or DistillConfig(), ApplyContext(example_input=None, teacher=teacher))


def _loss(model: nn.Module, batch: Split, workload: Workload, techniques: list[Technique],
          distiller: Distillation | None) -> tuple[torch.Tensor, Any]:
    labelled = batch.targets is not None
    inputs = workload.prepare_inputs(batch.inputs)
    if labelled:
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
) -> TrainResult:
    """Train ``model`` in place; checkpoints under run_dir/checkpoint, resumed from if present. Runs on the
    workload's ``train_threads``."""
    with torch_threads(workload.train_threads):
        return _train(model, workload, settings, techniques, teacher, distill, energy, run_dir, progress, on_epoch)


def _train(model, workload, settings, techniques, teacher, distill, energy, run_dir, progress,
           on_epoch) -> TrainResult:
    torch.manual_seed(settings.seed)
    gen = torch.Generator().manual_seed(settings.seed)
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=settings.lr, weight_decay=settings.weight_decay)
    steps_per_epoch = max(1, math.ceil(len(workload.train) / settings.batch_size))
    total = settings.epochs * steps_per_epoch
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=settings.lr, total_steps=max(total, 1),
                                                pct_start=0.1, anneal_strategy="cos") if total else None
    ckpt = run_dir / "checkpoint" if run_dir is not None else None
    start_epoch, resumed, history = 0, None, []
    if ckpt is not None and (ckpt / "state.json").exists():
        info = _read_checkpoint(ckpt, model, opt)
        start_epoch, resumed, history = info["epoch"], info["epoch"], info.get("history", [])
        if energy is not None and info.get("energy_lambda") is not None:
            energy.lam = info["energy_lambda"]
        if sched is not None:
            sched.load_state_dict(info["scheduler"])
        for _ in range(start_epoch):  # replay the data order so a resumed run sees what a straight one would
            torch.randperm(len(workload.train), generator=gen)
    distiller = _distiller(model, workload, teacher, distill)
    step, loss_value, saved = start_epoch * steps_per_epoch, float("nan"), start_epoch
    bar = progress_bar(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
                       TextColumn("{task.fields[status]}"), TimeRemainingColumn(), disable=not progress)
    with bar:
        task_id = bar.add_task(f"training {workload.name}", total=total, completed=step, status="")
        for epoch in range(start_epoch, settings.epochs):
            model.train()
            running, n = 0.0, 0
            for batch in _batches(workload.train, settings.batch_size, gen):
                for tech in techniques:
                    tech.on_step(step, total)
                loss, _ = _loss(model, batch, workload, techniques, distiller)
                if energy is not None:
                    loss = loss + energy(len(batch))
                if not torch.isfinite(loss):
                    kept = (f"the last good checkpoint (epoch {saved}) is kept in {ckpt}" if ckpt is not None and saved
                            else "no checkpoint had been written yet")
                    raise TrainingError(f"the loss became {float(loss.detach())} at epoch {epoch + 1}, step {step}; training "
                                        f"stopped and {kept}. Lower the learning rate or the energy weight.")
                opt.zero_grad(set_to_none=True)
                loss.backward()
                torch.nn.utils.clip_grad_norm_(params, 5.0)
                opt.step()
                if sched is not None:
                    sched.step()
                if energy is not None:
                    energy.dual_step()
                running, n, step = running + float(loss.detach()), n + 1, step + 1
                status = f"loss {running / n:.4f}"
                if energy is not None:
                    status += f"  E {energy.last_j * 1e6:.4g} uJ  lambda {energy.lam:.3g}"
                bar.update(task_id, advance=1, status=status)
            loss_value = running / max(n, 1)
            record = {"epoch": epoch + 1, "loss": loss_value}
            if energy is not None:
                energy.refresh()
                record.update(soft_energy_j=energy.last_j, energy_lambda=energy.lam)
            history.append(record)
            if ckpt is not None and ((epoch + 1) % settings.checkpoint_every == 0 or epoch + 1 == settings.epochs):
                _write_checkpoint(ckpt, model, opt, {
                    "epoch": epoch + 1, "history": history, "scheduler": sched.state_dict() if sched else None,
                    "energy_lambda": energy.lam if energy is not None else None,
                })
                saved = epoch + 1
            if on_epoch is not None:
                on_epoch(epoch + 1, record)
    clear_soft_probs(model)
    return TrainResult(
        epochs_run=settings.epochs - start_epoch, steps=step, final_loss=loss_value, resumed_from_epoch=resumed,
        energy_lambda=energy.lam if energy is not None else None,
        soft_energy_j=energy.last_j if energy is not None else None, history=history,
    )
