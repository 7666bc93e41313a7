"""Analog in-memory computing: layers that run as phase-change-memory crossbars, and training that knows it.

    handle = apply_(model, AnalogConfig(target="analog-pcm"), context)   # every Linear / Conv becomes a tile set
    ... train: with ``hwa`` on, each training forward injects weight and output noise and rounds through the
        converters (Joshi et al., Nature Communications 2020), so the weights learn to survive the chip
    chip = program_(model, seed=3)      # programming noise and a drift exponent per device
    chip.at(86400.0)                    # conductances one day later, 1/f read noise, global drift compensation
    ... evaluate: every inference adds read noise; clear_(model) returns to the noise-free chip

How a layer computes, with W (out, K) and the target's ``[analog]`` section (array size, DAC/ADC bits, noise):

- each output's weights are scaled by w_max = max |W_row| onto a differential pair of PCM conductances,
  G+ = g_max relu(W / w_max), G- = g_max relu(-W / w_max), programmed with the PCM model (techniques/pcm.py);
- the input is clipped to its range r (calibrated on training inputs, then tracked while training) and
  rounded by a ``dac_bits`` DAC on [-r, r];
- the K inputs are split over tiles of ``array_rows`` rows (whole input channels for a convolution); each
  tile's output gets Gaussian output noise and is rounded by an ``adc_bits`` ADC clipped at
  ``out_bound`` x r x w_max; tiles are summed digitally, scaled by the drift compensation, and the bias
  (digital) is added.

The effective weight is W plus the programmed deviation, ``W + w_max ((G+ - G+_target) - (G- - G-_target)) /
g_max``, so with every noise source at zero and ideal converters (``ideal_io``) a layer gives exactly the
digital answer. Noise and rounding are bookkeeping (``uncounted``); the energy core counts each tile's
product at the converters' precision (``wattless_weight_precision`` / ``wattless_act_precision``).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from fnmatch import fnmatchcase
from typing import Any, ClassVar, Literal

import numpy as np
import torch
import torch.nn.functional as F
from pydantic import Field, model_validator
from torch import nn
from torch.nn.utils import parametrize

from wattless.energy.count import run_model, uncounted
from wattless.energy.target import Analog, resolve_target
from wattless.techniques import pcm
from wattless.techniques.base import ApplyContext, Technique, TechniqueConfig, register
from wattless.techniques.quantize import is_quantized

__all__ = ["AnalogConfig", "AnalogTiles", "AnalogLinear", "AnalogConv1d", "AnalogConv2d", "Chip", "program_",
           "clear_", "to_digital_", "is_analog", "analog_layers", "accuracy_over_time", "TIMES_S", "device_model"]

# seconds after programming: 1 s, 1 hour, 1 day, 1 month (30 days), 1 year (365 days)
TIMES_S = (1.0, 3600.0, 86400.0, 2592000.0, 31536000.0)


class AnalogConfig(TechniqueConfig):
    kind: ClassVar[str] = "analog"
    target: str = Field("analog-pcm", description="the target whose [analog] section gives array and noise model")
    layers: list[str] = Field(default_factory=lambda: ["*"], description="globs of layer names mapped to tiles")
    skip: list[str] = Field(default_factory=list, description="globs of layers kept digital")
    hwa: bool = Field(True, description="hardware-aware training: noise and converters in every training forward")
    train_noise: Literal["pcm", "gaussian"] = Field(
        "pcm", description="pcm: each training forward reads the weights off a freshly programmed chip at a time "
        "drawn log-uniformly over times_s (the evaluation's noise model); gaussian: additive noise only")
    train_weight_noise: float = Field(0.0, ge=0, le=1, description="std of additive Gaussian weight noise injected "
                                      "while training (on top), relative to each output's max |w|")
    train_out_noise: bool = Field(True, description="the target's output noise also while training")
    train_noise_scale: float = Field(1.0, ge=0, le=10, description="training noise (the chip's error draw and the "
                                     "output noise) times this: >1 trains for a noisier chip than the evaluation's")
    seeds: int = Field(10, ge=1, le=1000, description="noise seeds (programmed chips) per evaluation time")
    times_s: list[float] = Field(default_factory=lambda: list(TIMES_S), min_length=1,
                                 description="evaluation times, seconds after programming")
    compare_without_hwa: bool = Field(False, description="also train the same recipe without noise injection "
                                      "and evaluate it on the same chips (metrics.json accuracy_without_hwa)")
    input_range_percentile: float = Field(99.9, gt=0, le=100, description="each layer's DAC range: this "
                                          "percentile of |input| on training inputs (100: the max); inputs beyond clip")
    weight_clip_sigma: float | None = Field(2.5, gt=0, description="while training with hwa, clip each output's "
                                            "weights at this many standard deviations (none: no clipping)")
    drift_compensation: bool = True
    prog_noise_scale: float = Field(1.0, ge=0)
    read_noise_scale: float = Field(1.0, ge=0, description="scales both the 1/f drift-time and per-inference read noise")
    drift_scale: float = Field(1.0, ge=0)
    out_noise_scale: float = Field(1.0, ge=0)
    ideal_io: bool = Field(False, description="true: ideal DAC and ADC (no rounding, no clipping), for studies")

    @model_validator(mode="after")
    def _times(self) -> "AnalogConfig":
        if any(t <= 0 for t in self.times_s):
            raise ValueError("times_s: every evaluation time must be > 0 seconds after programming")
        return self


@dataclass
class _Settings:
    """What one analog layer needs at run time (not in its state dict)."""

    device: Analog
    hwa: bool
    train_noise: str
    train_times_s: tuple[float, float]
    scales: pcm.NoiseScales
    compensate: bool
    train_weight_noise: float
    train_out_noise: bool
    train_noise_scale: float
    out_noise_scale: float
    ideal_io: bool
    range_percentile: float = 100.0
    tiles: list[slice] = field(default_factory=list)
    deviation: torch.Tensor | None = None  # (out, K) programmed deviation of W / w_max, None: noise-free chip
    alpha: float = 1.0  # global drift compensation
    read_noise: float = 0.0  # per-inference read noise std, relative to w_max
    gen: torch.Generator | None = None


def _percentile(x: torch.Tensor, q: float) -> float:
    flat = x.flatten()
    if q >= 100 or flat.numel() < 2:
        return float(flat.max())
    k = max(1, min(flat.numel(), int(math.ceil(q / 100 * flat.numel()))))
    return float(flat.kthvalue(k).values)


def _ste(x: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
    """q forward, identity gradient (straight-through rounding)."""
    return x + (q - x).detach()


class AnalogTiles:
    """Mixin of the analog layers: the crossbar forward over ``self.weight`` (a pruning mask applies first)."""

    input_range: torch.Tensor
    _analog: _Settings

    def _setup_analog(self, settings: _Settings) -> None:
        self._analog = settings
        if "input_range" not in self._buffers:
            self.register_buffer("input_range", torch.zeros(()))
        bits = "int8" if settings.device.dac_bits <= 8 else "int16"  # a crossbar MAC is no cheaper below 8 bits
        self.wattless_weight_precision = bits
        self.wattless_act_precision = bits

    # -- layout ----------------------------------------------------------------------------------------
    def _k_per_channel(self) -> int:
        return 1 if isinstance(self, nn.Linear) else int(np.prod(self.weight.shape[2:]))

    def _tile_slices(self, rows: int) -> list[slice]:
        """Slices of the input axis (features of a Linear, channels of a conv) that fit one tile each."""
        per = self._k_per_channel()
        if per > rows:
            raise ValueError(f"a kernel of {per} weights per input channel does not fit a {rows}-row tile")
        chunk = rows // per
        n_in = self.weight.shape[1]
        return [slice(i, min(i + chunk, n_in)) for i in range(0, n_in, chunk)]

    def _rows(self, v: torch.Tensor) -> torch.Tensor:
        """A per-output vector (out,) shaped to broadcast over this layer's output."""
        return v if isinstance(self, nn.Linear) else v.view(-1, *([1] * (self.weight.dim() - 2)))

    def _in_slice(self, x: torch.Tensor, sl: slice) -> torch.Tensor:
        return x[..., sl] if isinstance(self, nn.Linear) else x[:, sl]

    # -- converters ------------------------------------------------------------------------------------
    def _track_range(self, x: torch.Tensor) -> torch.Tensor:
        """The DAC range; while training, a moving average of each batch's percentile of |x|."""
        if self.training:
            level = _percentile(x.detach().abs(), self._analog.range_percentile)
            self.input_range.mul_(0.95).add_(0.05 * level)
        return self.input_range.clamp_min(1e-12)

    def _dac(self, x: torch.Tensor, r: torch.Tensor) -> torch.Tensor:
        levels = 2 ** (self._analog.device.dac_bits - 1) - 1
        clipped = x.clamp(-r, r)
        return _ste(x, torch.round(clipped / r * levels) / levels * r)

    def _adc(self, y: torch.Tensor, bound: torch.Tensor) -> torch.Tensor:
        levels = 2 ** (self._analog.device.adc_bits - 1) - 1
        step = bound / levels
        return _ste(y, torch.round(torch.maximum(torch.minimum(y, bound), -bound) / step) * step)

    # -- the weight the tiles compute with -------------------------------------------------------------
    def _deviation(self, shape: torch.Size) -> torch.Tensor | None:
        """Normalised deviation of the read weight from W / w_max for this forward, or None."""
        s = self._analog
        if self.training:
            if not s.hwa:
                return None
            dev = self._pcm_draw() if s.train_noise == "pcm" else None
            if s.train_weight_noise:
                extra = s.train_weight_noise * torch.randn(shape)
                dev = extra if dev is None else dev + extra
            return dev
        dev = s.deviation
        if s.read_noise and dev is not None:
            dev = dev + s.read_noise * torch.randn(shape, generator=s.gen)
        return dev

    def _pcm_draw(self) -> torch.Tensor:
        """A training draw of the chip's error (normalised, drift compensation folded in): the weights
        programmed afresh and read at a time drawn log-uniformly over the evaluation times."""
        s = self._analog
        d = s.device
        lo, hi = (math.log(t) for t in s.train_times_s)
        t_s = math.exp(lo + (hi - lo) * float(torch.rand(())))
        w_norm = (lambda w: w / w.abs().amax(1, keepdim=True).clamp_min(1e-12))(self.weight.detach().flatten(1))
        gen = torch.Generator().manual_seed(int(torch.randint(0, 2**62, ())))
        chips = [pcm.program(d.g_max_us * (sign * w_norm).clamp_min(0), d, s.scales, gen) for sign in (1, -1)]
        read = [pcm.drift(c, t_s, d, s.scales, gen) for c in chips]
        dev = ((read[0] - chips[0].g_target) - (read[1] - chips[1].g_target)) / d.g_max_us
        if s.compensate:
            programmed = ((chips[0].g_prog - chips[0].g_target) - (chips[1].g_prog - chips[1].g_target)) / d.g_max_us
            alpha = pcm.compensation(w_norm + programmed, w_norm + dev)
            dev = alpha * (w_norm + dev) - w_norm
        return dev * s.train_noise_scale

    def _out_noise(self) -> float:
        """Output noise std (units of out_bound): while training with hwa, or on a programmed chip."""
        s = self._analog
        if self.training:
            return s.device.out_noise * s.out_noise_scale * s.train_noise_scale if s.hwa and s.train_out_noise else 0.0
        return s.device.out_noise * s.out_noise_scale if s.deviation is not None else 0.0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        w = self.weight
        s = self._analog
        with uncounted():
            r = self._track_range(x)
            if self.training and not s.hwa:
                w_eff, x_in, w_max = w, x, None
            else:
                w_max = w.detach().flatten(1).abs().amax(1).clamp_min(1e-12)  # (out,)
                dev = self._deviation(w.flatten(1).shape)
                w_eff = w if dev is None else w + (w_max[:, None] * dev).view_as(w)
                x_in = x if s.ideal_io else self._dac(x, r)
        out_noise = self._out_noise()
        if w_max is None or (s.ideal_io and not out_noise):
            y = self._op(x_in, w_eff, self.bias if s.alpha == 1.0 else None)
            return y if s.alpha == 1.0 else self._finish(y, s.alpha)
        bound = self._rows(s.device.out_bound * r * w_max)
        sigma = self._rows(out_noise * r * w_max)
        y = None
        for sl in s.tiles:
            part = self._op(self._in_slice(x_in, sl), w_eff[:, sl], None)
            with uncounted():
                if out_noise:
                    part = part + sigma * torch.randn(part.shape, generator=None if self.training else s.gen)
                if not s.ideal_io:
                    part = self._adc(part, bound)
            y = part if y is None else y + part
        return self._finish(y, s.alpha)

    def _finish(self, y: torch.Tensor, alpha: float) -> torch.Tensor:
        if alpha != 1.0:
            with uncounted():
                y = y * alpha
        return y if self.bias is None else y + self._rows(self.bias)

    def extra_repr(self) -> str:
        d = self._analog.device
        return (f"{super().extra_repr()}, analog: {len(self._analog.tiles)} tile(s) of {d.array_rows} rows, "
                f"DAC {d.dac_bits} bit, ADC {d.adc_bits} bit")


