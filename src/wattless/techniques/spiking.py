"""ANN-to-SNN conversion: a trained ReLU network runs as rate-coded integrate-and-fire neurons over T steps.

    handle = apply_(model, SpikingConfig(steps=[8, 32]), context)   # every nn.ReLU becomes an IFNeuron
    ... train as usual: an IFNeuron is a ReLU while the model is an ANN (steps 0)
    handle.finish(model, context)          # thresholds balanced on training data (max or percentile norm)
    set_steps(model, 32)                   # model(x) now simulates 32 time steps and returns mean logits
    spike_counts(model)                    # spikes each layer emitted since reset_counts(model)

The simulation (SpikingJelly's ann2snn and Rueckauer et al. 2017, "Conversion of continuous-valued deep
networks to efficient event-driven networks", Frontiers in Neuroscience 11:682):

- the input is rate coded by a signed integrate-and-fire encoder: it integrates x every step and emits +-theta_in
  spikes (the input can be negative), so every Linear / Conv layer receives spikes, never analog values;
- each ReLU becomes an IF neuron with threshold theta_l = the max (or a percentile) of that ReLU's outputs on
  training data; it integrates its input current, fires theta_l when the membrane reaches theta_l and
  subtracts theta_l (soft reset, "reset by subtraction"); the membrane starts at ``initial_membrane`` x
  theta_l (0.5 halves the rounding error of the rate code: Bu et al., ICLR 2022);
- biases are a constant current every step; the last layer is read out as its mean output over the T steps.

The energy core sees the spikes themselves: each layer's input is a tensor of zeros and theta values, so the
synaptic events it counts are the spikes x their fan-out, and its neuron updates are each layer's outputs x T.
Convolutions ask for exact event counts (``wattless_exact_events``): at the borders a spike reaches fewer
outputs. Spike tallies are bookkeeping (``uncounted``).
"""

from __future__ import annotations

import types
from collections.abc import Sequence
from fnmatch import fnmatchcase
from typing import Any, ClassVar, Literal

import numpy as np
import torch
from pydantic import Field, field_validator
from torch import nn

from wattless.energy.count import run_model, uncounted
from wattless.techniques.base import ApplyContext, Technique, TechniqueConfig, register

__all__ = ["SpikingConfig", "SpikingConversion", "IFNeuron", "set_steps", "spike_counts", "reset_counts",
           "record_spikes", "if_neurons", "balance_thresholds", "is_spiking"]

_UNSUPPORTED = (nn.MaxPool1d, nn.MaxPool2d, nn.LayerNorm, nn.MultiheadAttention, nn.Softmax, nn.GELU, nn.SiLU,
                nn.Tanh, nn.Sigmoid, nn.LSTM, nn.GRU, nn.Embedding)
_INPUT_THRESHOLD = "spike_input_threshold"
_STEPS = "_wattless_spiking_steps"


class SpikingConfig(TechniqueConfig):
    kind: ClassVar[str] = "spiking"
    target: str = Field("loihi", description="the neuromorphic target the converted network is priced on")
    steps: list[int] = Field(default_factory=lambda: [4, 8, 16, 32, 64], min_length=1,
                             description="time steps T the converted network is simulated for")
    norm: Literal["max", "percentile"] = Field("percentile", description="threshold balancing")
    percentile: float = Field(99.9, gt=0, le=100, description="percentile of a ReLU's outputs (norm = percentile)")
    reset: Literal["soft"] = Field("soft", description="reset by subtraction (the only one kept: it loses no charge)")
    initial_membrane: float = Field(0.5, ge=0, lt=1, description="starting membrane, as a fraction of threshold")
    layers: list[str] = Field(default_factory=lambda: ["*"], description="globs of the ReLU modules converted")

    @field_validator("steps")
    @classmethod
    def _positive(cls, v: list[int]) -> list[int]:
        if any(isinstance(t, bool) or t < 1 or t > 4096 for t in v):
            raise ValueError("steps: every T must be an integer from 1 to 4096")
        return sorted(set(v))


