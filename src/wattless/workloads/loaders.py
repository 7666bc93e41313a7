"""Workloads from the user's own batches: a torch DataLoader, any re-iterable of batches (a Hugging Face
dataset's ``.iter(batch_size=...)`` behind a function), or a generator function called once per pass.

    >>> workload = Workload.from_loaders("mine", build, train=train_loader, val=val_loader, test=test_loader,
    ...                                  loss=lambda outputs, batch: F.mse_loss(outputs, batch[1]))

A batch is whatever the user's data yields; ``inputs(batch)`` is what the model's forward takes and
``targets(batch)`` its labels (None: unlabelled). The training loop iterates the train split's batches in
the loader's own order and size, and calls ``loss(outputs, batch)``. Everything else in wattless (energy
counting, calibration, export parity) reads the first rows of a split, gathered from its batches once.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset, IterableDataset, TensorDataset

from wattless.errors import WorkloadError
from wattless.workloads.base import Split, Workload, eval_mode, model_device, model_float_dtype

__all__ = ["Batches", "LoaderBatch", "from_loaders", "as_split", "default_inputs", "default_targets"]

_LABEL_KEYS = ("labels", "label", "targets", "target", "y")


def default_inputs(batch: Any) -> Any:
    """The model input of a batch: the first item of a tuple/list, a dict without its label key, a tensor as is."""
    if isinstance(batch, (tuple, list)):
        return batch[0]
    if isinstance(batch, Mapping):
        return {k: v for k, v in batch.items() if k not in _LABEL_KEYS}
    return batch


def default_targets(batch: Any) -> torch.Tensor | None:
    """The labels of a batch: the second item of a tuple/list, a dict's ``labels`` (or label, targets, target,
    y) entry; None for a bare tensor."""
    if isinstance(batch, (tuple, list)):
        return batch[1] if len(batch) > 1 else None
    if isinstance(batch, Mapping):
        return next((batch[k] for k in _LABEL_KEYS if k in batch), None)
    return None


def _rows(inputs: Any) -> int:
    if isinstance(inputs, Mapping):
        return len(next(iter(inputs.values())))
    return len(inputs)


@dataclass(frozen=True)
class LoaderBatch:
    """One batch as the training loop sees it: the model input, the labels (or None) and the user's batch."""

    inputs: Any
    targets: torch.Tensor | None
    raw: Any

    def __len__(self) -> int:
        return _rows(self.inputs)


def _concat(parts: list[Any]) -> Any:
    first = parts[0]
    if isinstance(first, torch.Tensor):
        return torch.cat(parts)
    if isinstance(first, Mapping):
        return {k: torch.cat([p[k] for p in parts]) for k in first}
    return [row for part in parts for row in part]