class AnalogLinear(AnalogTiles, nn.Linear):
    def _op(self, x: torch.Tensor, w: torch.Tensor, b: torch.Tensor | None) -> torch.Tensor:
        return F.linear(x, w, b)


class AnalogConv1d(AnalogTiles, nn.Conv1d):
    def _op(self, x: torch.Tensor, w: torch.Tensor, b: torch.Tensor | None) -> torch.Tensor:
        return self._conv_forward(x, w, b)


class AnalogConv2d(AnalogTiles, nn.Conv2d):
    def _op(self, x: torch.Tensor, w: torch.Tensor, b: torch.Tensor | None) -> torch.Tensor:
        return self._conv_forward(x, w, b)


_ANALOG_CLASSES: dict[type, type] = {nn.Linear: AnalogLinear, nn.Conv1d: AnalogConv1d, nn.Conv2d: AnalogConv2d}


def _plain_class(module: nn.Module) -> type | None:
    cls = type(module)
    if parametrize.is_parametrized(module):
        cls = cls.__bases__[0]
    return cls if cls in _ANALOG_CLASSES else None


def _analog_class(module: nn.Module) -> type:
    """As quantize does: a parametrized layer (a pruning mask) keeps parametrize's properties on top."""
    cls = _ANALOG_CLASSES[_plain_class(module)]
    if not parametrize.is_parametrized(module):
        return cls
    body = {k: v for k, v in vars(type(module)).items() if k not in ("__dict__", "__weakref__")}
    return type(f"Parametrized{cls.__name__}", (cls,), body)


