"""One door for every technique: a typed config, a handler found by the config's type, a live handle.

    handle = apply_(model, QuantConfig(weight_bits=4), context)   # transforms the model in place
    ... training: handle.on_step(step, total); loss += handle.loss(model)
    handle.finish(model, context)                                   # after training (calibration, convert)
    handle.report(model)                                            # what it did, for metrics.json

The energy core never imports a technique; techniques tell it what they did through module attributes:

- ``wattless_weight_precision`` / ``wattless_act_precision`` (e.g. "int4"): the precision a module runs at.
- zeros in the weight tensor a module computes with (masks applied in forward): weight sparsity,
  recognised as unstructured, 2:4, or whole rows/columns removed (structured).
- ``wattless_soft_prob``: a tensor (B,) set in forward while training, the differentiable probability
  that this module (and every module under it) runs for each input of the batch (early exits, experts).
- ``wattless_full_path``: when a dynamic module finds this True on itself, it computes every unit for
  every input (all experts, all exits), so the energy core can cost each unit at full load.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, ClassVar, get_args

import torch
from pydantic import BaseModel, ConfigDict, model_validator
from torch import nn

__all__ = ["TechniqueConfig", "Technique", "ApplyContext", "register", "apply_", "full_path", "clear_soft_probs",
           "HANDLERS"]


def numbers_are_numbers(cls: type[BaseModel], data: Any) -> Any:
    """A `true` or `false` given for a numeric field is refused (pydantic would read it as 1 or 0)."""
    if isinstance(data, dict):
        for name, field in cls.model_fields.items():
            value = data.get(field.alias or name, data.get(name))
            if isinstance(value, bool) and _numeric(field.annotation):
                raise ValueError(f"`{name}` takes a number, not {str(value).lower()}")
    return data


def _numeric(annotation: Any) -> bool:
    kinds = get_args(annotation) or (annotation,)
    return bool not in kinds and any(k in (int, float) for k in kinds)


class TechniqueConfig(BaseModel):
    """Base of every technique's config: frozen, unknown keys and non-finite numbers rejected by name."""

    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)
    kind: ClassVar[str] = "technique"

    @model_validator(mode="before")
    @classmethod
    def _numbers(cls, data: Any) -> Any:
        return numbers_are_numbers(cls, data)


@dataclass
class ApplyContext:
    """What a technique may need to transform a model: example inputs, data, the teacher."""

    example_input: Any  # a batch the model's forward takes
    train_batches: Callable[[], Iterator[tuple[Any, Any]]] | None = None  # yields (inputs, targets)
    teacher: nn.Module | None = None
    total_steps: int = 0
    extras: dict[str, Any] = field(default_factory=dict)


class Technique:
    """The live handle of an applied technique. Every hook is optional."""

    name = "technique"

    def on_step(self, step: int, total_steps: int) -> None:
        """Called before each optimiser step (schedules: gradual pruning, temperature...)."""

    def loss(self, model: nn.Module, inputs: Any, outputs: Any) -> torch.Tensor | None:
        """An extra loss term for this step (load balancing, exit heads, L1 on activations)."""
        return None

    def finish(self, model: nn.Module, context: ApplyContext) -> None:
        """After training: calibrate thresholds, fix masks, convert."""

    def report(self, model: nn.Module) -> dict[str, Any]:
        """What the technique did, in numbers, for metrics.json."""
        return {}

    def state(self) -> dict[str, Any]:
        """What the technique keeps outside the model's tensors (a schedule's position), as JSON, for the
        checkpoint: a resumed run must continue exactly as an uninterrupted one."""
        return {}

    def load_state(self, state: dict[str, Any]) -> None:
        """Restore what ``state()`` returned."""


HANDLERS: dict[type[TechniqueConfig], Callable[[nn.Module, Any, ApplyContext], Technique]] = {}


def register(config_cls: type[TechniqueConfig]):
    """Decorator: the handler that applies configs of this type."""

    def wrap(fn: Callable[[nn.Module, Any, ApplyContext], Technique]):
        HANDLERS[config_cls] = fn
        return fn

    return wrap


def apply_(model: nn.Module, config: TechniqueConfig, context: ApplyContext) -> Technique:
    """Apply a technique to ``model`` in place and return its live handle."""
    handler = HANDLERS.get(type(config))
    if handler is None:
        known = ", ".join(c.__name__ for c in HANDLERS)
        raise TypeError(f"no technique handles {type(config).__name__}; known configs: {known}")
    return handler(model, config, context)


def clear_soft_probs(model: nn.Module) -> None:
    """Drop the soft probabilities a training forward left on modules (they hold autograd graphs)."""
    for m in model.modules():
        if getattr(m, "wattless_soft_prob", None) is not None:
            m.wattless_soft_prob = None


@contextmanager
def full_path(model: nn.Module):
    """Every dynamic module computes every unit for every input inside this block (for costing)."""
    previous = {m: getattr(m, "wattless_full_path", False) for m in model.modules()}
    for m in model.modules():
        m.wattless_full_path = True
    try:
        yield model
    finally:
        for m, value in previous.items():
            m.wattless_full_path = value
