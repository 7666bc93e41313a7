"""Numbers as people read them: three significant digits and a prefix, ``-`` for a missing value.

    format_joules(7.18e-9)     # '7.18 nJ'
    format_seconds(0.194)      # '194 ms'
    format_si(16_400, "")      # '16.4 k'   (counts; format_si(16_900, "B") is '16.9 kB')
    format_bytes(26_900)       # '26.3 KiB' (sizes on disk or in memory, 1024-based)
"""

from __future__ import annotations

__all__ = ["format_joules", "format_seconds", "format_si", "format_bytes", "format_kib"]

_LARGE = ((1e9, "G"), (1e6, "M"), (1e3, "k"), (1, ""))
_JOULES = ((1, ""), (1e-3, "m"), (1e-6, "µ"), (1e-9, "n"), (1e-12, "p"))
_SECONDS = ((1, ""), (1e-3, "m"), (1e-6, "µ"), (1e-9, "n"))


def _prefixed(value: float | None, unit: str, scales: tuple[tuple[float, str], ...]) -> str:
    """``value`` in the first scale it reaches, else the last (also for NaN)."""
    if value is None:
        return "-"
    factor, prefix = next(((f, p) for f, p in scales if abs(value) >= f), scales[-1])
    return f"{value / factor:.3g} {prefix}{unit}"


def format_joules(value: float | None) -> str:
    return _prefixed(value, "J", _JOULES)


def format_seconds(value: float | None) -> str:
    return _prefixed(value, "s", _SECONDS)


def format_si(value: float | None, unit: str = "") -> str:
    """A count with a 1000-based prefix: MACs, or bytes counted like MACs (``kB``)."""
    return _prefixed(value, unit, _LARGE)


def format_kib(value: float | None) -> str:
    return "-" if value is None else f"{value / 1024:.1f} KiB"


def format_bytes(value: float | None) -> str:
    """KiB from 1 KiB up, whole bytes below."""
    if value is None:
        return "-"
    return format_kib(value) if value >= 1024 else f"{value:.0f} B"