def is_analog(module: nn.Module) -> bool:
    return isinstance(module, AnalogTiles)


def analog_layers(model: nn.Module) -> dict[str, AnalogTiles]:
    return {n: m for n, m in model.named_modules() if isinstance(m, AnalogTiles)}


def device_model(target: str) -> Analog:
    found = resolve_target(target)
    if found.analog is None:
        raise ValueError(f"target {found.name!r} has no [analog] section (array size, converters, noise model); "
                         "use analog-pcm or a target file with one")
    return found.analog


def _check_conv(name: str, module: nn.Module) -> None:
    if isinstance(module, nn.Linear):
        return
    if module.groups != 1:
        raise ValueError(f"layer {name!r}: grouped convolutions (groups={module.groups}) are not mapped to tiles; "
                         "skip it")
    if module.padding_mode != "zeros":
        raise ValueError(f"layer {name!r}: padding_mode {module.padding_mode!r} is not mapped; skip it")


def _selected(model: nn.Module, config: AnalogConfig) -> dict[str, nn.Module]:
    found = {n: m for n, m in model.named_modules() if _plain_class(m) is not None or is_quantized(m)}
    for globs, key in ((config.layers, "layers"), (config.skip, "skip")):
        for g in globs:
            if g != "*" and not any(fnmatchcase(n, g) for n in found):
                raise ValueError(f"{key}: {g!r} matches no Linear / Conv layer (layers: {', '.join(found)})")
    chosen = {n: m for n, m in found.items() if any(fnmatchcase(n, g) for g in config.layers)
              and not any(fnmatchcase(n, g) for g in config.skip)}
    for name, module in chosen.items():
        if is_quantized(module):
            raise ValueError(f"layer {name!r} is quantized by [quantize] too: an analog tile's precision is its "
                             "converters'; add the layer to quantize.skip or to analog.skip")
        _check_conv(name, module)
    if not chosen:
        raise ValueError("no layer left to map onto analog tiles (check layers and skip)")
    return chosen


