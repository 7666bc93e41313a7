"""What a workload is: data splits, a baseline architecture, and the metric that judges a model on a split.

Classification workloads (tensors in, class logits out) share the helpers at the bottom of this module.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from wattless.errors import WorkloadError

__all__ = [
    "Split",
    "Workload",
    "iter_batches",
    "eval_mode",
    "model_device",
    "model_float_dtype",
    "seeded_builder",
    "cycled_examples",
    "classification_evaluate",
    "tiny_classifier",
]


@dataclass(frozen=True)
class Split:
    """One split: inputs (a tensor (N, ...) or a list of N strings) and labels (N,) or None."""

    inputs: Any
    targets: torch.Tensor | None = None

    def __len__(self) -> int:
        return len(self.inputs)

    @property
    def labelled(self) -> bool:
        return self.targets is not None

    def take(self, index: torch.Tensor | slice) -> "Split":
        """The rows at `index`, for tensor inputs and list-of-string inputs alike."""
        if isinstance(self.inputs, Mapping):  # token batches: one tensor (N, ...) per key
            inputs: Any = {k: v[index] for k, v in self.inputs.items()}
        elif isinstance(self.inputs, list):
            rows = range(len(self.inputs))[index] if isinstance(index, slice) else index.tolist()
            inputs = [self.inputs[i] for i in rows]
        else:
            inputs = self.inputs[index]
        return Split(inputs, None if self.targets is None else self.targets[index])


@dataclass
class Workload:
    """Data, a baseline model and a metric, ready for techniques to act on and for energy profiling.

    `prepare_inputs` turns a slice of a split's inputs into what the model's forward takes (identity for
    tensors, the tokenizer for text), so one training loop serves every workload.
    """

    name: str
    metric_name: str
    build_model: Callable[[], nn.Module]
    train: Split
    val: Split
    test: Split
    example_input: Callable[[int], Any]
    evaluate: Callable[[nn.Module, Split], dict[str, float]]
    needs_training: bool
    default_epochs: int
    batch_size: int
    default_lr: float = 1e-3
    prepare_inputs: Callable[[Any], Any] = field(default=lambda inputs: inputs)
    description: str = ""
    # The task loss, loss(outputs, batch) -> scalar tensor, batch being what the split yields (a Split of rows,
    # or the user's own batch for Batches); None: cross-entropy against the labels (distillation without them).
    loss: Callable[[Any, Any], torch.Tensor] | None = None
    # Threads training runs on (None: torch's default). CPU float sums depend on how work is split over
    # threads, so a tiny model trained on 1 and on 2 threads ends up a different model; a fixed count makes
    # its baseline and recipes the same on every machine.
    train_threads: int | None = None
    seed: int = 0  # what chose the data split and the baseline's initial weights (part of the baseline cache key)
    spec: str | None = None  # what `get_workload` rebuilds it from (a built-in name or a spec); kept in run.json

    def __post_init__(self) -> None:
        if not self.metric_name:
            raise WorkloadError(
                f"workload {self.name!r} has an empty metric_name: name the metric its evaluate returns"
            )
        if self.train_threads is not None and self.train_threads < 1:
            raise WorkloadError(f"workload {self.name!r} has train_threads={self.train_threads}: give >= 1 or None")
        if self.batch_size < 1 or self.default_epochs < 0:
            raise WorkloadError(
                f"workload {self.name!r} has batch_size={self.batch_size}, "
                f"default_epochs={self.default_epochs}: batch_size must be >= 1 and default_epochs >= 0"
            )
        for split_name in ("train", "val", "test"):
            setattr(self, split_name, _check_split(self.name, split_name, getattr(self, split_name)))

    @staticmethod
    def from_loaders(name: str, build_model: Callable[[], nn.Module], **kwargs: Any) -> "Workload":
        """A workload from the user's own batches, loss and metric: see `wattless.workloads.loaders.from_loaders`."""
        from wattless.workloads.loaders import from_loaders

        return from_loaders(name, build_model, **kwargs)


