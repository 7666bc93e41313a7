"""wattless in a Hugging Face ``Trainer``: the model prepared before the Trainer is built (so the optimizer
holds every parameter the techniques add: quantizer steps, exit heads, routers), then a callback for the
steps and a loss function that adds wattless's terms to the model's own loss.

    wattless.prepare(model, "recipe.toml", example_inputs, total_steps=max_steps)
    callback = WattlessCallback(convert_at_end=True)
    trainer = Trainer(model=model, args=args, train_dataset=ds, callbacks=[callback],
                      compute_loss_func=callback.compute_loss)
    trainer.train()                      # energy_loss added to every step's loss, wattless.step after each
    wattless.export(model, example_inputs, "model.onnx")

``compute_loss`` is the Trainer's ``compute_loss_func(outputs, labels, num_items_in_batch)``: the model's
cross-entropy on its logits (or ``base_loss(outputs, labels)``) + wattless.energy_loss(model, targets=labels).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

import wattless
from wattless.api import ATTR
from wattless.errors import TrainingError

try:
    from transformers import TrainerCallback
except ImportError as exc:  # pragma: no cover - transformers is a core dependency
    raise ImportError("wattless.integrations.hf needs transformers: pip install transformers") from exc

__all__ = ["WattlessCallback"]


def _logits(outputs: Any) -> torch.Tensor:
    logits = outputs.get("logits") if hasattr(outputs, "get") else outputs
    if not isinstance(logits, torch.Tensor):
        raise TrainingError("WattlessCallback.compute_loss: the model's outputs have no `logits`; give "
                            "base_loss=(outputs, labels) -> loss")
    return logits


class WattlessCallback(TrainerCallback):
    """wattless.step after every optimizer step of a Trainer, and (``convert_at_end``) wattless.convert when
    training ends; ``compute_loss`` adds wattless's energy and technique terms to the task loss."""

    def __init__(self, *, base_loss: Callable[[Any, torch.Tensor], torch.Tensor] | None = None,
                 convert_at_end: bool = False) -> None:
        self.base_loss, self.convert_at_end = base_loss, convert_at_end
        self.model: nn.Module | None = None

    def on_train_begin(self, args: Any, state: Any, control: Any, model: nn.Module | None = None, **kw: Any) -> None:
        if model is None or model.__dict__.get(ATTR) is None:
            raise TrainingError("WattlessCallback: the Trainer's model was not prepared; call wattless.prepare(model, "
                                "recipe, example_inputs) before building the Trainer (its optimizer must hold the "
                                "parameters the techniques add)")
        self.model = model

    def on_step_end(self, args: Any, state: Any, control: Any, **kw: Any) -> None:
        wattless.step(self._model())

    def on_train_end(self, args: Any, state: Any, control: Any, **kw: Any) -> None:
        if self.convert_at_end:
            wattless.convert(self._model())

    def compute_loss(self, outputs: Any, labels: torch.Tensor, num_items_in_batch: Any = None) -> torch.Tensor:
        task = (self.base_loss(outputs, labels) if self.base_loss is not None
                else F.cross_entropy(_logits(outputs).flatten(0, -2), labels.flatten()))
        return task + wattless.energy_loss(self._model(), targets=labels)

    def _model(self) -> nn.Module:
        if self.model is None:
            raise TrainingError("WattlessCallback: training has not begun (on_train_begin sets the model)")
        return self.model
