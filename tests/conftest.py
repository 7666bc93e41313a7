"""Fixtures shared by the test modules."""

from __future__ import annotations

import pytest
import torch


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