def _calibrate_ranges(model: nn.Module, layers: dict[str, nn.Module], batches: list[Any],
                      percentile: float) -> dict[str, float]:
    """Each layer's input range: the percentile of |input| over the calibration batches, seen on the
    digital layers (before they become tiles)."""
    seen: dict[str, list[torch.Tensor]] = {n: [] for n in layers}

    def hook(name: str):
        def observe(_m: nn.Module, args: tuple) -> None:
            seen[name].append(args[0].detach().abs().flatten())
        return observe

    handles = [m.register_forward_pre_hook(hook(n)) for n, m in layers.items()]
    was = model.training
    model.eval()
    try:
        with torch.no_grad(), uncounted():
            for inputs in batches:
                run_model(model, inputs)
    finally:
        for h in handles:
            h.remove()
        model.train(was)
    return {name: (_percentile(torch.cat(v), percentile) if v else 1.0) or 1.0 for name, v in seen.items()}


def _batches(context: ApplyContext) -> list[Any]:
    if context.train_batches is not None:
        return [inputs for inputs, _ in context.train_batches()]
    return [context.example_input]


class AnalogTraining(Technique):
    """The live handle: which layers are tiles, how many tiles, and the noise model's settings."""

    name = "analog"

    def __init__(self, config: AnalogConfig, layers: dict[str, nn.Module]) -> None:
        self.config, self.layer_names = config, list(layers)
        self.layers = layers

    def on_step(self, step: int, total_steps: int) -> None:
        """Clip each output's weights at weight_clip_sigma standard deviations (hwa only): fewer outliers set
        w_max, so more of every row uses the conductance range the noise is relative to."""
        k = self.config.weight_clip_sigma
        if not self.config.hwa or k is None:
            return
        with torch.no_grad():
            for module in self.layers.values():
                w = module.weight
                rows = w.flatten(1)
                bound = (k * rows.std(1, keepdim=True)).view(-1, *([1] * (w.dim() - 1)))
                clipped = torch.maximum(torch.minimum(w, bound), -bound)
                _set_weight(module, clipped)

    def report(self, model: nn.Module) -> dict[str, Any]:
        layers = analog_layers(model)
        d = device_model(self.config.target)
        return {
            "target": self.config.target, "hwa": self.config.hwa, "train_noise": self.config.train_noise,
            "train_weight_noise": self.config.train_weight_noise,
            "layers": {n: {"tiles": len(m._analog.tiles) * math.ceil(m.weight.shape[0] / d.array_cols),
                           "input_range": float(m.input_range)} for n, m in layers.items()},
            "array": [d.array_rows, d.array_cols], "dac_bits": d.dac_bits, "adc_bits": d.adc_bits,
        }


