"""Weight-only quantization of a language model's Linear layers: k-bit integer codes (2..8) with a scale and a
zero point per group of ``group_size`` input columns, calibrated by GPTQ (Frantar et al., 2023: each column
rounded in turn, its error spread over the columns not yet rounded through the inverse Hessian of the
layer's inputs on calibration text) or by plain round-to-nearest (``method = "rtn"``, the baseline).

    [weight_only]
    bits = 4
    group_size = 128
    zero_point = "int"         # or "float": each group's own minimum (llama.cpp's Q4_1 grid)
    symmetric = false          # true: codes around 2^(bits-1), scale max|w| / (2^(bits-1) - 1) (Q8_0's grid)
    method = "gptq"            # or "rtn"
    overrides = { "lm_head" = { bits = 8, group_size = 32, symmetric = true } }
    calibration_windows = 32   # windows of the workload's calibration split the Hessians are taken on
    skip = []                  # globs of Linear layers left in float
    distill_steps = 0          # > 0: then the scales learn from the model before quantization (techniques/lm_distill.py)

Every nn.Linear (the LM head included; a head tied to the embedding is untied, the embedding stays float)
becomes a ``WeightOnlyLinear`` in place: its ``weight`` holds the dequantized weights, so it computes with
exactly what the integer codes give, and buffers ``codes`` (out, in) uint8, ``scales`` and ``zeros``
(out, ceil(in / group)) keep the deployed form, read by export through ``packed_weights``. The energy core sees
``wattless_weight_precision = "int{bits}"``: weights read at k bits, activations float.

The Hessians come from one pass of the float model over the calibration windows (every layer sees float
inputs), which is how the layers are calibrated independently of each other.
"""

from __future__ import annotations

import copy

import fnmatch
from collections.abc import Callable, Iterator
from typing import Any, ClassVar, Literal

import torch
from pydantic import BaseModel, ConfigDict, Field, model_validator
from torch import nn

from wattless.energy.count import uncounted
from wattless.techniques.base import ApplyContext, Technique, TechniqueConfig, register

__all__ = ["calibration_batches", "WeightOnlyConfig", "WeightOnlyLinear", "WeightOnly", "gptq_quantize", "rtn_quantize", "dequantize",
           "packed_weights", "is_weight_only", "untie"]

_BLOCK = 128  # columns GPTQ updates lazily at once


class Grid(BaseModel):
    """How one layer's weights are rounded: bits, group size, and the zero point's kind."""

    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)
    bits: int = Field(4, ge=2, le=8, strict=True)
    group_size: int = Field(128, ge=8, strict=True, description="input columns sharing a scale and zero point")
    symmetric: bool = Field(False, description="codes -(2^(b-1)-1)..2^(b-1)-1 around a zero point of 2^(b-1)")
    zero_point: Literal["int", "float"] = Field(
        "int", description="int: an integer code (the grid holds 0 exactly); float: the group's own minimum")

    @model_validator(mode="after")
    def _power_of_two(self) -> "Grid":
        if self.group_size & (self.group_size - 1):
            raise ValueError(f"group_size must be a power of 2 (16, 32, 64, 128...), got {self.group_size}")
        if self.symmetric and self.zero_point == "float":
            raise ValueError("symmetric grids have an integer zero point: leave zero_point out or set it to int")
        return self


class WeightOnlyConfig(Grid, TechniqueConfig):
    kind: ClassVar[str] = "weight_only"
    method: Literal["gptq", "rtn"] = "gptq"
    damp: float = Field(0.01, gt=0, le=1, strict=True, description="GPTQ: added to H's diagonal, times its mean")
    calibration_windows: int = Field(32, ge=1, strict=True)
    skip: tuple[str, ...] = ()
    overrides: dict[str, Grid] = Field(default_factory=dict, description="glob of Linear names -> its own grid")
    distill_steps: int = Field(0, ge=0, strict=True, description="Adam steps distilling the scales from the model "
                               "before quantization (the teacher given, or the reference) on calibration windows")
    distill_lr: float = Field(1e-4, gt=0)

    def grid(self, name: str) -> Grid:
        """The layer's grid: the first override whose glob matches its name, else the config's own."""
        for glob, grid in self.overrides.items():
            if fnmatch.fnmatchcase(name, glob):
                return grid
        return Grid(bits=self.bits, group_size=self.group_size, symmetric=self.symmetric, zero_point=self.zero_point)


