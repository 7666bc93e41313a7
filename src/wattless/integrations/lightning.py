"""wattless in a PyTorch Lightning ``Trainer``: the model prepared before ``fit`` (so ``configure_optimizers``
sees every parameter the techniques add: quantizer steps, exit heads, routers), then one callback.

    wattless.prepare(module.net, "recipe.toml", example_inputs, total_steps=max_steps)
    trainer = lightning.Trainer(max_steps=max_steps, callbacks=[WattlessCallback(convert_at_end=True)])
    trainer.fit(module, loader)          # energy_loss added to each training_step's loss, wattless.step after
    wattless.export(module.net, example_inputs, "model.onnx")   # each optimizer step

The prepared model is the LightningModule itself or one of its submodules. ``add_loss`` (on by default) wraps
the module's ``training_step`` for the length of ``fit``: its loss (a tensor, or a dict's ``"loss"``) gets
``wattless.energy_loss(prepared, targets=targets(batch))`` added; ``targets`` defaults to the batch's second
item (``(inputs, labels)``) or its ``"labels"`` / ``"targets"`` entry. With ``add_loss=False`` the module adds
``wattless.energy_loss`` itself. ``wattless.step`` runs once per optimizer step (``trainer.global_step``),
so gradient accumulation counts steps as the optimizer does.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Mapping
from typing import Any

import torch
from torch import nn

import wattless
from wattless.api import ATTR
from wattless.errors import TrainingError

try:
    from lightning.pytorch import Callback
except ImportError:  # pragma: no cover - the standalone package name
    try:
        from pytorch_lightning import Callback
    except ImportError as exc:
        raise ImportError("wattless.integrations.lightning needs PyTorch Lightning: "
                          "pip install 'wattless[lightning]' (or pip install lightning)") from exc

__all__ = ["WattlessCallback", "default_targets"]


def default_targets(batch: Any) -> torch.Tensor | None:
    """The labels of a ``(inputs, labels, ...)`` batch or of a mapping's ``labels`` / ``targets``; else None."""
    if isinstance(batch, Mapping):
        for key in ("labels", "targets"):
            if isinstance(batch.get(key), torch.Tensor):
                return batch[key]
        return None
    if isinstance(batch, (tuple, list)) and len(batch) >= 2 and isinstance(batch[1], torch.Tensor):
        return batch[1]
    return None


def _prepared_in(module: nn.Module) -> nn.Module:
    found = [m for m in module.modules() if m.__dict__.get(ATTR) is not None]
    if not found:
        raise TrainingError("WattlessCallback: no module of the LightningModule was prepared; call "
                            "wattless.prepare(model, recipe, example_inputs) before trainer.fit (its optimizer "
                            "must hold the parameters the techniques add)")
    if len(found) > 1:
        raise TrainingError("WattlessCallback: more than one prepared module in the LightningModule "
                            f"({len(found)}); prepare one model (the outermost one the recipe is for)")
    return found[0]


class WattlessCallback(Callback):
    """wattless.energy_loss added to every training step's loss (``add_loss``), wattless.step after every
    optimizer step, and (``convert_at_end``) wattless.convert when fit ends."""

    def __init__(self, *, add_loss: bool = True, targets: Callable[[Any], torch.Tensor | None] = default_targets,
                 convert_at_end: bool = False) -> None:
        self.add_loss, self.targets, self.convert_at_end = add_loss, targets, convert_at_end
        self.model: nn.Module | None = None
        self._step = 0
        self._original: Callable[..., Any] | None = None

    def on_fit_start(self, trainer: Any, pl_module: nn.Module) -> None:
        self.model = _prepared_in(pl_module)
        self._step = trainer.global_step
        if self.add_loss and self._original is None:
            self._original = pl_module.training_step
            pl_module.training_step = self._with_energy(self._original)  # an instance attribute, for this fit

    def _with_energy(self, training_step: Callable[..., Any]) -> Callable[..., Any]:
        @functools.wraps(training_step)  # Lightning reads its signature (batch_idx, dataloader_iter)
        def step(batch: Any, *args: Any, **kwargs: Any) -> Any:
            out = training_step(batch, *args, **kwargs)
            if out is None:  # Lightning skips this batch
                return out
            extra = wattless.energy_loss(self._model(), targets=self.targets(batch))
            if isinstance(out, torch.Tensor):
                return out + extra
            if isinstance(out, Mapping) and isinstance(out.get("loss"), torch.Tensor):
                return {**out, "loss": out["loss"] + extra}
            raise TrainingError("WattlessCallback: training_step returned "
                                f"{type(out).__name__}; return the loss tensor or a dict with 'loss'")
        return step

    def on_train_batch_end(self, trainer: Any, pl_module: nn.Module, outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        while self._step < trainer.global_step:  # once per optimizer step taken since the last batch
            wattless.step(self._model())
            self._step += 1

    def on_fit_end(self, trainer: Any, pl_module: nn.Module) -> None:
        self._restore(pl_module)
        if self.convert_at_end:
            wattless.convert(self._model())

    def on_exception(self, trainer: Any, pl_module: nn.Module, exception: BaseException) -> None:
        self._restore(pl_module)

    def _restore(self, pl_module: nn.Module) -> None:
        if self._original is not None:
            pl_module.__dict__.pop("training_step", None)  # the class's own method again
            self._original = None

    def _model(self) -> nn.Module:
        if self.model is None:
            raise TrainingError("WattlessCallback: fit has not started (on_fit_start finds the prepared model)")
        return self.model