class Batches:
    """A split given as batches. ``source``: a DataLoader or any iterable that can be iterated again, or a
    function of no arguments returning a fresh iterable (called once per pass). Iterating yields the user's
    own batches; ``len`` is the number of rows; ``take``, ``inputs`` and ``targets`` gather rows as a `Split`
    does (what energy counting, calibration and export parity read)."""

    def __init__(self, source: Any, *, inputs: Callable[[Any], Any] = default_inputs,
                 targets: Callable[[Any], torch.Tensor | None] = default_targets) -> None:
        _check_source(source)
        self.source, self.inputs_of, self.targets_of = source, inputs, targets
        self._counts: tuple[int, int] | None = None  # (batches, rows), from one pass
        self._gathered: Split | None = None  # the first rows, as many as asked so far
        self._complete = False

    def __iter__(self) -> Iterator[Any]:
        fresh = self.source() if callable(self.source) and not isinstance(self.source, Iterable) else self.source
        return iter(fresh)

    def batches(self) -> Iterator[LoaderBatch]:
        """The batches with their model input and labels taken out, in the source's own order."""
        for raw in self:
            yield LoaderBatch(self.inputs_of(raw), self.targets_of(raw), raw)

    def _count(self) -> tuple[int, int]:
        if self._counts is None:
            with torch.random.fork_rng(devices=[]):  # a shuffling loader draws from the global RNG
                sizes = [len(b) for b in self.batches()]
            if not sizes:
                raise WorkloadError("a split's batches are empty: its loader yielded no batch (a generator "
                                    "already used up? pass the generator function, not its result)")
            self._counts = (len(sizes), sum(sizes))
        return self._counts

    @property
    def num_batches(self) -> int:
        return self._count()[0]

    def __len__(self) -> int:
        return self._count()[1]

    @property
    def labelled(self) -> bool:
        return self._head(1).targets is not None

    def _head(self, n: int | None) -> Split:
        """The first n rows (all of them for None) as a Split, gathered once and kept."""
        have = self._gathered
        if have is not None and (self._complete or (n is not None and len(have) >= n)):
            return have
        parts, labels, rows = [], [], 0
        with torch.random.fork_rng(devices=[]):
            for batch in self.batches():
                parts.append(batch.inputs)
                labels.append(batch.targets)
                rows += len(batch)
                if n is not None and rows >= n:
                    break
            else:
                self._complete = True
        if not parts:
            raise WorkloadError("a split's batches are empty: its loader yielded no batch")
        try:
            gathered = Split(_concat(parts), None if labels[0] is None else torch.cat(labels))
        except (RuntimeError, TypeError) as exc:
            raise WorkloadError(f"the split's batches cannot be stacked into rows ({exc}): give `inputs=` a function "
                                "returning tensors of one shape per row (pad text to a fixed length)") from None
        self._gathered = gathered
        return gathered

    def take(self, index: torch.Tensor | slice) -> Split:
        stop = index.stop if isinstance(index, slice) and index.step is None and (index.stop or 0) >= 0 else None
        return self._head(stop).take(index)

    @property
    def inputs(self) -> Any:
        return self._head(None).inputs

    @property
    def targets(self) -> torch.Tensor | None:
        return self._head(None).targets


def _check_source(source: Any) -> None:
    if isinstance(source, Dataset) and not isinstance(source, IterableDataset):
        raise WorkloadError(f"a {type(source).__name__} yields single rows, not batches: wrap it as "
                            "torch.utils.data.DataLoader(dataset, batch_size=64)")
    if isinstance(source, Iterator):
        raise WorkloadError(f"a {type(source).__name__} can be iterated only once, but training passes over the "
                            "data every epoch: pass the function that makes it (e.g. `make_batches`, not "
                            "`make_batches()`), or a DataLoader")
    if not (isinstance(source, Iterable) or callable(source)):
        raise WorkloadError(f"a split's batches must be a DataLoader, an iterable of batches or a function returning "
                            f"one; got {type(source).__name__}")


def as_split(split: Any, where: str) -> Split | Batches:
    """A Split or Batches as it is; a TensorDataset as the Split it holds; a DataLoader as Batches; anything
    else refused, naming what to pass."""
    if isinstance(split, (Split, Batches)):
        return split
    if isinstance(split, TensorDataset) and len(split.tensors) in (1, 2):
        return Split(*split.tensors)
    if isinstance(split, DataLoader):
        return Batches(split)
    raise WorkloadError(
        f"{where} is a {type(split).__name__}, expected wattless.workloads.Split(inputs, targets), a "
        "TensorDataset(inputs[, targets]) or a DataLoader; for any other iterable of batches use "
        "Workload.from_loaders(...) (see docs/WORKLOADS.md)")


# --- metrics over batches ----------------------------------------------------------------------------------

def _to(inputs: Any, device: torch.device, dtype: torch.dtype) -> Any:
    if isinstance(inputs, torch.Tensor):
        return inputs.to(device, dtype) if inputs.is_floating_point() else inputs.to(device)
    if isinstance(inputs, Mapping):
        return {k: _to(v, device, dtype) for k, v in inputs.items()}
    return inputs


def _forward(model: nn.Module, inputs: Any) -> Any:
    return model(**inputs) if isinstance(inputs, Mapping) else model(inputs)


def _accuracy(outputs: torch.Tensor, batch: LoaderBatch) -> float:
    if batch.targets is None:
        raise WorkloadError("accuracy needs labels, but this split's batches have none: give `metric=` or "
                            "`evaluate=` to from_loaders, or `targets=` to find the labels in a batch")
    return float((outputs.argmax(-1).cpu() == batch.targets.cpu()).float().mean())