def _set_weight(module: nn.Module, value: torch.Tensor) -> None:
    """Write the trained weight (under a pruning parametrization: its original, masked zeros stay zero)."""
    if parametrize.is_parametrized(module, "weight"):
        original = module.parametrizations.weight.original
        original.copy_(torch.where(value == 0, original, value))
    else:
        module.weight.copy_(value)


@register(AnalogConfig)
def _apply_analog(model: nn.Module, config: AnalogConfig, context: ApplyContext) -> AnalogTraining:
    device = device_model(config.target)
    layers = _selected(model, config)
    ranges = _calibrate_ranges(model, layers, _batches(context), config.input_range_percentile)
    for name, module in layers.items():
        module.__class__ = _analog_class(module)
        settings = _Settings(device, config.hwa, config.train_noise, (min(config.times_s), max(config.times_s)),
                             pcm.NoiseScales(config.prog_noise_scale, config.read_noise_scale, config.drift_scale),
                             config.drift_compensation, config.train_weight_noise, config.train_out_noise,
                             config.train_noise_scale,
                             config.out_noise_scale, config.ideal_io, config.input_range_percentile)
        module._setup_analog(settings)
        settings.tiles = module._tile_slices(device.array_rows)
        module.input_range.fill_(ranges[name])
    return AnalogTraining(config, layers)


@register(AnalogConfig, step="convert")
def _convert_analog(model: nn.Module, config: AnalogConfig | None) -> None:
    """The deployed form is the programmed chip itself: the layers stay tiles (program_ them to evaluate)."""


# --- programming a chip and reading it over time ------------------------------------------------------

@dataclass
class _LayerChip:
    module: AnalogTiles
    w_max: torch.Tensor  # (out, 1)
    w_norm: torch.Tensor  # (out, K) W / w_max
    plus: pcm.Programmed
    minus: pcm.Programmed


