"""MNIST-1D (Greydanus 2020): ten 1-D digit templates, padded, scaled, shifted, sheared and noised into
length-40 signals. Generated procedurally by the `mnist1d` package; nothing is downloaded.

The data are the benchmark's own (package default args, its seed 42: 4000 train / 1000 test); the workload
`seed` picks the 500-example val carve-out from train and the baseline's initial weights.
"""

from __future__ import annotations

import random
from collections import OrderedDict
from functools import cache

import numpy as np
import torch
from torch import nn

from wattless.errors import WorkloadError
from wattless.workloads.base import Split, Workload, tiny_classifier

__all__ = ["load_mnist1d", "build_mnist1d_cnn", "SIGNAL_LENGTH", "NUM_CLASSES", "VAL_SIZE"]

SIGNAL_LENGTH = 40
NUM_CLASSES = 10
VAL_SIZE = 500
_BATCH_SIZE = 128


def build_mnist1d_cnn(channels: int = 32, kernel: int = 5) -> nn.Sequential:
    """Three same-padded conv layers with ReLU, then a linear classifier: (N, 1, 40) -> (N, 10) logits."""
    pad = kernel // 2
    return nn.Sequential(
        OrderedDict(
            conv1=nn.Conv1d(1, channels, kernel, padding=pad),
            relu1=nn.ReLU(),
            conv2=nn.Conv1d(channels, channels, kernel, padding=pad),
            relu2=nn.ReLU(),
            conv3=nn.Conv1d(channels, channels, kernel, padding=pad),
            relu3=nn.ReLU(),
            flatten=nn.Flatten(),  # (N, channels * 40)
            fc=nn.Linear(channels * SIGNAL_LENGTH, NUM_CLASSES),
        )
    )


@cache
def _generate() -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    try:
        # make_dataset builds the data; get_dataset is the one that would fetch a URL, so it is never called.
        from mnist1d.data import get_dataset_args, make_dataset
    except ImportError as exc:
        raise WorkloadError(
            f"the mnist1d workload needs the mnist1d package ({exc}): pip install 'wattless[workloads]'"
        ) from exc
    # make_dataset reseeds the global numpy and random RNGs; put the caller's state back afterwards.
    np_state, py_state = np.random.get_state(), random.getstate()
    try:
        data = make_dataset(get_dataset_args())
    finally:
        np.random.set_state(np_state)
        random.setstate(py_state)
    return data["x"], data["y"], data["x_test"], data["y_test"]


def _to_split(x: np.ndarray, y: np.ndarray) -> Split:
    inputs = torch.tensor(x, dtype=torch.float32).unsqueeze(1)  # (N, 1, 40)
    return Split(inputs, torch.tensor(y, dtype=torch.int64))


def load_mnist1d(seed: int = 0) -> Workload:
    x, y, x_test, y_test = _generate()
    pool = _to_split(x, y)
    order = torch.randperm(len(pool), generator=torch.Generator().manual_seed(seed))
    train, val = pool.take(order[VAL_SIZE:]), pool.take(order[:VAL_SIZE])
    test = _to_split(x_test, y_test)
    return tiny_classifier("mnist1d", build_mnist1d_cnn, (train, val, test), seed=seed, epochs=30, lr=1e-2,
                           batch_size=_BATCH_SIZE,
                           description=f"MNIST-1D, {len(train)}/{len(val)}/{len(test)} signals of length 40, 10 classes")
