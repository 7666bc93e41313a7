"""Fixtures shared by the test modules."""

from __future__ import annotations

import os

import pytest
import torch


def pytest_collection_modifyitems(config, items):
    """Tests marked heavy run only when asked for: WATTLESS_HEAVY=1, or a -m expression naming them."""
    if os.environ.get("WATTLESS_HEAVY") == "1" or "heavy" in (config.option.markexpr or ""):
        return
    skip = pytest.mark.skip(reason="the real 135M decoder (minutes): set WATTLESS_HEAVY=1 or run -m heavy")
    for item in items:
        if "heavy" in item.keywords:
            item.add_marker(skip)


@pytest.fixture
def fresh_cache_one_thread(tmp_path, monkeypatch):
    """A fresh baseline cache per test; one torch thread per process (tests run two at a time, and a tiny
    model gains nothing from more), in this process and in the searches it starts."""
    monkeypatch.setenv("WATTLESS_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
