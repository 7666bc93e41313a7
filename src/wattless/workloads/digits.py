"""scikit-learn's bundled 8x8 handwritten digits (1797 images, 10 classes), read from the installed package.

The workload `seed` picks a class-stratified 60/20/20 train/val/test split and the baseline's initial weights.
"""

from __future__ import annotations

from collections import OrderedDict
from functools import cache

import numpy as np
import torch
from torch import nn

from wattless.errors import WorkloadError
from wattless.workloads.base import Split, Workload, tiny_classifier

__all__ = ["load_digits_workload", "build_digits_cnn", "NUM_CLASSES"]

NUM_CLASSES = 10
_PIXEL_MAX = 16.0  # sklearn's digits are counts 0..16
_VAL_FRACTION = _TEST_FRACTION = 0.2
_BATCH_SIZE = 64


def build_digits_cnn(channels: int = 16) -> nn.Sequential:
    """Two same-padded 3x3 conv layers with ReLU, a 2x2 max-pool, then linear: (N, 1, 8, 8) -> (N, 10)."""
    return nn.Sequential(
        OrderedDict(
            conv1=nn.Conv2d(1, channels, 3, padding=1),
            relu1=nn.ReLU(),
            conv2=nn.Conv2d(channels, 2 * channels, 3, padding=1),
            relu2=nn.ReLU(),
            pool=nn.MaxPool2d(2),  # (N, 2 * channels, 4, 4)
            flatten=nn.Flatten(),
            fc=nn.Linear(2 * channels * 16, NUM_CLASSES),
        )
    )


@cache
def _images() -> tuple[np.ndarray, np.ndarray]:
    try:
        from sklearn.datasets import load_digits
    except ImportError as exc:
        raise WorkloadError(
            f"the digits workload needs scikit-learn ({exc}): pip install 'wattless[workloads]'"
        ) from exc
    bunch = load_digits()
    return bunch.images, bunch.target


def _stratified_order(labels: torch.Tensor, seed: int) -> list[torch.Tensor]:
    """Per class, a seeded permutation of that class's indices cut into (train, val, test) parts."""
    generator = torch.Generator().manual_seed(seed)
    parts: list[list[torch.Tensor]] = [[], [], []]
    for label in range(NUM_CLASSES):
        idx = torch.nonzero(labels == label).squeeze(1)
        idx = idx[torch.randperm(len(idx), generator=generator)]
        n_val, n_test = round(len(idx) * _VAL_FRACTION), round(len(idx) * _TEST_FRACTION)
        parts[0].append(idx[n_val + n_test :])
        parts[1].append(idx[:n_val])
        parts[2].append(idx[n_val : n_val + n_test])
    # Sorted so that each split is in dataset order, not grouped by class.
    return [torch.cat(p).sort().values for p in parts]


def load_digits_workload(seed: int = 0) -> Workload:
    images, labels = _images()
    pool = Split(
        torch.tensor(images / _PIXEL_MAX, dtype=torch.float32).unsqueeze(1),  # (1797, 1, 8, 8) in [0, 1]
        torch.tensor(labels, dtype=torch.int64),
    )
    train_idx, val_idx, test_idx = _stratified_order(pool.targets, seed)
    train, val, test = pool.take(train_idx), pool.take(val_idx), pool.take(test_idx)
    return tiny_classifier("digits", build_digits_cnn, (train, val, test), seed=seed, epochs=20, lr=3e-3,
                           batch_size=_BATCH_SIZE,
                           description=f"sklearn digits, {len(train)}/{len(val)}/{len(test)} 8x8 images in [0, 1], 10 classes")
