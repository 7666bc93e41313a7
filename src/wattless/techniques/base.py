"""One door for every technique: a typed config, a handler found by the config's type, a live handle.

A technique's life cycle, every step through the same door:

    handle = apply_(model, QuantConfig(weight_bits=4), context)   # prepare: fake-quant, masks, heads, experts
    ... training: handle.on_step(step, total); loss += handle.loss(model, inputs, outputs)
    handle.finish(model, context)                                   # after training: calibrate, final masks
    handle.report(model)                                            # what it did, for metrics.json
    apply_(model, QuantConfig(weight_bits=4), step="convert")       # convert: the deployed form export reads
    convert_(model)                                                 # every technique's convert at once

``prepare`` keeps the model's state-dict layout (a run's checkpoint loads into a freshly prepared model);
``convert`` may change it (masks baked into weights, quantizer steps frozen), so it runs on the model being
deployed. Each technique registers both: ``@register(Config)`` and ``@register(Config, step="convert")``.

The energy core never imports a technique; techniques tell it what they did through module attributes:

- ``wattless_weight_precision`` / ``wattless_act_precision`` (e.g. "int4"): the precision a module runs at.
- zeros in the weight tensor a module computes with (masks applied in forward): weight sparsity,
  recognised as unstructured, 2:4, or whole rows/columns removed (structured).
- ``wattless_soft_prob``: a tensor (B,) set in forward while training, the differentiable probability
  that this module (and every module under it) runs for each input of the batch (early exits, experts).
- ``wattless_full_path``: when a dynamic module finds this True on itself, it computes every unit for
  every input (all experts, all exits), so the energy core can cost each unit at full load
  (wattless.energy.soft.full_path sets it; re-exported here).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import InitVar, dataclass, fields
from typing import Any, ClassVar, Literal, get_args

import torch
from pydantic import BaseModel, ConfigDict, model_validator
from torch import nn

from wattless.energy.soft import full_path

__all__ = ["TechniqueConfig", "Technique", "ApplyContext", "register", "apply_", "convert_", "full_path",
           "clear_soft_probs", "HANDLERS", "CONVERTERS", "Step"]

Step = Literal["prepare", "convert"]


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
    """What a technique may need to transform a model: example inputs, data, the teacher.

    ``extras`` (a dict of field names to values) is accepted for callers that still pass one; each key must
    name one of the fields below."""

    example_input: Any  # a batch the model's forward takes
    train_batches: Callable[[], Iterator[tuple[Any, Any]]] | None = None  # yields (inputs, targets)
    teacher: nn.Module | None = None
    total_steps: int = 0
    val: Any = None  # labelled held-out data: (inputs, targets) tensors or a Split (early-exit calibration)
    evaluate: Callable[[nn.Module, Any], dict[str, float]] | None = None  # the workload's metrics of a split
    val_split: Any = None  # the held-out Split itself
    extras: InitVar[dict[str, Any] | None] = None

    def __post_init__(self, extras: dict[str, Any] | None) -> None:
        names = [f.name for f in fields(self)]
        for key, value in (extras or {}).items():
            if key not in names:
                raise TypeError(f"ApplyContext has no field {key!r}; give one of {', '.join(names)}")
            setattr(self, key, value)


class Technique:
    """The live handle of an applied technique. Every hook is optional."""

    name = "technique"

    def on_step(self, step: int, total_steps: int) -> None:
        """Called before each optimiser step (schedules: gradual pruning, temperature...)."""

    def loss(self, model: nn.Module, inputs: Any, outputs: Any) -> torch.Tensor | None:
        """An extra loss term for this step (load balancing, exit heads, L1 on activations)."""
        return None

    def finish(self, model: nn.Module, context: ApplyContext) -> None:
        """After training: calibrate thresholds, fix masks (the state-dict layout stays)."""

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
# convert: (model, config or None) -> None, in place; None converts whatever the technique left on the model
CONVERTERS: dict[type[TechniqueConfig], Callable[[nn.Module, Any], None]] = {}


def register(config_cls: type[TechniqueConfig], step: Step = "prepare"):
    """Decorator: the handler of one step (prepare: returns the live handle; convert: returns None) for
    configs of this type."""
    table = {"prepare": HANDLERS, "convert": CONVERTERS}[step]

    def wrap(fn: Callable[..., Any]):
        table[config_cls] = fn
        return fn

    return wrap


def _handler(table: dict[type, Callable[..., Any]], config: TechniqueConfig, step: str) -> Callable[..., Any]:
    handler = table.get(type(config))
    if handler is None:
        known = ", ".join(c.__name__ for c in table)
        raise TypeError(f"no technique handles {type(config).__name__} at step {step!r}; known configs: {known}")
    return handler


def apply_(model: nn.Module, config: TechniqueConfig, context: ApplyContext | None = None, *,
           step: Step = "prepare") -> Technique | None:
    """prepare: apply a technique to ``model`` in place and return its live handle (``context`` needed);
    convert: turn the trained model into the form it is deployed in, in place (returns None)."""
    if step == "convert":
        _handler(CONVERTERS, config, step)(model, config)
        return None
    if context is None:
        raise TypeError(f"apply_(model, {type(config).__name__}(...), context): preparing a technique needs an "
                        "ApplyContext (at least example_input)")
    return _handler(HANDLERS, config, step)(model, config, context)


def convert_(model: nn.Module, configs: list[TechniqueConfig] | None = None) -> nn.Module:
    """The convert step of each config in order; None: of every registered technique, each converting what
    it finds on the model (and nothing where it finds nothing)."""
    if configs is None:
        for convert in CONVERTERS.values():
            convert(model, None)
    for config in configs or ():
        apply_(model, config, step="convert")
    return model


def clear_soft_probs(model: nn.Module) -> None:
    """Drop the soft probabilities a training forward left on modules (they hold autograd graphs)."""
    for m in model.modules():
        if getattr(m, "wattless_soft_prob", None) is not None:
            m.wattless_soft_prob = None