def batch_mean_evaluate(metric_name: str, metric: Callable[[Any, Any], float],
                        raw: bool = True) -> Callable[[nn.Module, Batches], dict[str, float]]:
    """evaluate from a per-batch metric(outputs, batch): its mean over the split, weighted by batch rows."""

    def evaluate(model: nn.Module, split: Batches) -> dict[str, float]:
        if not isinstance(split, Batches):
            raise WorkloadError(f"this workload's evaluate takes its own splits (Batches), got {type(split).__name__}")
        device, dtype, total, rows = model_device(model), model_float_dtype(model), 0.0, 0
        with eval_mode(model), torch.no_grad():
            for batch in split.batches():
                outputs = _forward(model, _to(batch.inputs, device, dtype))
                total += float(metric(outputs, batch.raw if raw else batch)) * len(batch)
                rows += len(batch)
        return {metric_name: total / max(rows, 1)}

    return evaluate


def _example_input(test: Batches) -> Callable[[int], Any]:
    def example_input(n: int) -> Any:
        head = test.take(slice(0, n))
        index = torch.arange(n) % len(head)
        return head.take(index).inputs

    return example_input


def from_loaders(
    name: str,
    build_model: Callable[[], nn.Module],
    *,
    train: Any,
    val: Any,
    test: Any,
    loss: Callable[[Any, Any], torch.Tensor] | None = None,
    metric: Callable[[Any, Any], float] | None = None,
    evaluate: Callable[[nn.Module, Batches], dict[str, float]] | None = None,
    metric_name: str | None = None,
    inputs: Callable[[Any], Any] = default_inputs,
    targets: Callable[[Any], torch.Tensor | None] = default_targets,
    example_input: Callable[[int], Any] | None = None,
    epochs: int = 1,
    lr: float = 1e-3,
    needs_training: bool = True,
    train_threads: int | None = None,
    seed: int = 0,
    description: str = "",
) -> Workload:
    """A Workload from the user's own batches, loss and metric; see the module docstring and docs/WORKLOADS.md.

    ``loss(outputs, batch)``: the task loss (a scalar tensor) of the model's outputs on one of the user's
    batches; default cross-entropy against ``targets(batch)``. The metric is one of: ``metric(outputs, batch)``
    (a batch mean, averaged over the split by rows), ``evaluate(model, batches) -> dict`` (iterate ``batches``
    for the user's batches), or, with neither, accuracy. ``metric_name`` names the one figure compared (default
    ``accuracy``). The loader decides the batch size; a recipe's ``train.batch_size`` does not apply."""
    splits = [_batches(split, f"workload {name!r}: {which}", inputs, targets)
              for which, split in (("train", train), ("val", val), ("test", test))]
    if metric is not None and evaluate is not None:
        raise WorkloadError(f"workload {name!r}: give `metric` (per batch) or `evaluate` (per split), not both")
    if evaluate is None:
        evaluate = batch_mean_evaluate(metric_name or "accuracy", metric or _accuracy, raw=metric is not None)
    return Workload(
        name=name, metric_name=metric_name or "accuracy", build_model=build_model, train=splits[0], val=splits[1],
        test=splits[2], example_input=example_input or _example_input(splits[2]), evaluate=evaluate,
        needs_training=needs_training, default_epochs=epochs, batch_size=_batch_rows(splits[0]), default_lr=lr,
        train_threads=train_threads, seed=seed, description=description, loss=loss)


def _batches(split: Any, where: str, inputs: Callable[[Any], Any], targets: Callable[[Any], Any]) -> Batches:
    if isinstance(split, Batches):
        return split
    if isinstance(split, Split):
        raise WorkloadError(f"{where} is a Split: pass Splits to Workload(...) itself, batches to from_loaders")
    return Batches(split, inputs=inputs, targets=targets)


def _batch_rows(split: Batches) -> int:
    """The rows in the train split's first batch (what Workload.batch_size reports for a loader)."""
    with torch.random.fork_rng(devices=[]):
        first = next(split.batches(), None)
    if first is None:
        raise WorkloadError("the train split's batches are empty: its loader yielded no batch")
    return len(first)
