"""Your own model, DataLoader, loss and metric as a wattless workload (docs/WORKLOADS.md).

    wattless optimize docs/examples/own_loader.py:workload --recipe recipe.toml --out runs/mine
"""

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from wattless.workloads import Workload


def blobs(n: int, seed: int) -> TensorDataset:
    """Four noisy Gaussian blobs in 16 dimensions: x (n, 16) float, y (n,) int64."""
    gen = torch.Generator().manual_seed(seed)
    y = torch.randint(0, 4, (n,), generator=gen)
    centres = torch.randn(4, 16, generator=torch.Generator().manual_seed(99)) * 2.0
    return TensorDataset(centres[y] + torch.randn(n, 16, generator=gen) * 1.2, y)


def build_model() -> nn.Module:
    torch.manual_seed(0)  # the same initial weights every time the factory builds it
    return nn.Sequential(nn.Linear(16, 64), nn.ReLU(), nn.Linear(64, 4))


def smoothed_loss(outputs: torch.Tensor, batch) -> torch.Tensor:
    """The task loss: outputs are the model's logits (B, 4), batch is what the DataLoader yielded."""
    x, y = batch
    return F.cross_entropy(outputs, y, label_smoothing=0.1)


def top1(outputs: torch.Tensor, batch) -> float:
    """A per-batch metric: the fraction of the batch classified right."""
    return float((outputs.argmax(-1) == batch[1]).float().mean())


def workload() -> Workload:
    """The factory `wattless optimize` calls: no arguments, returns a Workload."""
    train = DataLoader(blobs(512, 1), batch_size=64, shuffle=True)
    val = DataLoader(blobs(128, 2), batch_size=128)
    test = DataLoader(blobs(128, 3), batch_size=128)
    return Workload.from_loaders("blobs", build_model, train=train, val=val, test=test, loss=smoothed_loss,
                                 metric=top1, metric_name="top1", epochs=2, lr=1e-2, train_threads=1)
