"""Quantization-aware training: Linear and Conv layers that compute with fake-quantized integers.

    handle = apply_(model, QuantConfig(weight_bits=4, act_bits=8), context)  # steps set on example_input
    ... train as usual: the step sizes are nn.Parameters the optimiser learns with the weights
    handle.report(model)                         # bits per layer
    q, scale = integer_weights(model.fc)         # the exact int8 codes and scales, for export

Every nn.Linear / nn.Conv1d / nn.Conv2d becomes its Quant* subclass in place (``__class__`` swapped, as
torch's parametrize does), so parameters keep their names and values and optimisers keep their references.
A quantized layer rounds its input and the weight it reads from ``self.weight`` at every forward, so a
pruning parametrization on ``weight`` composes in either order, and a zero weight stays exactly zero.

Step sizes follow LSQ (Esser et al., "Learned Step Size Quantization", ICLR 2020, arXiv:1902.08153):
learned, initialised to 2 mean|x| / sqrt(Qp) (capped at max|x| / Qp, see _lsq_init), with their gradient
scaled by g = 1 / sqrt(N Qp).

Options for pretrained transformers (``recipes/minilm-int8.toml``): ``act_granularity="token"`` rounds each row
of a Linear's input on its own [min, max] grid at run time (dynamic, asymmetric; ``act_grid="symmetric"``: on
its own max|x| grid, no zero point), ``smooth=a`` applies
SmoothQuant's per-channel factors (computed once from training batches, shared by layers reading one tensor),
and ``weight_step_init="max"`` starts learned weight steps where nothing clips.

State dict keys per layer: ``weight``, ``bias``, ``weight_step`` (learned steps only), ``act_step``,
``act_signed`` (per-tensor activations only), ``smooth_factor`` (smoothed layers only). A float checkpoint loads into a quantized model with strict=True; its steps are then
re-initialised at the next forward.
"""

from __future__ import annotations

import math
from collections.abc import Collection, Sequence
from fnmatch import fnmatchcase
from typing import Any, ClassVar, Literal

import torch
import torch.nn.functional as F
from pydantic import BaseModel, ConfigDict, Field, model_serializer, model_validator
from torch import nn
from torch.nn.utils import parametrize

from wattless.energy.count import counting, run_model, uncounted
from wattless.errors import InputError, WattlessError
from wattless.techniques.base import ApplyContext, Technique, TechniqueConfig, numbers_are_numbers, register

__all__ = [
    "LayerBits", "QuantConfig", "Quantization", "QuantizeError", "QuantLinear", "QuantConv1d", "QuantConv2d",
    "integer_weights", "act_scale", "is_quantized", "freeze_quantizers", "ptq_int8_",
]


class QuantizeError(WattlessError):
    """A quantization config that names no layer, or a layer that cannot be quantized or read out."""


class LayerBits(BaseModel):
    """Bits for the layers an override glob matches; only the fields given override the config's."""

    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)
    weight_bits: int = Field(8, ge=2, le=8)
    act_bits: int | None = Field(8, ge=2, le=8)  # None: this layer's input stays float

    _numbers = model_validator(mode="before")(classmethod(numbers_are_numbers))

    @model_serializer(mode="wrap")
    def _given_only(self, handler) -> dict[str, Any]:
        """Written out (a run's recipe.toml, a search trial's seed), an override keeps only the bits it gives:
        the ones it leaves out still come from the config when it is read back."""
        return {k: v for k, v in handler(self).items() if k in self.model_fields_set}


