"""Built-in workloads load offline, split cleanly and deterministically, train, and score; user specs load."""

from __future__ import annotations

import re
import textwrap
from functools import cache

import pytest
import torch
from torch import nn

from wattless.errors import WattlessError, WorkloadError
from wattless.workloads import Split, Workload, get_workload, iter_batches, list_workloads

# name -> (input shape without batch, epochs, lr, accuracy the short run must beat); chance is 0.1.
# Seen with seed 0 (deterministic on CPU): mnist1d ~0.73 after 5 epochs, digits ~0.96 after 3.
CLASSIFIERS = {
    "mnist1d": ((1, 40), 5, 1e-2, 0.5),
    "digits": ((1, 8, 8), 3, 1e-2, 0.8),
}
PROSE = re.compile(r"^[A-Z][^\n]*\.$")


@cache
def _workload(name: str, seed: int = 0) -> Workload:
    return get_workload(name, seed=seed)


def _rows(split: Split) -> set:
    if isinstance(split.inputs, list):
        return set(split.inputs)
    return {tuple(row.tolist()) for row in split.inputs.flatten(1)}


def _assert_same_split(a: Split, b: Split) -> None:
    if isinstance(a.inputs, list):
        assert a.inputs == b.inputs
    else:
        assert torch.equal(a.inputs, b.inputs)
        assert (a.targets is None and b.targets is None) or torch.equal(a.targets, b.targets)  # LM: no labels


def test_list_workloads_names_the_built_ins() -> None:
    assert list_workloads() == ["digits", "minilm", "mnist1d", "smollm2"]


@pytest.mark.parametrize("name", sorted(CLASSIFIERS))
def test_classifier_splits_have_consistent_shapes(name: str) -> None:
    workload, (shape, *_) = _workload(name), CLASSIFIERS[name]
    assert workload.metric_name == "accuracy" and workload.needs_training
    for split in (workload.train, workload.val, workload.test):
        assert split.inputs.dtype == torch.float32 and split.inputs.shape[1:] == shape
        assert split.targets.dtype == torch.int64 and split.targets.shape == (len(split),)
        assert set(split.targets.tolist()) == set(range(10))
    n_over = len(workload.test) + 3  # wraps round the test set
    assert workload.example_input(n_over).shape == (n_over, *shape)
    assert workload.build_model()(workload.example_input(4)).shape == (4, 10)


def test_digits_is_scaled_to_unit_range() -> None:
    inputs = _workload("digits").train.inputs
    assert inputs.min() == 0.0 and inputs.max() == 1.0


def test_mnist1d_keeps_the_benchmark_sizes() -> None:
    workload = _workload("mnist1d")
    assert (len(workload.train) + len(workload.val), len(workload.test)) == (4000, 1000)


@pytest.mark.parametrize("name", list_workloads())
def test_splits_are_disjoint(name: str) -> None:
    workload = _workload(name)
    train, val, test = _rows(workload.train), _rows(workload.val), _rows(workload.test)
    assert (len(train), len(val), len(test)) == (len(workload.train), len(workload.val), len(workload.test))
    assert not (train & val) and not (train & test) and not (val & test)


@pytest.mark.parametrize("name", list_workloads())
def test_same_seed_gives_the_same_data(name: str) -> None:
    first, second = _workload(name), get_workload(name, seed=0)
    for split in ("train", "val", "test"):
        _assert_same_split(getattr(first, split), getattr(second, split))


def test_mnist1d_generation_is_reproducible_and_keeps_the_callers_rng() -> None:
    import numpy as np

    from wattless.workloads import mnist1d

    first = get_workload("mnist1d")
    mnist1d._generate.cache_clear()
    np.random.seed(123)
    expected = np.random.rand()
    np.random.seed(123)
    second = get_workload("mnist1d")
    assert np.random.rand() == expected
    _assert_same_split(first.test, second.test)
    _assert_same_split(first.train, second.train)


@pytest.mark.parametrize("name", sorted(CLASSIFIERS))
def test_seed_changes_the_split_and_the_initial_weights(name: str) -> None:
    seed0, seed1 = _workload(name, 0), _workload(name, 1)
    assert not torch.equal(seed0.val.inputs, seed1.val.inputs)
    weights0, again0 = seed0.build_model().state_dict(), seed0.build_model().state_dict()
    weights1 = seed1.build_model().state_dict()
    assert all(torch.equal(w, v) for w, v in zip(weights0.values(), again0.values()))
    assert not all(torch.equal(w, v) for w, v in zip(weights0.values(), weights1.values()))


@pytest.mark.parametrize("name", sorted(CLASSIFIERS))
def test_baseline_trains_well_above_chance(name: str) -> None:
    workload, (_, epochs, lr, floor) = _workload(name), CLASSIFIERS[name]
    model = workload.build_model()
    optimizer = torch.optim.Adam(model.parameters(), lr=lr)
    assert workload.evaluate(model, workload.test)["accuracy"] < 0.3
    for epoch in range(epochs):
        for batch in iter_batches(workload.train, 64, shuffle_seed=epoch):
            optimizer.zero_grad()
            nn.functional.cross_entropy(model(batch.inputs), batch.targets).backward()
            optimizer.step()
    model.train()
    assert workload.evaluate(model, workload.test)["accuracy"] > floor
    assert model.training, "evaluate must hand the model back in the mode it found it"


