"""Load a model from a spec: a built-in name, ``path/to/file.py:factory`` or ``package.module:factory``.

The factory takes no arguments and returns the module, or a pair (module, example inputs).
"""

from __future__ import annotations

import importlib
import math
from pathlib import Path
from typing import Any

import torch
from torch import nn

from wattless.files import import_python_file
from wattless.errors import InputError, SpecError

__all__ = ["load_factory", "load_model", "parse_shape", "example_from_shape"]


def load_factory(spec: str, builtins: dict[str, tuple[Any, str]] | None = None, what: str = "model") -> Any:
    """The callable a spec names; built-in names are looked up in ``builtins``."""
    if builtins and spec in builtins:
        return builtins[spec][0]
    if ":" not in spec:
        known = ", ".join(builtins or {})
        raise SpecError(
            f"unknown {what} {spec!r}: give a built-in name ({known}), path/to/file.py:factory or "
            "package.module:factory"
        )
    where, _, attr = spec.rpartition(":")
    try:
        if where.endswith(".py") or "/" in where or Path(where).is_file():
            path = Path(where)
            if not path.is_file():
                raise SpecError(f"cannot load {what} spec {spec!r}: file {where} does not exist")
            module = import_python_file(path)
        else:
            module = importlib.import_module(where)
    except SpecError:
        raise
    except (Exception, SystemExit) as exc:  # a user file that calls sys.exit() while importing
        raise SpecError(f"cannot import {where!r} from spec {spec!r}: {type(exc).__name__}: {exc}") from None
    factory = getattr(module, attr, None)
    if not callable(factory):
        raise SpecError(f"spec {spec!r}: {where} has no callable named {attr!r}")
    return factory


def load_model(spec: str) -> tuple[nn.Module, Any | None]:
    """Call the spec's factory: (module, example inputs or None)."""
    from wattless.models import BUILTIN_MODELS

    factory = load_factory(spec, BUILTIN_MODELS)
    try:
        made = factory()
    except SpecError:
        raise
    except (Exception, SystemExit) as exc:  # a factory that calls sys.exit() is a failed factory, not our exit
        raise SpecError(f"the factory of {spec!r} failed: {type(exc).__name__}: {exc}") from None
    inputs = None
    if isinstance(made, tuple) and len(made) == 2:
        made, inputs = made
    if not isinstance(made, nn.Module):
        raise SpecError(
            f"the factory of {spec!r} returned {type(made).__name__}; it must return a torch.nn.Module "
            "or a pair (module, example inputs)"
        )
    return made, inputs


def parse_shape(text: str) -> tuple[int, ...]:
    """'1,3,224,224' -> (1, 3, 224, 224)."""
    try:
        shape = tuple(int(x) for x in text.replace("x", ",").split(",") if x.strip())
    except ValueError:
        shape = ()
    if not shape or any(d <= 0 for d in shape):
        raise InputError(f"input shape {text!r} is not a comma-separated list of positive integers, e.g. 1,3,224,224")
    return shape


MAX_INPUT_ELEMENTS = 2**28  # 1 GiB of fp32: a random example input beyond this is a typo, not a model


def example_from_shape(shape: tuple[int, ...]) -> torch.Tensor:
    numel = math.prod(shape)
    if numel > MAX_INPUT_ELEMENTS:
        raise InputError(f"input shape {','.join(map(str, shape))} has {numel:.3g} elements ({4 * numel / 2**30:.3g} GiB "
                         f"of fp32), more than the {MAX_INPUT_ELEMENTS:.3g} a random example input may have; give a "
                         "smaller --input-shape")
    try:
        return torch.randn(shape, generator=torch.Generator().manual_seed(0))
    except (RuntimeError, MemoryError) as exc:
        raise InputError(f"cannot allocate an input of shape {shape}: {exc}") from None