class Chip:
    """One programmed chip (one noise seed): ``at(t_s)`` sets every layer's conductances t_s seconds after
    programming, with 1/f read noise and global drift compensation; every inference then adds read noise."""

    def __init__(self, model: nn.Module, seed: int, scales: pcm.NoiseScales, compensate: bool = True) -> None:
        self.seed, self.scales, self.compensate = seed, scales, compensate
        self.gen = torch.Generator().manual_seed(seed)
        self.layers: list[_LayerChip] = []
        with torch.no_grad():
            for module in analog_layers(model).values():
                self.layers.append(self._program(module))

    def _program(self, module: AnalogTiles) -> _LayerChip:
        d = module._analog.device
        w = module.weight.detach().flatten(1)
        w_max = w.abs().amax(1, keepdim=True).clamp_min(1e-12)
        w_norm = w / w_max
        plus = pcm.program(d.g_max_us * w_norm.clamp_min(0), d, self.scales, self.gen)
        minus = pcm.program(d.g_max_us * (-w_norm).clamp_min(0), d, self.scales, self.gen)
        return _LayerChip(module, w_max, w_norm, plus, minus)

    def at(self, t_s: float) -> "Chip":
        gen = torch.Generator().manual_seed(self.seed * 1_000_003 + int(t_s))
        with torch.no_grad():
            for layer in self.layers:
                d = layer.module._analog.device
                g_plus = pcm.drift(layer.plus, t_s, d, self.scales, gen)
                g_minus = pcm.drift(layer.minus, t_s, d, self.scales, gen)
                deviation = ((g_plus - layer.plus.g_target) - (g_minus - layer.minus.g_target)) / d.g_max_us
                s = layer.module._analog
                s.deviation, s.gen = deviation, gen
                s.read_noise = d.w_noise * self.scales.read
                s.alpha = self._alpha(layer) if self.compensate else 1.0
        return self

    @staticmethod
    def _alpha(layer: _LayerChip) -> float:
        d = layer.module._analog.device
        programmed = (layer.plus.g_prog - layer.plus.g_target) - (layer.minus.g_prog - layer.minus.g_target)
        right_after = layer.w_norm + programmed / d.g_max_us
        now = layer.w_norm + layer.module._analog.deviation
        return pcm.compensation(layer.w_max * right_after, layer.w_max * now)


def program_(model: nn.Module, seed: int = 0, *, prog: float = 1.0, read: float = 1.0, drift: float = 1.0,
             compensate: bool = True) -> Chip:
    """Program every analog layer of ``model`` (one chip, one noise seed); call ``.at(t_s)`` to read it."""
    if not analog_layers(model):
        raise ValueError("the model has no analog layers: apply AnalogConfig first")
    return Chip(model, seed, pcm.NoiseScales(prog, read, drift), compensate)


def clear_(model: nn.Module) -> None:
    """Back to the noise-free chip (converters only)."""
    for module in analog_layers(model).values():
        s = module._analog
        s.deviation, s.alpha, s.read_noise, s.gen = None, 1.0, 0.0, None


def to_digital_(model: nn.Module) -> nn.Module:
    """Every analog layer back to its plain Linear / Conv class (same tensors), in place."""
    for module in analog_layers(model).values():
        plain = next(c for c in type(module).__mro__ if c in _ANALOG_CLASSES)
        if parametrize.is_parametrized(module):
            body = {k: v for k, v in vars(type(module)).items() if k not in ("__dict__", "__weakref__")}
            plain = type(f"Parametrized{plain.__name__}", (plain,), body)
        module.__class__ = plain
        for attr in ("wattless_weight_precision", "wattless_act_precision", "_analog"):
            module.__dict__.pop(attr, None)
        module._buffers.pop("input_range", None)
    return model


def accuracy_over_time(model: nn.Module, score: Callable[[nn.Module], float], config: AnalogConfig
                       ) -> dict[str, Any]:
    """``score(model)`` (the workload's metric on its test split) on ``config.seeds`` programmed chips at each
    of ``config.times_s``: {"seeds", "accuracy": {"<t>": {"mean", "std", "min", "max"}}}, times as whole
    seconds. The same seeds program the same conductance errors, whatever the model."""
    per_time: dict[float, list[float]] = {t: [] for t in config.times_s}
    was = model.training
    model.eval()
    try:
        for seed in range(config.seeds):
            chip = program_(model, seed, prog=config.prog_noise_scale, read=config.read_noise_scale,
                            drift=config.drift_scale, compensate=config.drift_compensation)
            for t in config.times_s:
                chip.at(t)
                per_time[t].append(float(score(model)))
    finally:
        clear_(model)
        model.train(was)
    return {"seeds": config.seeds, "accuracy": {_time_key(t): _stats(v) for t, v in per_time.items()}}


def _time_key(t: float) -> str:
    return str(int(t)) if float(t).is_integer() else repr(t)


def _stats(values: Sequence[float]) -> dict[str, float]:
    a = np.asarray(values, dtype=float)
    return {"mean": float(a.mean()), "std": float(a.std(ddof=1)) if len(a) > 1 else 0.0,
            "min": float(a.min()), "max": float(a.max())}
