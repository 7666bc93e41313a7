"""Where the command line writes: one console for results, one for errors, and one-line JSON on stdout."""

from __future__ import annotations

import json
import sys

from rich.console import Console

from wattless.files import json_safe

__all__ = ["console", "err_console", "print_json"]

console = Console(width=None if sys.stdout.isatty() else 160)  # piped: wide enough that tables keep their rows
err_console = Console(stderr=True)


def print_json(obj, *, strict: bool = True) -> None:
    """One line of JSON on stdout. strict: a non-finite float (a model with NaN weights) is written as null,
    not NaN; the verbs that wrote plain ``json.dumps`` before strict JSON existed still pass strict=False."""
    text = json.dumps(json_safe(obj), allow_nan=False) if strict else json.dumps(obj)
    sys.stdout.write(text + "\n")
