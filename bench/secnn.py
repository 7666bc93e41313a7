"""The residual SE-CNN (wattless.testing.SECNN) on MNIST-1D's data: a user's own model as a workload spec.

    wattless optimize -w bench/secnn.py:workload -r recipes/secnn-int8.toml --out bench/out/secnn-int8
"""

from __future__ import annotations

import dataclasses

import torch

from wattless.testing import SECNN
from wattless.workloads import Split, get_workload
from wattless.workloads.base import cycled_examples


def _model() -> torch.nn.Module:
    torch.manual_seed(0)
    return SECNN(classes=10, channels=32, depth=2)


def _signals(split: Split) -> Split:
    return Split(split.inputs[:, 0], split.targets)  # (N, 1, 40) -> (N, 40): the model unsqueezes itself


def workload():
    base = get_workload("mnist1d")
    train, val, test = (_signals(s) for s in (base.train, base.val, base.test))
    return dataclasses.replace(base, name="secnn-mnist1d", build_model=_model, spec="bench/secnn.py:workload",
                               train=train, val=val, test=test, example_input=cycled_examples(test.inputs),
                               description="a residual SE-CNN (SiLU, BatchNorm1d, unsqueeze, skips) on MNIST-1D")
