"""Optuna's per-trial log lines and experimental-feature warnings kept out of the user's terminal."""

from __future__ import annotations

import contextlib
import warnings
from collections.abc import Iterator

import optuna

__all__ = ["quiet"]


@contextlib.contextmanager
def quiet() -> Iterator[None]:
    """Optuna's per-trial log lines and experimental-feature warnings stay out of the user's terminal;
    wattless prints its own progress."""
    level = optuna.logging.get_verbosity()
    optuna.logging.set_verbosity(optuna.logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            warnings.filterwarnings("ignore", category=FutureWarning, module="optuna")
            warnings.filterwarnings("ignore", category=UserWarning, module="optuna")
            yield
    finally:
        optuna.logging.set_verbosity(level)
