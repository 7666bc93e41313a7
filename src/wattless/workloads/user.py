"""A user's workload, named by a spec: ``path/to/file.py:factory`` or ``package.module:factory``.

The factory takes no arguments and returns a `Workload`; any seeding is the factory's own business.
"""

from __future__ import annotations

import importlib
from pathlib import Path
from types import ModuleType

from wattless.files import import_python_file
from wattless.errors import WorkloadError
from wattless.workloads.base import Workload

__all__ = ["load_workload_spec", "is_workload_spec", "absolute_spec", "SPEC_FORMS"]

SPEC_FORMS = "'path/to/file.py:factory' or 'package.module:factory'"


def is_workload_spec(name: str) -> bool:
    """Whether `name` has the shape of a spec (a source and a factory joined by the last colon)."""
    source, sep, factory = name.rpartition(":")
    return bool(sep and source and factory)


def _is_file(source: str) -> bool:
    return source.endswith(".py") or "/" in source or "\\" in source


def _import_file(source: str) -> ModuleType:
    try:
        return import_python_file(Path(source))
    except FileNotFoundError:
        path = Path(source).expanduser().resolve()
        raise WorkloadError(f"workload file {source!r} not found (looked at {path}): check the path in the spec") from None


def _import_source(source: str) -> ModuleType:
    try:
        return _import_file(source) if _is_file(source) else importlib.import_module(source)
    except WorkloadError:
        raise
    except (Exception, SystemExit) as exc:  # a file that calls sys.exit() while importing
        raise WorkloadError(
            f"importing workload source {source!r} failed with {type(exc).__name__}: {exc}; "
            f"fix the error there, or check the spec is {SPEC_FORMS}"
        ) from exc


def _factory_names(module: ModuleType) -> str:
    names = [n for n, v in sorted(vars(module).items()) if callable(v) and not n.startswith("_")]
    return ", ".join(names) or "none"


def load_workload_spec(spec: str) -> Workload:
    """Import the spec's source, call its factory with no arguments, and check it returns a Workload."""
    if not is_workload_spec(spec):
        raise WorkloadError(f"workload spec {spec!r} is malformed: write it as {SPEC_FORMS}")
    source, _, factory_name = spec.rpartition(":")
    module = _import_source(source)
    factory = getattr(module, factory_name, None)
    if not callable(factory):
        raise WorkloadError(
            f"{source!r} has no callable {factory_name!r}; its public callables are: {_factory_names(module)}"
        )
    try:
        workload = factory()
    except WorkloadError:
        raise
    except (Exception, SystemExit) as exc:  # a factory that calls sys.exit() failed; it does not end wattless
        raise WorkloadError(
            f"workload factory {spec!r} raised {type(exc).__name__}: {exc}; it must build a Workload "
            "with no arguments"
        ) from exc
    if not isinstance(workload, Workload):
        raise WorkloadError(
            f"workload factory {spec!r} returned type {type(workload).__name__}, expected "
            "wattless.workloads.Workload"
        )
    workload.spec = absolute_spec(spec)
    return workload


def absolute_spec(spec: str) -> str:
    """The spec with a file source made absolute, so that it rebuilds the workload from any folder."""
    source, _, factory = spec.rpartition(":")
    if not _is_file(source):
        return spec
    return f"{Path(source).expanduser().resolve()}:{factory}"