# --- the quantizer -------------------------------------------------------------------------------------------

def _grid(w: torch.Tensor, grid: Grid) -> tuple[torch.Tensor, torch.Tensor]:
    """Scale and zero point (out,) of each row of one group w (out, g)."""
    maxq = 2**grid.bits - 1
    lo, hi = w.min(1).values, w.max(1).values
    if grid.symmetric:  # e.g. 8 bits: codes 1..255 around 128, scale max|w| / 127 (llama.cpp's Q8_0 grid)
        scale = torch.maximum(-lo, hi) / (2 ** (grid.bits - 1) - 1)
        zero = torch.full_like(scale, 2 ** (grid.bits - 1))
    elif grid.zero_point == "float":  # the group's own [min, max] (llama.cpp's Q4_1 grid): 0 need not lie on it
        scale = (hi - lo) / maxq
        zero = -lo / torch.where(scale > 0, scale, torch.ones_like(scale))
    else:
        lo, hi = lo.clamp(max=0), hi.clamp(min=0)
        scale = (hi - lo) / maxq
        zero = torch.round(-lo / scale.clamp(min=1e-12))
    scale = torch.where(scale > 0, scale, torch.ones_like(scale))
    return scale, zero


def _round(w: torch.Tensor, scale: torch.Tensor, zero: torch.Tensor, bits: int) -> torch.Tensor:
    """Integer codes of w (out,) or (out, g) on the grid (scale, zero), as float."""
    if w.dim() == 2:
        scale, zero = scale[:, None], zero[:, None]
    return torch.clamp(torch.round(w / scale + zero), 0, 2**bits - 1)


