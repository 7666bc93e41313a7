"""The PCM statistical model (Nandakumar et al. 2019; Joshi et al. 2020; as IBM aihwkit's PCMLikeNoiseModel):
programming noise, drift with a per-device exponent nu, 1/f read noise, and global drift compensation.

Conductances are in microsiemens; ``g`` below is G / g_max. Every coefficient comes from the target's
``[analog]`` section (energy/targets/analog-pcm.toml cites each one). ``scale`` factors (programming, read,
drift) switch a noise source off at 0 or scale it, as aihwkit's ``*_noise_scale`` do.

    G_prog = max(G_target + sigma_prog(g) * n, 0)                       sigma_prog = c0 + c1 g + c2 g^2
    nu     = |mu(g) + sigma_nu(g) * n|                                   mu, sigma_nu: clamped in ln g
    G(t)   = G_prog ((t + t0) / t0)^-nu                                  t: seconds after programming
    G_read = max(G(t) + |G(t)| Q(g) sqrt(ln((t + t0 + t_read) / (2 t_read))) * n, 0)
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from wattless.energy.target import Analog

__all__ = ["NoiseScales", "Programmed", "program", "drift", "compensation"]

_ZERO_CLIP = 1e-7


@dataclass(frozen=True)
class NoiseScales:
    """Multipliers of each noise source (0 turns it off, 1 is the published model)."""

    prog: float = 1.0
    read: float = 1.0
    drift: float = 1.0


@dataclass(frozen=True)
class Programmed:
    """One device array after programming: conductances (uS) and each device's drift exponent."""

    g_target: torch.Tensor
    g_prog: torch.Tensor
    nu: torch.Tensor


def program(g_target: torch.Tensor, device: Analog, scales: NoiseScales, gen: torch.Generator) -> Programmed:
    """Program target conductances (uS): Gaussian programming error, and a drift exponent per device."""
    g_max = device.g_max_us
    g = g_target / g_max
    sigma = (device.prog_c0_us + device.prog_c1_us * g + device.prog_c2_us * g * g) * (g_max / device.prog_g_ref_us)
    noise = torch.randn(g_target.shape, generator=gen)
    g_prog = (g_target + scales.prog * sigma * noise).clamp_min(0.0)
    ln_g = torch.log((g_target / g_max).abs().clamp_min(_ZERO_CLIP))
    mu = (device.nu_mean_log_slope * ln_g + device.nu_mean_offset).clamp(device.nu_mean_min, device.nu_mean_max)
    sd = (device.nu_std_log_slope * ln_g + device.nu_std_offset).clamp(device.nu_std_min, device.nu_std_max)
    nu = (mu + sd * torch.randn(g_target.shape, generator=gen)).abs() * scales.drift
    return Programmed(g_target, g_prog, nu)


def drift(chip: Programmed, t_s: float, device: Analog, scales: NoiseScales, gen: torch.Generator) -> torch.Tensor:
    """Conductances read ``t_s`` seconds after programming: power-law drift, then accumulated 1/f noise."""
    t0 = device.drift_t0_s
    t = t_s + t0
    g_drift = chip.g_prog * torch.pow(torch.as_tensor(t / t0), -chip.nu) if t > t0 else chip.g_prog
    q = (device.read_q_coeff / ((chip.g_prog.abs() / device.g_max_us) ** device.read_q_exponent).clamp_min(1e-3))
    q = q.clamp_max(device.read_q_max)
    sigma = q * math.sqrt(math.log((t + device.read_t_s) / (2 * device.read_t_s)))
    noise = torch.randn(chip.g_prog.shape, generator=gen)
    return (g_drift + g_drift.abs() * scales.read * sigma * noise).clamp_min(0.0)


def compensation(reference: torch.Tensor, now: torch.Tensor) -> float:
    """Global drift compensation (Joshi et al. 2020): one factor per layer that brings the summed absolute
    read-out of an all-ones input back to what it was right after programming. ``reference`` and ``now``
    are the layer's effective weights (out, in); the read-out is |W 1| summed over outputs."""
    ref = float(reference.sum(dim=1).abs().sum())
    cur = float(now.sum(dim=1).abs().sum())
    return ref / cur if cur > 0 else 1.0
