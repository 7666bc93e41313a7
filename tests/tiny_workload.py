"""A tiny labelled workload for fast end-to-end tests: two noisy Gaussian blobs per class, an MLP baseline."""

from __future__ import annotations

import torch
from torch import nn

from wattless.workloads import Split, Workload
from wattless.workloads.base import classification_evaluate


def _data(n: int, seed: int) -> Split:
    gen = torch.Generator().manual_seed(seed)
    labels = torch.randint(0, 4, (n,), generator=gen)
    centres = torch.randn(4, 16, generator=torch.Generator().manual_seed(99)) * 2.0
    x = centres[labels] + torch.randn(n, 16, generator=gen) * 1.2
    return Split(x, labels)


def build() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(16, 64), nn.ReLU(), nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 4))


def tiny() -> Workload:
    train = _data(512, 1)
    return Workload(
        name="tiny", metric_name="accuracy", build_model=build, train=train, val=_data(256, 2), test=_data(256, 3),
        example_input=lambda n: train.inputs[:n], evaluate=classification_evaluate(256), needs_training=True,
        default_epochs=4, batch_size=64, default_lr=1e-2,
    )


def _mean_output(model: nn.Module, split: Split) -> dict[str, float]:
    with torch.no_grad():
        return {"mean_output": float(model.eval()(split.inputs).mean())}


def unlabelled() -> Workload:
    """The tiny workload without labels: a pretrained (here: untrained) baseline that only distillation can
    compress."""
    wl = tiny()
    splits = {name: Split(getattr(wl, name).inputs) for name in ("train", "val", "test")}
    return Workload(
        name="tiny-unlabelled", metric_name="mean_output", build_model=build, **splits,
        example_input=lambda n: splits["train"].inputs[:n], evaluate=_mean_output, needs_training=False,
        default_epochs=1, batch_size=64,
    )
