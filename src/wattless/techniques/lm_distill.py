"""A short distillation after weight-only quantization: the group scales (and float zero points) of every
k-bit layer learn to match the float reference's next-token distribution on calibration text, the codes
fixed, every other weight frozen (the scale training of OmniQuant / EfficientQAT's end-to-end step, small).

    [weight_only]
    bits = 3
    distill_steps = 50      # 0: none (the default)
    distill_lr = 1e-4

The loss is KL(reference || quantized) of the logits at every position, averaged over tokens. The learned
scales are the layer's deployed form (export reads them as it reads GPTQ's).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from wattless.energy.count import uncounted

__all__ = ["distill_scales_", "token_kl"]


def token_kl(student: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
    """KL(teacher || student) of logits (B, T, V), averaged over the B x T positions."""
    s, t = F.log_softmax(student.float(), -1).flatten(0, -2), F.log_softmax(teacher.float(), -1).flatten(0, -2)
    return F.kl_div(s, t, log_target=True, reduction="batchmean")


def _logits(model: nn.Module, ids: torch.Tensor) -> torch.Tensor:
    out = model(ids)
    return out.logits if hasattr(out, "logits") else out


def distill_scales_(model: nn.Module, teacher: nn.Module, batches: Sequence[torch.Tensor], *, steps: int,
                    lr: float) -> list[float]:
    """Train the scales (and float zeros) of ``model``'s weight-only layers for ``steps`` Adam steps over
    ``batches`` (token windows (B, T), cycled); returns the loss of each step."""
    from wattless.techniques.weight_only import dequantize, is_weight_only

    layers = [m for m in model.modules() if is_weight_only(m)]
    learned = {m: [nn.Parameter(m.scales.clone())] + ([nn.Parameter(m.zeros.clone())] if m.zero_point == "float" else [])
               for m in layers}
    frozen = [(p, p.requires_grad) for p in model.parameters()]
    for p, _ in frozen:
        p.requires_grad_(False)
    weights = {m: m._parameters.pop("weight") for m in layers}  # the weight becomes a function of the scales
    opt = torch.optim.Adam([p for ps in learned.values() for p in ps], lr=lr)
    losses: list[float] = []
    try:
        with uncounted():
            for step in range(steps):
                ids = batches[step % len(batches)]
                for m, ps in learned.items():
                    zeros = ps[1] if len(ps) > 1 else m.zeros.float()
                    m.weight = dequantize(m.codes.float(), ps[0], zeros, m.group_size).to(weights[m].dtype)
                with torch.no_grad():
                    target = _logits(teacher, ids)
                loss = token_kl(_logits(model, ids), target)
                opt.zero_grad()
                loss.backward()
                opt.step()
                losses.append(float(loss.detach()))
    finally:
        for m in layers:
            m.__dict__.pop("weight", None)
            m._parameters["weight"] = weights[m]
        for p, grad in frozen:
            p.requires_grad_(grad)
    for m, ps in learned.items():
        zeros = ps[1].detach() if len(ps) > 1 else m.zeros
        m.set_quantized(m.codes, ps[0].detach().clamp(min=1e-12), zeros, m.grid)
    return losses
