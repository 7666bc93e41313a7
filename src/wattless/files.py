"""Reading what users hand us: Python files named by a spec, and TOML files validated by pydantic."""

from __future__ import annotations

import hashlib
import importlib.util
import math
import os
import sys
import tomllib
from pathlib import Path
from types import ModuleType
from typing import Any

from pydantic import ValidationError

__all__ = ["import_python_file", "read_toml", "validation_message", "atomic_write", "json_safe", "check_output_file",
           "check_output_dir"]


def import_python_file(path: Path) -> ModuleType:
    """Import a .py file under a unique, stable module name, registered before it runs (so dataclasses and
    pickling inside it find their module). FileNotFoundError if it does not exist."""
    path = Path(path).expanduser().resolve()
    if not path.is_file():
        raise FileNotFoundError(path)
    name = f"wattless_user_{path.stem}_{hashlib.sha1(str(path).encode()).hexdigest()[:8]}"
    spec = importlib.util.spec_from_file_location(name, path)
    if spec is None or spec.loader is None:
        raise ImportError(f"cannot import {path} as Python: give a .py file")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    try:
        spec.loader.exec_module(module)
    except BaseException:
        del sys.modules[name]
        raise
    return module


def read_toml(path: Path, what: str, error: type[Exception]) -> dict:
    """The parsed file, or ``error`` saying what is wrong with it (missing, unreadable, not TOML)."""
    try:
        return tomllib.loads(Path(path).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise error(f"{what} {path} does not exist") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise error(f"{what} {path} cannot be read: {exc}") from None
    except tomllib.TOMLDecodeError as exc:
        raise error(f"{what} {path} is not valid TOML: {exc}") from None


def validation_message(exc: ValidationError, where: str, noun: str, unknown_hint: str) -> str:
    """One line naming the file and every offending key: "recipe r.toml: key `a.b`: ..."."""
    parts = []
    for err in exc.errors():
        key = ".".join(str(p) for p in err["loc"]) or "(top level)"
        msg = err["msg"].removeprefix("Value error, ")
        if err["type"] == "extra_forbidden":
            msg = unknown_hint
        parts.append(f"{noun} `{key}`: {msg}")
    return f"{where}: " + "; ".join(parts)


def atomic_write(path: Path, data: str | bytes) -> None:
    """Write ``path`` through a temp file beside it and a rename: a failure leaves what was there untouched."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        if isinstance(data, bytes):
            tmp.write_bytes(data)
        else:
            tmp.write_text(data, encoding="utf-8")
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def json_safe(obj: Any) -> Any:
    """``obj`` with every non-finite float as None: what strict JSON can hold (NaN and inf are not JSON)."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: json_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [json_safe(v) for v in obj]
    return obj


def check_output_file(path: Path, what: str, error: type[Exception]) -> None:
    """Refuse, before any work, an output file path that is a directory or whose folder cannot be written."""
    path = Path(path)
    if path.is_dir():
        raise error(f"{what} {path} is a directory; give a file path")
    folder = _existing_parent(path)
    if not folder.is_dir():
        raise error(f"{what} {path}: {folder} is a file, not a folder")
    if not os.access(folder, os.W_OK | os.X_OK):
        raise error(f"{what} {path}: folder {folder} is not writable")


def check_output_dir(path: Path, what: str, error: type[Exception]) -> None:
    """Refuse, before any work, an output folder that is a file or that cannot be created or written."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise error(f"{what} {path} is a file, not a folder; give a folder path")
    folder = path if path.is_dir() else _existing_parent(path)
    if not folder.is_dir():
        raise error(f"{what} {path}: {folder} is a file, not a folder")
    if not os.access(folder, os.W_OK | os.X_OK):
        raise error(f"{what} {path}: {folder} is not writable")


def _existing_parent(path: Path) -> Path:
    folder = Path(os.path.abspath(path)).parent
    while not folder.exists() and folder != folder.parent:
        folder = folder.parent
    return folder