class QuantConfig(TechniqueConfig):
    """Fake-quantize every Linear / Conv1d / Conv2d for quantization-aware training."""

    kind: ClassVar[str] = "quantize"
    weight_bits: int = Field(8, ge=2, le=8)
    act_bits: int | None = Field(8, ge=2, le=8)  # None: activations stay float
    per_channel: bool = True  # one weight step per output channel
    learn_step: bool = True  # LSQ; False: weight step = max|w| / Qp, activation step = running max
    overrides: dict[str, LayerBits] = {}  # fnmatch glob over module names -> bits; later globs win
    skip: list[str] = []  # globs of module names left in float
    # "token": a Linear's input rounded per row (one token, one vector) on a step and zero point taken from
    # that row at run time (asymmetric, dynamic); conv layers keep one learned step per tensor.
    # "dynamic": a Linear's whole input (one call) on one 8-bit asymmetric grid taken from it at run time,
    # ONNX Runtime's DynamicQuantizeLinear grid, so the export runs each product as one DynamicQuantizeMatMul
    # (the quantization inside the kernel); conv layers keep one learned step per tensor.
    act_granularity: Literal["tensor", "token", "dynamic"] = "tensor"
    # The per-token grid: "asymmetric" (each row's [min, max], a zero point per row) or "symmetric" (each
    # row's max|x| on 2^(k-1) - 1 levels each side, no zero point): the symmetric grid runs as one
    # QuantizeLinear and one integer product with no zero-point correction (docs/EXPORT.md).
    act_grid: Literal["asymmetric", "symmetric"] = "asymmetric"
    # SmoothQuant's migration strength a (Xiao et al. 2023, arXiv:2211.10438): per input channel j of a Linear,
    # s_j = max|x_j|^a / max|w_j|^(1-a) from calibration batches, and the layer computes (x / s)(s w), moving
    # activation outliers into the weights. Layers reading one tensor (Q, K, V) share one s, so it folds into
    # the op before them at deployment. None: no smoothing.
    smooth: float | None = Field(None, gt=0, lt=1)
    smooth_skip: list[str] = []  # globs of Linear layers left unsmoothed
    # Globs of Linear layers whose outlier channels are capped: after SmoothQuant's factor (where ``smooth`` is set
    # and the layer is not in smooth_skip; else from 1), a channel whose max|x_j / s_j| over the calibration
    # batches exceeds the ``outlier_quantile`` of the layer's channel maxima is divided down to it (s_j grows by
    # that ratio; its weight column is multiplied up), other channels are left as they are. For one per-call
    # grid (act_granularity "dynamic"), which spends its 256 levels on the largest value: in MiniLM one channel
    # of the [CLS] token still reaches 3x the next after SmoothQuant, and the FFN output after GELU (which cannot
    # take a factor, so it is in smooth_skip and its division runs in-graph, one Div) has neurons at 10x the rest.
    smooth_outliers: list[str] = []
    outlier_quantile: float = Field(0.9, gt=0, lt=1)
    smooth_batches: int = Field(8, ge=1)  # calibration batches for the smoothing statistics
    # Initial learned weight step: "lsq" (2 mean|w| / sqrt(Qp), capped at max|w| / Qp) or "max" (max|w| / Qp,
    # never clips: better for heavy-tailed pretrained weights at 8 bits).
    weight_step_init: Literal["lsq", "max"] = "lsq"

    @model_validator(mode="after")
    def _skip_needs_smooth(self) -> "QuantConfig":
        if self.smooth_skip and self.smooth is None:
            raise ValueError("smooth_skip is given but smooth is not set: set smooth (e.g. 0.5) or drop smooth_skip")
        if self.act_granularity == "dynamic" and self.act_bits not in (8, None):
            raise ValueError(f"act_granularity = \"dynamic\" is ONNX Runtime's 8-bit DynamicQuantizeLinear grid; "
                             f"act_bits = {self.act_bits}: set act_bits = 8 or use \"tensor\" / \"token\"")
        if self.act_grid != "asymmetric" and self.act_granularity != "token":
            raise ValueError(f"act_grid={self.act_grid!r} applies to per-token activations: set "
                             "act_granularity = \"token\" or drop act_grid")
        return self


# --- fake quantization ------------------------------------------------------------------------------

def _signed_range(bits: int) -> tuple[int, int]:
    return -(2 ** (bits - 1)), 2 ** (bits - 1) - 1


def _round_ste(x: torch.Tensor) -> torch.Tensor:
    """Round forward, identity backward (straight-through); exact: (round(x) - x) + x == round(x)."""
    return (x.round() - x).detach() + x


