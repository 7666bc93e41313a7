"""Built-in workloads (data, a baseline model and a metric), all offline, and user workloads from a spec.

    >>> workload = get_workload("mnist1d", seed=0)
    >>> model = workload.build_model()
    >>> workload.evaluate(model, workload.test)["accuracy"]

Built-ins import their heavy dependencies (transformers, scikit-learn, mnist1d) only when loaded.
"""

from __future__ import annotations

from collections.abc import Callable

from wattless.errors import WorkloadError
from wattless.workloads.base import Split, Workload, iter_batches
from wattless.workloads.loaders import Batches, from_loaders
from wattless.workloads.user import SPEC_FORMS, is_workload_spec, load_workload_spec

__all__ = ["Split", "Batches", "Workload", "from_loaders", "get_workload", "list_workloads", "load_workload_spec",
           "iter_batches"]


def _mnist1d(seed: int) -> Workload:
    from wattless.workloads.mnist1d import load_mnist1d

    return load_mnist1d(seed)


def _digits(seed: int) -> Workload:
    from wattless.workloads.digits import load_digits_workload

    return load_digits_workload(seed)


def _minilm(seed: int) -> Workload:
    from wattless.workloads.minilm import load_minilm_workload

    return load_minilm_workload(seed)


def _smollm2(seed: int) -> Workload:
    from wattless.workloads.smollm2 import load_smollm2_workload

    return load_smollm2_workload(seed)


_BUILT_IN: dict[str, Callable[[int], Workload]] = {"mnist1d": _mnist1d, "digits": _digits, "minilm": _minilm,
                                                    "smollm2": _smollm2}


def list_workloads() -> list[str]:
    """The built-in workload names; any spec of the form SPEC_FORMS also works with get_workload."""
    return sorted(_BUILT_IN)


def get_workload(name: str, *, seed: int = 0) -> Workload:
    """A built-in workload by name, or a user workload from a spec (its factory takes no seed)."""
    if name in _BUILT_IN:
        workload = _BUILT_IN[name](seed)
        workload.spec = name
        return workload
    if is_workload_spec(name):
        return load_workload_spec(name)
    raise WorkloadError(
        f"unknown workload {name!r}: use one of {', '.join(list_workloads())}, or a spec {SPEC_FORMS}"
    )