def test_evaluate_needs_labels() -> None:
    workload = _workload("digits")
    with pytest.raises(WorkloadError, match="labels"):
        workload.evaluate(workload.build_model(), Split(workload.test.inputs))


# --- minilm ----------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def minilm() -> Workload:
    return _workload("minilm")


def test_minilm_corpus_is_real_text(minilm: Workload) -> None:
    assert len(minilm.test) == 256 and len(minilm.val) >= 256 and len(minilm.train) >= 1000
    for sentence in minilm.train.inputs + minilm.val.inputs + minilm.test.inputs:
        assert isinstance(sentence, str) and PROSE.match(sentence), sentence
        assert 5 <= len(sentence.split()) <= 60
        assert sum(c.isalpha() or c == " " for c in sentence) / len(sentence) > 0.7, sentence
    assert minilm.train.targets is None and minilm.test.targets is None


def test_minilm_shapes(minilm: Workload) -> None:
    from wattless.workloads.minilm import embed, load_tokenizer

    model = minilm.build_model()
    assert type(model).__name__ == "BertModel" and not minilm.needs_training
    example = minilm.example_input(3)
    assert set(example) == {"input_ids", "attention_mask"} and example["input_ids"].shape == (3, 64)
    emb = embed(model, load_tokenizer(), minilm.test.inputs[:5])
    assert emb.shape == (5, 384) and torch.allclose(emb.norm(dim=1), torch.ones(5), atol=1e-5)
    prepared = minilm.prepare_inputs(minilm.train.inputs[:4])
    assert prepared["input_ids"].shape[0] == 4 and prepared["input_ids"].shape[1] <= 128


def test_minilm_fp32_matches_itself(minilm: Workload) -> None:
    scores = minilm.evaluate(minilm.build_model(), minilm.test)
    assert scores["cosine"] == pytest.approx(1.0, abs=1e-5)
    assert scores["nn_agreement"] == 1.0


def test_minilm_perturbed_model_scores_lower(minilm: Workload) -> None:
    model = minilm.build_model()
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, nn.Linear):
                noise = torch.randn(module.weight.shape, generator=generator)
                module.weight += 0.05 * module.weight.std() * noise
    scores = minilm.evaluate(model, minilm.test)
    # Seen: cosine 0.989, nn_agreement 0.90; graded, not destroyed.
    assert 0.9 < scores["cosine"] < 0.999 and scores["nn_agreement"] < 1.0


# --- user workloads --------------------------------------------------------------------------------------

_FACTORY_FILE = '''
import torch
from torch import nn
from wattless.workloads import Split, Workload

def make():
    split = Split(torch.zeros(4, 3), torch.zeros(4, dtype=torch.int64))
    return Workload(
        name="tiny", metric_name="accuracy", build_model=lambda: nn.Linear(3, 2),
        train=split, val=split, test=split, example_input=lambda n: torch.zeros(n, 3),
        evaluate=lambda model, split: {"accuracy": 1.0}, needs_training=True, default_epochs=1, batch_size=2,
    )

def broken():
    raise RuntimeError("no data here")

def wrong_type():
    return 42
'''


@pytest.fixture
def spec_file(tmp_path):
    path = tmp_path / "my_workload.py"
    path.write_text(textwrap.dedent(_FACTORY_FILE))
    return path


def test_user_spec_from_a_file(spec_file) -> None:
    workload = get_workload(f"{spec_file}:make")
    assert workload.name == "tiny"
    assert workload.evaluate(workload.build_model(), workload.test) == {"accuracy": 1.0}


def test_user_spec_from_a_module(spec_file, monkeypatch) -> None:
    monkeypatch.syspath_prepend(str(spec_file.parent))
    assert get_workload("my_workload:make").name == "tiny"


@pytest.mark.parametrize(
    "spec, message",
    [
        ("no/such/file.py:make", "not found"),
        ("{file}:missing", "no callable 'missing'.*make"),
        ("{file}:broken", "raised RuntimeError: no data here"),
        ("{file}:wrong_type", "returned type int, expected"),
        ("no_such_package_xyz.module:make", "ModuleNotFoundError"),
        ("{file}:", "unknown workload"),
    ],
)
def test_user_spec_errors_say_what_went_wrong(spec_file, spec: str, message: str) -> None:
    with pytest.raises(WorkloadError, match=message):
        get_workload(spec.format(file=spec_file))


def test_user_file_that_fails_to_import(tmp_path) -> None:
    path = tmp_path / "bad.py"
    path.write_text("raise ImportError('needs a package you lack')\n")
    with pytest.raises(WorkloadError, match="importing workload source .* ImportError: needs a package"):
        get_workload(f"{path}:make")


def test_unknown_name_lists_the_known_ones() -> None:
    with pytest.raises(WorkloadError, match="digits, minilm, mnist1d") as info:
        get_workload("cifar10")
    assert isinstance(info.value, WattlessError)


def test_workload_rejects_mismatched_targets() -> None:
    with pytest.raises(WorkloadError, match="3 inputs but 2 targets"):
        Workload(
            name="bad", metric_name="accuracy", build_model=lambda: nn.Linear(1, 1),
            train=Split(torch.zeros(3, 1), torch.zeros(2)), val=Split(torch.zeros(1, 1)),
            test=Split(torch.zeros(1, 1)), example_input=lambda n: torch.zeros(n, 1),
            evaluate=lambda m, s: {"accuracy": 0.0}, needs_training=True, default_epochs=1, batch_size=1,
        )  # fmt: skip