class _ScaleGrad(torch.autograd.Function):
    """Identity forward, gradient times g backward (LSQ's step gradient scale). The value stays exact,
    so the steps export bit-for-bit."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, g: float) -> torch.Tensor:
        ctx.g = g
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        return grad * ctx.g, None


def _lsq_init(a: torch.Tensor, qp: int) -> torch.Tensor:
    """a: (rows, N) magnitudes -> (rows,) steps. LSQ's 2 mean|x| / sqrt(Qp), capped at max|x| / Qp: at 8 bits
    LSQ's step is so coarse that most codes go unused (7.8% output error on a random MLP against 1.2%),
    and a step covering the largest value without clipping is never worse to start from."""
    return torch.minimum(2 * a.mean(1) / math.sqrt(qp), a.amax(1) / qp)


def _step_estimate(x: torch.Tensor, qp: int, method: str | float) -> torch.Tensor:
    """A step from data: 'lsq' (see _lsq_init), 'max' max|x| / Qp, or a percentile of |x| / Qp."""
    a = x.detach().abs().float().flatten()
    if method == "lsq":
        return _lsq_init(a.reshape(1, -1), qp)[0]
    if method == "max":
        return a.max() / qp
    k = max(1, min(a.numel(), round(a.numel() * float(method) / 100)))
    return a.kthvalue(k).values / qp  # torch.quantile refuses tensors over 16M elements


class _QuantMixin:
    """Fake-quantizes the input and the weight, then runs the float layer's own op on them."""

    weight_bits: int
    act_bits: int | None
    per_channel: bool
    learn_step: bool
    steps_frozen: bool
    _act_init: str | float
    _steps_ready: bool
    _signed: bool

    def _setup(self, weight_bits: int, act_bits: int | None, per_channel: bool, learn_step: bool,
               act_init: str | float, *, per_token: bool = False, smooth: torch.Tensor | None = None,
               weight_init: str = "lsq", token_grid: str = "asymmetric", dynamic: bool = False) -> None:
        self.weight_bits, self.act_bits, self.per_channel, self.learn_step = (
            weight_bits, act_bits, per_channel, learn_step)
        self._act_init, self.steps_frozen, self._steps_ready = act_init, False, False
        self.per_token = per_token and act_bits is not None and isinstance(self, nn.Linear)
        self.token_symmetric = self.per_token and token_grid == "symmetric"
        self.dynamic_tensor = dynamic and act_bits is not None and isinstance(self, nn.Linear)
        if self.dynamic_tensor and act_bits != 8:
            raise QuantizeError(f"act_granularity = \"dynamic\" rounds on ONNX Runtime's 8-bit grid; this layer's "
                                f"act_bits is {act_bits} (an override?): give it 8 bits or leave it in float")
        self._weight_init = weight_init
        self.wattless_weight_precision = f"int{weight_bits}"
        w = self.weight.detach()
        if smooth is not None:
            self.register_buffer("smooth_factor", smooth.to(w.device, w.dtype).clone())
        else:
            self.smooth_factor = None
        if learn_step:
            steps = w.shape[0] if per_channel else 1
            self.weight_step = nn.Parameter(torch.zeros(steps, dtype=w.dtype, device=w.device))
        else:
            self.register_parameter("weight_step", None)
        if act_bits is not None:
            self.wattless_act_precision = f"int{act_bits}"
        if act_bits is not None and not self.runtime_grid:
            step = torch.zeros((), dtype=w.dtype, device=w.device)
            if learn_step:
                self.act_step = nn.Parameter(step)
            else:
                self.register_buffer("act_step", step)
            self.register_buffer("act_signed", torch.zeros((), dtype=torch.bool, device=w.device))
            self._signed = False
        self._init_weight_step()

    # -- weights --------------------------------------------------------------------------------------
    @torch.no_grad()
    def _init_weight_step(self) -> None:
        if self.weight_step is None:
            return
        w = self._smoothed(self.weight.detach())
        a = w.abs().flatten(1) if self.per_channel else w.abs().reshape(1, -1)  # (steps, N)
        qp = _signed_range(self.weight_bits)[1]
        self.weight_step.copy_(a.amax(1) / qp if self._weight_init == "max" else _lsq_init(a, qp))

    def _smoothed(self, w: torch.Tensor) -> torch.Tensor:
        """The weight the layer rounds: w * s along the input channels when smoothed."""
        return w if self.smooth_factor is None else w * self.smooth_factor

    def _weight_scale(self, w: torch.Tensor) -> torch.Tensor:
        """The step each weight is rounded to, shaped (out, 1, ...) or (1, 1, ...) to broadcast over w."""
        qp = _signed_range(self.weight_bits)[1]
        if self.weight_step is None:
            a = w.detach().abs()
            s = (a.flatten(1).amax(1) if self.per_channel else a.amax().reshape(1)) / qp
        else:
            n = w[0].numel() if self.per_channel else w.numel()  # weights sharing one step
            s = _ScaleGrad.apply(self.weight_step.abs(), 1 / math.sqrt(n * qp))
        s = s.clamp_min(torch.finfo(w.dtype).tiny)  # an all-zero (pruned) channel keeps a positive step
        return s.reshape(-1, *[1] * (w.dim() - 1))

    def _weight_codes(self, w: torch.Tensor, s: torch.Tensor) -> torch.Tensor:
        qn, qp = _signed_range(self.weight_bits)
        return _round_ste((w / s).clamp(qn, qp))

    # -- activations ----------------------------------------------------------------------------------
    def _act_range(self) -> tuple[int, int]:
        if self._signed:  # a Python mirror of the act_signed buffer: no device sync per forward
            return _signed_range(self.act_bits)
        return 0, 2**self.act_bits - 1

    @torch.no_grad()
    def _observe_input(self, x: torch.Tensor) -> None:
        """Set the activation step from the first input; without LSQ, track a running max while training."""
        if not self._steps_ready:
            self._signed = bool((x < 0).any())
            self.act_signed.fill_(self._signed)
            self.act_step.copy_(_step_estimate(x, self._act_range()[1], self._act_init))
        elif self.training and not self.learn_step and not self.steps_frozen:
            self.act_step.lerp_(_step_estimate(x, self._act_range()[1], "max").to(self.act_step), 0.1)

    def _act_step_value(self, x: torch.Tensor) -> torch.Tensor:
        s = self.act_step.abs()
        if self.learn_step:
            s = _ScaleGrad.apply(s, 1 / math.sqrt(x.numel() * self._act_range()[1]))
        return s.clamp_min(torch.finfo(s.dtype).tiny)

    def _quantize_tokens(self, x: torch.Tensor) -> torch.Tensor:
        """Each row (token) of x on its own asymmetric grid: [min, max] of the row (zero included) in
        2^k - 1 steps, the zero point rounded so that 0 is exact."""
        if self.token_symmetric:
            return self._quantize_tokens_symmetric(x)
        levels = 2**self.act_bits - 1
        with torch.no_grad():
            lo, hi = x.amin(-1, keepdim=True).clamp(max=0), x.amax(-1, keepdim=True).clamp(min=0)
            s = ((hi - lo) / levels).clamp_min(torch.finfo(x.dtype).tiny)
            z = (-lo / s).round()
        return (_round_ste(x / s + z).clamp(0, levels) - z) * s

    def _quantize_tokens_symmetric(self, x: torch.Tensor) -> torch.Tensor:
        """Each row (token) of x on its own symmetric grid: s = max|x_row| / (2^(k-1) - 1), codes round(x / s)
        in [-(2^(k-1) - 1), 2^(k-1) - 1]; zero is a code, so no zero point."""
        qp = 2 ** (self.act_bits - 1) - 1
        with torch.no_grad():
            s = (x.abs().amax(-1, keepdim=True) / qp).clamp_min(torch.finfo(x.dtype).tiny)
        return _round_ste(x / s).clamp(-qp, qp) * s

    def _quantize_dynamic(self, x: torch.Tensor) -> torch.Tensor:
        """The whole input on one uint8 grid taken from it, as ONNX Runtime's DynamicQuantizeLinear:
        s = (max(x, 0) - min(x, 0)) / 255, zero point z = round(clip(-min / s, 0, 255)), codes
        clip(round(x / s) + z, 0, 255) (round half to even in both), value (code - z) * s."""
        with torch.no_grad():
            lo, hi = x.amin().clamp(max=0), x.amax().clamp(min=0)
            s = ((hi - lo) / 255).clamp_min(torch.finfo(x.dtype).tiny)
            z = (-lo / s).clamp(0, 255).round()
        return ((_round_ste(x / s) + z).clamp(0, 255) - z) * s

    @property
    def runtime_grid(self) -> bool:
        """The input's grid is taken from it at run time (per token or per call), not learned."""
        return self.per_token or self.dynamic_tensor

    def _quantize_input(self, x: torch.Tensor) -> torch.Tensor:
        if self.dynamic_tensor:
            return self._quantize_dynamic(x)
        if self.per_token:
            return self._quantize_tokens(x)
        self._observe_input(x)
        qn, qp = self._act_range()
        s = self._act_step_value(x)
        return _round_ste((x / s).clamp(qn, qp)) * s

    # -- forward and state ----------------------------------------------------------------------------
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training and self._integer_exact(x) and not counting():
            return self._integer_forward(x)
        w = self.weight  # read now: a parametrization on weight (a pruning mask) applies first
        with uncounted():  # simulated integer arithmetic: deployment never runs it
            if self.smooth_factor is not None:  # folded into the op before this layer at deployment
                x, w = x / self.smooth_factor, self._smoothed(w)
            if self.act_bits is not None:
                x = self._quantize_input(x)
            if not self._steps_ready:
                self._init_weight_step()
            self._steps_ready = True
            s = self._weight_scale(w)
            w = self._weight_codes(w, s) * s
        return self._float_op(x, w)

    def _integer_exact(self, x: torch.Tensor) -> bool:
        """Evaluation runs the integer kernel's own arithmetic (see _integer_forward) where the export has one:
        a static activation grid, steps set, float32 inputs."""
        return (self.act_bits is not None and not self.runtime_grid and self.smooth_factor is None
                and self._steps_ready and x.dtype == torch.float32)

    def _integer_forward(self, x: torch.Tensor) -> torch.Tensor:
        """The integer kernel's arithmetic: codes times codes summed exactly (float32 where no sum can pass 2^24,
        else float64), times the product of the two steps rounded once to float32, plus the bias: what
        ConvInteger / MatMulIntegerToFloat and the scale after them compute, to the bit. The float path
        (codes x step, then a float conv) sums in another order, so a value near a rounding boundary of the next
        quantizer can land on the other side, and deep nets carry that flip to their outputs. The same values
        as the training forward up to float rounding."""
        w = self.weight
        with uncounted():
            s_w = self._weight_scale(w)
            codes = self._weight_codes(w, s_w)
            qn, qp = self._act_range()
            s_x = self._act_step_value(x)
            qx = torch.round((x / s_x).clamp(qn, qp))
            bound = w[0].numel() * max(-qn, qp) * 2 ** (self.weight_bits - 1)  # the largest |sum| possible
            exact = torch.float32 if bound < 2**24 else torch.float64
            acc = self._float_op_without_bias(qx.to(exact), codes.to(exact)).to(torch.float32)
            shape = (-1,) if isinstance(self, nn.Linear) else (-1, *[1] * (acc.dim() - 2))
            y = acc * (s_x.double() * s_w.reshape(-1).double()).float().reshape(shape)
            return y if self.bias is None else y + self.bias.reshape(shape)

    def freeze_steps(self) -> None:
        """Stop learning or tracking step sizes (after training)."""
        self.steps_frozen = True
        for p in (self.weight_step, getattr(self, "act_step", None)):
            if isinstance(p, nn.Parameter):
                p.requires_grad_(False)

    def _load_from_state_dict(self, state_dict, prefix, local_metadata, strict, missing_keys,
                              unexpected_keys, error_msgs) -> None:
        seen = len(missing_keys)
        super()._load_from_state_dict(state_dict, prefix, local_metadata, strict, missing_keys,
                                      unexpected_keys, error_msgs)
        ours = {prefix + k for k in ("weight_step", "act_step", "act_signed", "smooth_factor")}
        missing = [k for k in missing_keys[seen:] if k in ours]
        for key in missing:  # a float checkpoint: keep loading, re-initialise the steps at the next forward
            missing_keys.remove(key)
        self._steps_ready = not missing
        if self.act_bits is not None and not self.runtime_grid:
            self._signed = bool(self.act_signed)

    def extra_repr(self) -> str:
        act = f"int{self.act_bits}" if self.act_bits is not None else "float"
        act += (" per token, symmetric" if self.token_symmetric else " per token") if self.per_token else ""
        act += " dynamic per call" if self.dynamic_tensor else ""
        smooth = ", smoothed" if self.smooth_factor is not None else ""
        return f"{super().extra_repr()}, weight=int{self.weight_bits}, act={act}{smooth}"


