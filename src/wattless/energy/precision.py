"""Numeric precisions by name, ordered by width, and how a tensor or a module reveals its precision.

A module's precision is read from the attributes techniques leave on it:
``wattless_weight_precision`` and ``wattless_act_precision`` (names such as "int4", "int8", "fp16").
A plain module has none, so its precision is its tensors' dtype.
"""

from __future__ import annotations

import re
from functools import total_ordering

import torch

__all__ = ["Precision", "parse_precision", "dtype_precision", "mac_precision", "FLOAT_NAMES"]

FLOAT_NAMES = {"fp32": 32, "tf32": 19, "fp16": 16, "bf16": 16, "fp8": 8, "fp4": 4}
_INT = re.compile(r"^(u?int)(\d{1,2})$")


@total_ordering
class Precision:
    """A precision name with its width in bits; wider sorts higher, floats above ints of equal width."""

    __slots__ = ("name", "bits", "is_float")

    def __init__(self, name: str, bits: int, is_float: bool) -> None:
        self.name, self.bits, self.is_float = name, bits, is_float

    def _key(self) -> tuple[int, int, str]:
        return (self.bits, int(self.is_float), self.name)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Precision) and self._key() == other._key()

    def __lt__(self, other: "Precision") -> bool:
        return self._key() < other._key()

    def __hash__(self) -> int:
        return hash(self._key())

    def __repr__(self) -> str:
        return self.name


def parse_precision(name: str) -> Precision:
    """'fp32', 'bf16', 'int8', 'uint4', 'int2', 'binary' -> Precision; ValueError names the allowed forms."""
    key = str(name).strip().lower()
    if key in FLOAT_NAMES:
        return Precision(key, FLOAT_NAMES[key], True)
    if key in ("binary", "int1"):
        return Precision("int1", 1, False)
    m = _INT.match(key)
    if m and 1 <= int(m.group(2)) <= 32:
        return Precision(f"int{int(m.group(2))}", int(m.group(2)), False)
    raise ValueError(
        f"unknown precision {name!r}: use one of {', '.join(FLOAT_NAMES)}, or intK / uintK with K in 1..32"
    )


_DTYPES = {
    torch.float32: "fp32",
    torch.float64: "fp32",  # priced as the widest float a target lists
    torch.float16: "fp16",
    torch.bfloat16: "bf16",
    torch.int8: "int8",
    torch.uint8: "int8",
    torch.int16: "int16",
    torch.int32: "int32",
    torch.int64: "int32",
    torch.bool: "int1",
}
for _name in ("float8_e4m3fn", "float8_e5m2", "float8_e4m3fnuz", "float8_e5m2fnuz"):
    if hasattr(torch, _name):
        _DTYPES[getattr(torch, _name)] = "fp8"
for _name, _p in (("qint8", "int8"), ("quint8", "int8"), ("qint32", "int32"), ("quint4x2", "int4")):
    if hasattr(torch, _name):
        _DTYPES[getattr(torch, _name)] = _p


def dtype_precision(dtype: torch.dtype) -> Precision:
    return parse_precision(_DTYPES.get(dtype, "fp32"))


def mac_precision(weight: Precision, act: Precision) -> Precision:
    """The width a multiply-accumulate runs at: the wider operand's; a float operand makes it a float MAC."""
    wide = max(weight, act)
    if wide.is_float or not (weight.is_float or act.is_float):
        return wide
    floats = [p for p in (weight, act) if p.is_float]
    return max(floats)