def _check_split(workload: str, split_name: str, split: Any) -> Any:
    """The split as training reads it (a TensorDataset becomes its Split, a DataLoader Batches), checked."""
    from wattless.workloads.loaders import Batches, as_split

    split = as_split(split, f"workload {workload!r}: {split_name}")
    if isinstance(split, Batches):
        return split
    if split.targets is not None and len(split.targets) != len(split.inputs):
        raise WorkloadError(
            f"workload {workload!r}: {split_name} has {len(split.inputs)} inputs but {len(split.targets)} "
            "targets: give one target per input, or targets=None"
        )
    return split


def iter_batches(split: Split, batch_size: int, *, shuffle_seed: int | None = None) -> Iterator[Split]:
    """Consecutive batches of `split`, in order or shuffled by a seeded permutation."""
    n = len(split)
    if shuffle_seed is None:
        order = torch.arange(n)
    else:
        order = torch.randperm(n, generator=torch.Generator().manual_seed(shuffle_seed))
    for start in range(0, n, batch_size):
        yield split.take(order[start : start + batch_size])


@contextmanager
def eval_mode(model: nn.Module) -> Iterator[nn.Module]:
    """Eval mode inside the block; each submodule's own mode comes back after (a frozen BN stays frozen)."""
    modes = [(module, module.training) for module in model.modules()]
    model.eval()
    try:
        yield model
    finally:
        for module, training in modes:
            module.training = training


def model_device(model: nn.Module) -> torch.device:
    """Where the model's first parameter or buffer lives; CPU for a model with neither."""
    for tensor in (*model.parameters(), *model.buffers()):
        return tensor.device
    return torch.device("cpu")


def model_float_dtype(model: nn.Module) -> torch.dtype:
    """The dtype of the model's first floating-point parameter (fp32 if none), so inputs can match a
    half-precision model."""
    for param in model.parameters():
        if param.is_floating_point():
            return param.dtype
    return torch.float32


def seeded_builder(build: Callable[[], nn.Module], seed: int) -> Callable[[], nn.Module]:
    """`build`, with its initial weights fixed by `seed` and the caller's global RNG left untouched."""

    def build_model() -> nn.Module:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            return build()

    return build_model


def cycled_examples(inputs: torch.Tensor) -> Callable[[int], torch.Tensor]:
    """example_input for tensor workloads: the first n rows of `inputs`, wrapping round when n > N."""

    def example_input(n: int) -> torch.Tensor:
        return inputs[torch.arange(n) % len(inputs)].clone()

    return example_input


def classification_evaluate(batch_size: int) -> Callable[[nn.Module, Split], dict[str, float]]:
    """evaluate for classifiers: accuracy (fraction 0..1) of argmax logits against the split's labels."""

    def evaluate(model: nn.Module, split: Split) -> dict[str, float]:
        if split.targets is None:
            raise WorkloadError(
                "accuracy needs labels, but this split has targets=None: evaluate a labelled split"
            )
        device, dtype, correct = model_device(model), model_float_dtype(model), 0
        with eval_mode(model), torch.no_grad():
            for batch in iter_batches(split, batch_size):
                x = batch.inputs  # floats in the model's dtype; token ids stay integers
                logits = model(x.to(device, dtype) if x.is_floating_point() else x.to(device))  # (B, classes)
                correct += int((logits.argmax(-1).cpu() == batch.targets).sum())
        return {"accuracy": correct / len(split)}

    return evaluate


def tiny_classifier(name: str, build: Callable[[], nn.Module], splits: tuple[Split, Split, Split], *, seed: int,
                    epochs: int, lr: float, batch_size: int, description: str) -> Workload:
    """A small built-in classification workload (digits, mnist1d): seeded model, accuracy, trained on one
    thread (as fast for such models, and the same model on every machine)."""
    train, val, test = splits
    return Workload(
        name=name, metric_name="accuracy", build_model=seeded_builder(build, seed), train=train, val=val,
        test=test, example_input=cycled_examples(test.inputs), evaluate=classification_evaluate(batch_size),
        needs_training=True, default_epochs=epochs, batch_size=batch_size, default_lr=lr, train_threads=1,
        seed=seed, description=description)