class IFNeuron(nn.Module):
    """A ReLU while the model is an ANN (``steps == 0``); an integrate-and-fire neuron with soft reset when
    the model simulates. ``threshold`` is in the state dict (balanced at finish)."""

    def __init__(self, initial_membrane: float = 0.5) -> None:
        super().__init__()
        self.register_buffer("threshold", torch.zeros(()))
        self.initial_membrane = initial_membrane
        self.steps = 0
        self.v: torch.Tensor | None = None
        self.spikes = 0.0  # spikes emitted since reset_counts
        self.recorded: list[torch.Tensor] | None = None  # spike tensors of each step, when recording

    def reset(self) -> None:
        self.v = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.steps == 0:
            return torch.relu(x)
        theta = self.threshold
        v = (theta * self.initial_membrane + x) if self.v is None else self.v + x
        fired = (v >= theta).to(x.dtype)
        self.v = v - fired * theta
        out = fired * theta
        with uncounted():
            self.spikes += float(fired.count_nonzero())
            if self.recorded is not None:
                self.recorded.append(fired.detach().clone())
        return out

    def extra_repr(self) -> str:
        return f"threshold={float(self.threshold):.4g}, steps={self.steps}"


def if_neurons(model: nn.Module) -> dict[str, IFNeuron]:
    return {n: m for n, m in model.named_modules() if isinstance(m, IFNeuron)}


def is_spiking(model: nn.Module) -> bool:
    return bool(if_neurons(model))