def rtn_quantize(w: torch.Tensor, grid: Grid, mask: torch.Tensor | None = None
                 ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Round to nearest: (codes (out, in), scales and zeros (out, ceil(in / group))); a last group may be
    shorter (what MatMulNBits does with K not a multiple of its block)."""
    w, group = w.float(), grid.group_size
    codes, scales, zeros = [], [], []
    for j in range(0, w.shape[1], group):
        s, z = _grid(w[:, j : j + group], grid)
        c = _round(w[:, j : j + group], s, z, grid.bits)
        codes.append(c if mask is None else torch.where(mask[:, j : j + group], c, z[:, None].expand_as(c)))
        scales.append(s)
        zeros.append(z)
    return torch.cat(codes, 1), torch.stack(scales, 1), torch.stack(zeros, 1)


def _inverse_hessian(h: torch.Tensor, w: torch.Tensor, damp: float) -> torch.Tensor:
    """The upper Cholesky factor of H^-1 (after dead inputs get a unit diagonal and H a damped one)."""
    h = h.clone().double()
    dead = torch.diag(h) == 0
    h[dead, dead] = 1.0
    w[:, dead] = 0.0
    h += damp * torch.mean(torch.diag(h)) * torch.eye(h.shape[0], dtype=h.dtype)
    inv = torch.cholesky_inverse(torch.linalg.cholesky(h))
    return torch.linalg.cholesky(inv, upper=True).float()


def gptq_quantize(w: torch.Tensor, h: torch.Tensor, grid: Grid, damp: float = 0.01, mask: torch.Tensor | None = None
                  ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """GPTQ of one layer's weight w (out, in) against its inputs' Hessian h = X^T X (in, in): the same
    (codes, scales, zeros) as rtn_quantize, each group's grid taken from its columns as updated so far.
    ``mask`` (out, in) bool: weights pruned to 0 stay 0 (their code is the zero point; the updates GPTQ
    spreads onto them are dropped, as SparseGPT's fixed mask)."""
    w = w.detach().float().clone()
    out, k = w.shape
    bits, group = grid.bits, grid.group_size
    hinv = _inverse_hessian(h, w, damp)
    codes, scales, zeros = torch.zeros_like(w), [], []
    block = max(_BLOCK, group)
    for i1 in range(0, k, block):
        i2 = min(i1 + block, k)
        w1, err1, hinv1 = w[:, i1:i2].clone(), torch.zeros(out, i2 - i1), hinv[i1:i2, i1:i2]
        for i in range(i2 - i1):
            if (i1 + i) % group == 0:
                s, z = _grid(w1[:, i : i + group], grid)
                scales.append(s)
                zeros.append(z)
            if mask is not None:
                w1[:, i] *= mask[:, i1 + i]
            q = _round(w1[:, i], s, z, bits)
            codes[:, i1 + i] = q
            err = (w1[:, i] - s * (q - z)) / hinv1[i, i]
            w1[:, i:] -= err[:, None] * hinv1[i, i:][None, :]
            err1[:, i] = err
        w[:, i2:] -= err1 @ hinv[i1:i2, i2:]
    return codes, torch.stack(scales, 1), torch.stack(zeros, 1)


def dequantize(codes: torch.Tensor, scales: torch.Tensor, zeros: torch.Tensor, group: int) -> torch.Tensor:
    """(codes - zero) * scale of each weight, (out, in)."""
    k = codes.shape[1]
    return (codes - zeros.repeat_interleave(group, 1)[:, :k]) * scales.repeat_interleave(group, 1)[:, :k]


def group_bits(bits: int, group_size: int, zero_point: str, symmetric: bool = False) -> float:
    """Bits per weight of a group's metadata as deployed (priced by the energy core beside the codes): an fp16
    scale, and an fp16 (float) or ``bits``-wide (integer) zero point unless the grid is symmetric."""
    zero = 0 if symmetric else (16 if zero_point == "float" else bits)
    return (16 + zero) / group_size


# --- the layer ---------------------------------------------------------------------------------------------

class WeightOnlyLinear(nn.Linear):
    """A Linear computing with dequantized k-bit weights; ``codes``, ``scales``, ``zeros`` are its deployed form."""

    bits: int
    group_size: int

    def set_quantized(self, codes: torch.Tensor, scales: torch.Tensor, zeros: torch.Tensor, grid: Grid) -> None:
        bits, group_size = grid.bits, grid.group_size
        self.bits, self.group_size, self.zero_point, self.grid = bits, group_size, grid.zero_point, grid
        self.wattless_weight_precision = f"int{bits}"
        self.wattless_weight_group_bits = group_bits(bits, group_size, grid.zero_point, grid.symmetric)
        for name, value in (("codes", codes.to(torch.uint8)), ("scales", scales.float()), ("zeros", zeros.float() if grid.zero_point == "float" else zeros.to(torch.uint8))):
            if name in self._buffers:
                self._buffers[name] = value
            else:
                self.register_buffer(name, value)
        with torch.no_grad():
            self.weight = nn.Parameter(dequantize(codes.float(), scales.float(), zeros.float(), group_size).to(self.weight.dtype),
                                       requires_grad=False)

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, bits={self.bits}, group_size={self.group_size}"


def is_weight_only(module: nn.Module) -> bool:
    return isinstance(module, WeightOnlyLinear) and hasattr(module, "codes")


def packed_weights(module: nn.Module) -> dict[str, Any]:
    """The deployed form export reads: codes (out, in) uint8 numpy, scales and zeros (out, ceil(in / group);
    zeros uint8 codes, or float32 for a float zero point), bits, group_size."""
    return {"codes": module.codes.numpy(), "scales": module.scales.numpy(), "zeros": module.zeros.numpy(),
            "bits": module.bits, "group_size": module.group_size}


# --- prepare ------------------------------------------------------------------------------------------------

def _targets(model: nn.Module, config: WeightOnlyConfig) -> dict[str, nn.Linear]:
    layers = {name: m for name, m in model.named_modules() if type(m) is nn.Linear}
    for glob in (*config.skip, *config.overrides):
        if not any(fnmatch.fnmatchcase(name, glob) for name in layers):
            raise ValueError(f"glob {glob!r} (skip or overrides) matches no Linear layer; layers are e.g. {', '.join(list(layers)[:4])}")
    chosen = {n: m for n, m in layers.items() if not any(fnmatch.fnmatchcase(n, g) for g in config.skip)}
    return chosen


def calibration_batches(context: ApplyContext, windows: int) -> Iterator[Any]:
    """Batches of the calibration windows (the train split), else the example input alone."""
    if context.train_batches is None:
        yield context.example_input
        return
    seen = 0
    for inputs, _ in context.train_batches():
        if seen >= windows:
            return
        yield inputs[: windows - seen] if isinstance(inputs, torch.Tensor) else inputs
        seen += len(inputs) if isinstance(inputs, torch.Tensor) else 1


def observe_inputs(model: nn.Module, layers: dict[str, nn.Linear], batches: Iterator[Any],
                   observe: Callable[[str, torch.Tensor], None]) -> None:
    """Run ``batches`` through ``model`` (uncounted, no grad) calling ``observe(name, x)`` with each listed
    layer's input rows x (tokens, in): the calibration pass GPTQ and Wanda share."""

    def hook(name: str):
        def pre(_m: nn.Module, args: tuple) -> None:  # returns None: the layer's input is left as it is
            observe(name, args[0].detach().flatten(0, -2).float())
        return pre

    handles = [m.register_forward_pre_hook(hook(n)) for n, m in layers.items()]
    try:
        with torch.no_grad(), uncounted():
            for batch in batches:
                model(**batch) if isinstance(batch, dict) else model(batch)
    finally:
        for h in handles:
            h.remove()


def _hessians(model: nn.Module, layers: dict[str, nn.Linear], batches: Iterator[Any]) -> dict[str, torch.Tensor]:
    """X^T X of every layer's inputs (in, in), summed over every calibration token."""
    hs = {name: torch.zeros(m.in_features, m.in_features) for name, m in layers.items()}
    observe_inputs(model, layers, batches, lambda name, x: hs[name].addmm_(x.T, x))
    return hs


def untie(model: nn.Module, layers: dict[str, nn.Linear]) -> None:
    """A head sharing the embedding's Parameter gets its own copy, so quantizing it leaves the embedding."""
    shared = {id(p) for m in model.modules() if isinstance(m, nn.Embedding) for p in m.parameters(recurse=False)}
    for m in layers.values():
        if id(m.weight) in shared:
            m.weight = nn.Parameter(m.weight.detach().clone())
            config = getattr(model, "config", None)
            if config is not None and getattr(config, "tie_word_embeddings", False):
                config.tie_word_embeddings = False  # so no later tie_weights() ties them again


class WeightOnly(Technique):
    name = "weight_only"

    def __init__(self, config: WeightOnlyConfig, layers: list[str], errors: dict[str, float]) -> None:
        self.config, self.layers, self.errors = config, layers, errors

    def report(self, model: nn.Module) -> dict[str, Any]:
        return {"bits": self.config.bits, "group_size": self.config.group_size, "method": self.config.method,
                "layers": len(self.layers),
                "mean_relative_weight_error": sum(self.errors.values()) / max(len(self.errors), 1),
                **({"distill_loss_first": self.distill_losses[0], "distill_loss_last": self.distill_losses[-1]}
                   if getattr(self, "distill_losses", None) else {})}


def quantize_layers_(model: nn.Module, config: WeightOnlyConfig, context: ApplyContext) -> WeightOnly:
    layers = _targets(model, config)
    teacher = (context.teacher or copy.deepcopy(model)).eval() if config.distill_steps else None
    hs = _hessians(model, layers, calibration_batches(context, config.calibration_windows)) if config.method == "gptq" else {}
    untie(model, layers)
    errors = {}
    for name, m in layers.items():
        w, grid, mask = m.weight.detach().float(), config.grid(name), getattr(m, "wattless_sparse_mask", None)
        if mask is not None and grid.zero_point == "float":
            raise ValueError(f"layer {name} is sparse, and 0 is not on a float-zero-point grid: use zero_point = \"int\"")
        if config.method == "gptq":
            parts = gptq_quantize(w, hs.pop(name), grid, config.damp, mask)
        else:
            parts = rtn_quantize(w, grid, mask)
        m.__class__ = WeightOnlyLinear
        m.set_quantized(*parts, grid)
        errors[name] = float((m.weight.float() - w).norm() / w.norm().clamp(min=1e-12))
    handle = WeightOnly(config, list(layers), errors)
    if teacher is not None:
        from wattless.techniques.lm_distill import distill_scales_

        batches = list(calibration_batches(context, config.calibration_windows))
        handle.distill_losses = distill_scales_(model, teacher, batches, steps=config.distill_steps,
                                                lr=config.distill_lr)
    return handle


@register(WeightOnlyConfig)
def _prepare(model: nn.Module, config: WeightOnlyConfig, context: ApplyContext) -> WeightOnly:
    return quantize_layers_(model, config, context)


@register(WeightOnlyConfig, step="convert")
def _convert(model: nn.Module, config: WeightOnlyConfig | None) -> None:
    """Already in its deployed form: the codes are fixed at prepare; nothing trains them."""