class QuantLinear(_QuantMixin, nn.Linear):
    def _float_op(self, x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        return F.linear(x, w, self.bias)

    def _float_op_without_bias(self, x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        return F.linear(x, w)


class QuantConv1d(_QuantMixin, nn.Conv1d):
    def _float_op(self, x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        return self._conv_forward(x, w, self.bias)

    def _float_op_without_bias(self, x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        return self._conv_forward(x, w, None)


class QuantConv2d(_QuantMixin, nn.Conv2d):
    def _float_op(self, x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        return self._conv_forward(x, w, self.bias)

    def _float_op_without_bias(self, x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        return self._conv_forward(x, w, None)


_QUANT_CLASSES: dict[type, type] = {nn.Linear: QuantLinear, nn.Conv1d: QuantConv1d, nn.Conv2d: QuantConv2d}


def _float_class(module: nn.Module) -> type | None:
    """nn.Linear / nn.Conv1d / nn.Conv2d exactly (a subclass may override forward), parametrized or not."""
    cls = type(module)
    if parametrize.is_parametrized(module):
        cls = cls.__bases__[0]
    return cls if cls in _QUANT_CLASSES else None


def _quant_class(module: nn.Module) -> type:
    """The class a layer becomes. A layer parametrized already (a pruning mask) keeps parametrize's
    per-module properties on top of the quantized class, so removing the mask leaves it quantized."""
    quant = _QUANT_CLASSES[_float_class(module)]
    if not parametrize.is_parametrized(module):
        return quant
    body = {k: v for k, v in vars(type(module)).items() if k not in ("__dict__", "__weakref__")}
    return type(f"Parametrized{quant.__name__}", (quant,), body)


# --- applying it to a model -------------------------------------------------------------------------

def _quantized(module: nn.Module) -> _QuantMixin:
    if not isinstance(module, _QuantMixin):
        raise QuantizeError(
            f"{type(module).__name__} is not a quantized layer: apply QuantConfig (or ptq_int8_) to the "
            "model first, and pass one of its Linear / Conv1d / Conv2d layers"
        )
    return module


def _check_globs(globs: Sequence[str], names: list[str], field: str) -> None:
    for glob in globs:
        if not any(fnmatchcase(n, glob) for n in names):
            shown = ", ".join(names[:8]) + (", ..." if len(names) > 8 else "")
            raise QuantizeError(
                f"{field} glob {glob!r} matches no Linear / Conv1d / Conv2d layer, so it would do nothing; "
                f"layers are named like: {shown or '(none)'}"
            )


def _layer_bits(name: str, config: QuantConfig) -> tuple[int, int | None]:
    wb, ab = config.weight_bits, config.act_bits
    for glob, bits in config.overrides.items():
        if fnmatchcase(name, glob):
            wb = bits.weight_bits if "weight_bits" in bits.model_fields_set else wb
            ab = bits.act_bits if "act_bits" in bits.model_fields_set else ab
    return wb, ab


def _calibrate(model: nn.Module, example_input: Any) -> None:
    """One forward in eval mode (BatchNorm statistics untouched) so every layer it reaches sets its steps."""
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            run_model(model, example_input)
    except Exception as exc:
        raise InputError(
            f"quantization runs the model once on the example input to set activation steps, and the model "
            f"rejected it: {type(exc).__name__}: {exc}"
        ) from exc
    finally:
        model.train(was_training)


@torch.no_grad()
def _smoothing_factors(model: nn.Module, layers: dict[str, nn.Module], alpha: float | None,
                       batches: list[Any], plain: Collection[str] = (), outliers: Collection[str] = (),
                       quantile: float = 0.9) -> dict[str, torch.Tensor]:
    """Smoothing factors (in_features,) per layer from max|x_j| over ``batches`` (float model). Layers fed the
    same tensor form one group with one factor: SmoothQuant's with strength ``alpha`` over the group's largest
    weight (1 for layers in ``plain``, or with alpha None), then, for layers in ``outliers``, every channel
    above the ``quantile`` of the smoothed channel maxima divided down to it."""
    amax: dict[str, torch.Tensor] = {}
    feeds: dict[str, torch.Tensor] = {}  # each layer's first input, held so no two share an address by reuse

    def hook(name: str):
        def observe(_module: nn.Module, args: tuple) -> None:
            x = args[0].detach()
            m = x.abs().reshape(-1, x.shape[-1]).amax(0).float()
            amax[name] = torch.maximum(amax[name], m) if name in amax else m
            feeds.setdefault(name, x)
        return observe

    handles = [m.register_forward_pre_hook(hook(n)) for n, m in layers.items()]
    try:
        for batch in batches:
            _calibrate(model, batch)
    finally:
        for h in handles:
            h.remove()
    groups: dict[tuple, list[str]] = {}
    for name in amax:
        x = feeds[name]
        groups.setdefault((x.data_ptr(), tuple(x.shape), x.stride()), []).append(name)
    feeds.clear()
    factors = {}
    for names in groups.values():
        x_max = torch.stack([amax[n] for n in names]).amax(0)
        for kind, chosen in (("smooth_outliers", outliers), ("smooth_skip", plain)):
            inside = sorted(n for n in names if n in chosen)
            if inside and len(inside) != len(names):
                raise QuantizeError(f"{inside} and {sorted(set(names) - set(inside))} read one tensor, which takes "
                                    f"one smoothing: put all of them in {kind} or none")
        s = torch.ones_like(x_max)
        if alpha is not None and names[0] not in plain:
            w_max = torch.stack([layers[n].weight.detach().abs().amax(0).float() for n in names]).amax(0)
            s = (x_max.clamp_min(1e-5).pow(alpha) / w_max.clamp_min(1e-5).pow(1 - alpha)).clamp(1e-5, 1e5)
        if names[0] in outliers:
            smoothed = x_max / s
            s = s * (smoothed / smoothed.quantile(quantile).clamp_min(1e-5)).clamp_min(1.0)
        factors.update({n: s for n in names})
    return factors


def _calibration_batches(context: ApplyContext | None, example_input: Any, n: int) -> list[Any]:
    """Up to n training batches (inputs only), else the example input."""
    if context is not None and context.train_batches is not None:
        found = [inputs for _, (inputs, _) in zip(range(n), context.train_batches())]
        if found:
            return found
    if example_input is None:
        raise QuantizeError("smoothing needs calibration inputs: give the context an example input or batches")
    return [example_input]


def _quantize_layers(model: nn.Module, config: QuantConfig, example_input: Any,
                     act_init: str | float, context: ApplyContext | None = None) -> "Quantization":
    if any(isinstance(m, _QuantMixin) for m in model.modules()):
        raise QuantizeError(
            "the model is quantized already; quantize a fresh float copy, and give per-layer bits through "
            "QuantConfig.overrides in one application"
        )
    layers = {n: m for n, m in model.named_modules() if _float_class(m) is not None}
    names = list(layers)
    _check_globs(config.skip, names, "skip")
    _check_globs(list(config.overrides), names, "overrides")
    _check_globs(config.smooth_skip, names, "smooth_skip")
    _check_globs(config.smooth_outliers, names, "smooth_outliers")
    left_float = [n for n in names if any(fnmatchcase(n, g) for g in config.skip)]
    if names and len(left_float) == len(names):
        raise QuantizeError(f"quantize: skip={config.skip} leaves every layer in float, so nothing is quantized; "
                            "narrow skip or drop the [quantize] section")
    outliers = {n for n in names if n not in left_float and any(fnmatchcase(n, g) for g in config.smooth_outliers)}
    plain = {n for n in names if any(fnmatchcase(n, g) for g in config.smooth_skip)}
    smoothed = {n: m for n, m in layers.items() if isinstance(m, nn.Linear) and n not in left_float
                and (n in outliers or config.smooth is not None and n not in plain)}
    factors: dict[str, torch.Tensor] = {}
    if smoothed:
        batches = _calibration_batches(context, example_input, config.smooth_batches)
        factors = _smoothing_factors(model, smoothed, config.smooth, batches, plain, outliers,
                                     config.outlier_quantile)
    for name in names:
        if name not in left_float:
            module = layers[name]
            module.__class__ = _quant_class(module)
            module._setup(*_layer_bits(name, config), config.per_channel, config.learn_step, act_init,
                          per_token=config.act_granularity == "token", smooth=factors.get(name),
                          weight_init=config.weight_step_init, token_grid=config.act_grid,
                          dynamic=config.act_granularity == "dynamic")
    if example_input is not None:
        _calibrate(model, example_input)
    return Quantization(left_float)


@register(QuantConfig)
def _apply_quantization(model: nn.Module, config: QuantConfig, context: ApplyContext) -> "Quantization":
    return _quantize_layers(model, config, context.example_input, "lsq" if config.learn_step else "max", context)


def ptq_int8_(model: nn.Module, calibration_inputs: Any, *, act_range: Literal["max", "percentile"] = "max",
              percentile: float = 99.99, skip: Sequence[str] = ()) -> "Quantization":
    """Post-training int8 in place, no training: per-channel max|w| weight steps, activation steps from the
    max (or a percentile) of |input| on ``calibration_inputs``, all frozen. The baseline QAT should beat."""
    if act_range not in ("max", "percentile"):
        raise QuantizeError(f"act_range must be 'max' or 'percentile', got {act_range!r}")
    if not 0 < percentile <= 100:
        raise QuantizeError(f"percentile must be in (0, 100], got {percentile}")
    config = QuantConfig(weight_bits=8, act_bits=8, learn_step=False, skip=list(skip))
    handle = _quantize_layers(model, config, calibration_inputs, "max" if act_range == "max" else percentile)
    handle.finish(model, None)
    return handle


def freeze_quantizers(model: nn.Module) -> None:
    """Stop learning or tracking every quantized layer's steps: its integers are final."""
    for m in model.modules():
        if isinstance(m, _QuantMixin):
            m.freeze_steps()


@register(QuantConfig, step="convert")
def _convert_quantization(model: nn.Module, config: QuantConfig | None) -> None:
    """The integer form export reads (integer_weights, act_scale): steps frozen, the layers unchanged."""
    freeze_quantizers(model)


class Quantization(Technique):
    """The live handle: freezes steps at finish, reports bits per layer."""

    name = "quantize"

    def __init__(self, left_float: list[str]) -> None:
        self.left_float = left_float

    def finish(self, model: nn.Module, context: ApplyContext | None) -> None:
        freeze_quantizers(model)

    def report(self, model: nn.Module) -> dict[str, Any]:
        modules = dict(model.named_modules())
        layers = {n: {"weight_bits": m.weight_bits, "act_bits": m.act_bits,
                      "act_granularity": "token" if m.per_token else "dynamic" if m.dynamic_tensor else "tensor",
                      "act_grid": "symmetric" if m.token_symmetric else "asymmetric",
                      "smoothed": m.smooth_factor is not None}
                  for n, m in modules.items() if isinstance(m, _QuantMixin)}
        bits = {**{n: 32 for n in self.left_float}, **{n: v["weight_bits"] for n, v in layers.items()}}
        sizes = {n: modules[n].weight.numel() for n in bits}
        total = sum(sizes.values())
        return {
            "layers": layers,
            "float_layers": list(self.left_float),
            # per weight over the layers considered, float ones at 32
            "mean_weight_bits": sum(bits[n] * sizes[n] for n in bits) / total if total else 32.0,
        }


# --- reading out integers (export) ------------------------------------------------------------------

def is_quantized(module: nn.Module) -> bool:
    """Whether ``module`` computes with integer codes (a Quant* layer): its ``weight_bits``, ``act_bits``,
    ``per_token``, ``token_symmetric`` and ``smooth_factor`` then say how, and integer_weights / act_scale read the integers."""
    return isinstance(module, _QuantMixin)


@torch.no_grad()
def integer_weights(module: nn.Module) -> tuple[torch.Tensor, torch.Tensor]:
    """The int codes (out, ...) as torch.int8 and the per-channel scales (out,) a quantized layer computes
    with: its fake-quantized weight is exactly codes * scale (broadcast over the output channel)."""
    layer = _quantized(module)
    if not layer._steps_ready:
        raise QuantizeError(
            "this layer's steps are not set: it has not run since it was quantized or since a float state "
            "dict was loaded; run one forward pass on example inputs first"
        )
    w = layer._smoothed(layer.weight)  # a smoothed layer rounds w * s (its input is divided by s)
    s = layer._weight_scale(w)  # (out, 1, ...)
    codes = layer._weight_codes(w, s)
    return codes.to(torch.int8), s.flatten().expand(w.shape[0]).clone()


@torch.no_grad()
def act_scale(module: nn.Module) -> tuple[float, int, bool]:
    """(scale, zero_point, signed) of a layer's input quantizer: codes = clamp(round(x / scale)) in
    [-2^(k-1), 2^(k-1) - 1] if signed else [0, 2^k - 1]; symmetric, so zero_point is always 0."""
    layer = _quantized(module)
    if layer.act_bits is None:
        raise QuantizeError("this layer's input is not quantized (act_bits=None): export it as float")
    if layer.runtime_grid:
        raise QuantizeError("this layer takes its input's grid at run time (per token or per call): it has no "
                            "fixed input scale")
    if not layer._steps_ready:
        raise QuantizeError(
            "this layer has not seen an input yet: run one forward pass on example inputs first"
        )
    s = layer.act_step.abs().clamp_min(torch.finfo(layer.act_step.dtype).tiny)
    return float(s), 0, bool(layer.act_signed)