def _encode(model: nn.Module, x: torch.Tensor, v: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
    """One step of the signed IF input encoder: (+-theta_in spikes, membrane)."""
    theta = getattr(model, _INPUT_THRESHOLD)
    initial = next(iter(if_neurons(model).values())).initial_membrane
    v = (theta * initial * torch.sign(x) + x) if v is None else v + x
    fired = (v >= theta).to(x.dtype) - (v <= -theta).to(x.dtype)
    return fired * theta, v - fired * theta


def _simulate(self: nn.Module, x: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
    """The root's forward while spiking: T steps of the network on encoded spikes, mean output."""
    steps = self.__dict__[_STEPS]
    for neuron in if_neurons(self).values():
        neuron.reset()
    encoder_v, total = None, None
    for _ in range(steps):
        spikes, encoder_v = _encode(self, x, encoder_v)
        out = type(self).forward(self, spikes, *args, **kwargs)
        total = out if total is None else total + out
    return total / steps


def set_steps(model: nn.Module, steps: int) -> nn.Module:
    """Simulate ``steps`` time steps on every forward (0: back to the ANN), in place."""
    if not is_spiking(model):
        raise ValueError("the model has no IF neurons: apply SpikingConfig first")
    if steps < 0:
        raise ValueError(f"steps must be >= 0, got {steps}")
    for neuron in if_neurons(model).values():
        neuron.steps, neuron.v = steps, None
    if steps == 0:
        model.__dict__.pop("forward", None)
        model.__dict__.pop(_STEPS, None)
    else:
        model.__dict__[_STEPS] = steps
        model.forward = types.MethodType(_simulate, model)
    return model


def reset_counts(model: nn.Module) -> None:
    for neuron in if_neurons(model).values():
        neuron.spikes = 0.0


def spike_counts(model: nn.Module) -> dict[str, float]:
    """Spikes each IF layer emitted since ``reset_counts`` (the input encoder's are not included)."""
    return {n: m.spikes for n, m in if_neurons(model).items()}


def record_spikes(model: nn.Module, on: bool = True) -> None:
    """Keep every step's spike tensor on each IF layer (``.recorded``), for tests and inspection."""
    for neuron in if_neurons(model).values():
        neuron.recorded = [] if on else None


def _check_model(model: nn.Module) -> None:
    for name, module in model.named_modules():
        if isinstance(module, _UNSUPPORTED):
            raise ValueError(f"module {name!r} ({type(module).__name__}) has no rate-coded IF equivalent; the "
                             "spiking conversion takes ReLU networks of Linear, Conv, AvgPool, BatchNorm, Flatten "
                             "and Dropout layers")


def _convert_relus(model: nn.Module, config: SpikingConfig) -> list[str]:
    replaced = []
    for name, module in list(model.named_modules()):
        for child_name, child in list(module.named_children()):
            full = f"{name}.{child_name}" if name else child_name
            if type(child) is nn.ReLU and any(fnmatchcase(full, g) for g in config.layers):
                setattr(module, child_name, IFNeuron(config.initial_membrane))
                replaced.append(full)
    if not replaced:
        raise ValueError("no nn.ReLU module to convert (a functional relu cannot be replaced; add "
                         "[act_sparsity] relufy = true for smooth activations)")
    return replaced


def _level(values: list[torch.Tensor], config: SpikingConfig) -> float:
    flat = torch.cat([v.flatten() for v in values]).double().numpy()
    level = float(flat.max()) if config.norm == "max" else float(np.percentile(flat, config.percentile))
    return level if level > 0 else 1.0


def balance_thresholds(model: nn.Module, batches: Sequence[Any], config: SpikingConfig) -> dict[str, float]:
    """Each IF threshold from its ReLU's outputs on ``batches`` (the ANN run), and the input encoder's from
    |input|: their max, or the configured percentile. Returns {layer: threshold}, "(input)" for the encoder."""
    set_steps(model, 0)
    seen: dict[str, list[torch.Tensor]] = {n: [] for n in if_neurons(model)}
    inputs: list[torch.Tensor] = []
    handles = [m.register_forward_hook(lambda _m, _a, out, n=n: seen[n].append(out.detach()))
               for n, m in if_neurons(model).items()]
    was = model.training
    model.eval()
    try:
        with torch.no_grad(), uncounted():
            for batch in batches:
                inputs.append(batch.abs())
                run_model(model, batch)
    finally:
        for h in handles:
            h.remove()
        model.train(was)
    out = {}
    for name, neuron in if_neurons(model).items():
        neuron.threshold.fill_(_level(seen[name], config))
        out[name] = float(neuron.threshold)
    getattr(model, _INPUT_THRESHOLD).fill_(_level(inputs, config))
    out["(input)"] = float(getattr(model, _INPUT_THRESHOLD))
    return out


class SpikingConversion(Technique):
    """The live handle: balances thresholds after training and reports them."""

    name = "spiking"

    def __init__(self, config: SpikingConfig, replaced: list[str]) -> None:
        self.config, self.replaced = config, replaced
        self.thresholds: dict[str, float] = {}

    def finish(self, model: nn.Module, context: ApplyContext) -> None:
        batches = [x for x, _ in context.train_batches()] if context.train_batches else [context.example_input]
        self.thresholds = balance_thresholds(model, batches, self.config)

    def report(self, model: nn.Module) -> dict[str, Any]:
        thresholds = self.thresholds or {n: float(m.threshold) for n, m in if_neurons(model).items()}
        return {"neurons": self.replaced, "norm": self.config.norm,
                "percentile": self.config.percentile if self.config.norm == "percentile" else None,
                "reset": self.config.reset, "initial_membrane": self.config.initial_membrane,
                "thresholds": thresholds, "steps": list(self.config.steps)}


@register(SpikingConfig)
def _apply_spiking(model: nn.Module, config: SpikingConfig, context: ApplyContext) -> SpikingConversion:
    _check_model(model)
    replaced = _convert_relus(model, config)
    if _INPUT_THRESHOLD not in model._buffers:
        model.register_buffer(_INPUT_THRESHOLD, torch.zeros(()))
    for module in model.modules():
        if isinstance(module, (nn.Conv1d, nn.Conv2d)):
            module.wattless_exact_events = True  # border spikes reach fewer outputs: count them exactly
    return SpikingConversion(config, replaced)


@register(SpikingConfig, step="convert")
def _convert_spiking(model: nn.Module, config: SpikingConfig | None) -> None:
    """Nothing to do: the IF neurons and their thresholds are the deployed form (set_steps picks T)."""
