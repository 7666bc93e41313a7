"""A tiny two-tier cascade built the way users build one: two `wattless optimize` runs of the tiny
workload (a 4-bit QAT student on mobile-npu, the fp32 baseline on datacenter-gpu), exported, calibrated."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest

TESTS = Path(__file__).parents[1]
SPEC = f"{TESTS / 'tiny_workload.py'}:tiny"

LEAN = """name = "tiny-lean"
target = "mobile-npu"
[train]
epochs = 2
[quantize]
weight_bits = 4
act_bits = 4
"""
BIG = """name = "tiny-fp32"
target = "datacenter-gpu"
[train]
epochs = 0
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def cascade_text(lean_model: str = "lean.onnx", big_model: str = "big.onnx", extra: str = "") -> str:
    return f"""name = "tiny"
workload = "{SPEC}"
[[tiers]]
name = "lean"
model = "{lean_model}"
run = "runs/lean"
target = "mobile-npu"
[[tiers]]
name = "big"
model = "{big_model}"
run = "runs/big"
target = "datacenter-gpu"
[calibration]
target_accuracy_drop = 0.02
{extra}"""


@pytest.fixture(scope="session")
def tiny_cascade_dir(tmp_path_factory) -> Path:
    """A folder with runs/, lean.onnx, big.onnx and cascade.toml (not yet calibrated)."""
    import os

    import torch

    from wattless.export import export_run
    from wattless.optimize import optimize

    folder = tmp_path_factory.mktemp("cascade")
    old_cache, threads = os.environ.get("WATTLESS_CACHE"), torch.get_num_threads()
    os.environ["WATTLESS_CACHE"] = str(folder / "cache")
    torch.set_num_threads(1)
    try:
        for name, text in (("lean", LEAN), ("big", BIG)):
            (folder / f"{name}.toml").write_text(text)
            optimize(SPEC, folder / f"{name}.toml", folder / "runs" / name, progress=False, baselines=False,
                     energy_inputs=8)
            export_run(folder / "runs" / name, folder / f"{name}.onnx")
    finally:
        torch.set_num_threads(threads)
        if old_cache is None:
            os.environ.pop("WATTLESS_CACHE", None)
        else:
            os.environ["WATTLESS_CACHE"] = old_cache
    (folder / "cascade.toml").write_text(cascade_text())
    return folder


@pytest.fixture(scope="session")
def calibrated(tiny_cascade_dir) -> Path:
    """The tiny cascade file, calibrated."""
    from wattless.serve import calibrate

    path = tiny_cascade_dir / "cascade.toml"
    calibrate(path)
    return path
