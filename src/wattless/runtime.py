"""`wattless.runtime`: run a `wattless export` file on ONNX Runtime, dynamic paths included.

    model = load("m1.onnx", threads=2)
    result = model.run(x)             # x: (batch, *shape) or one input (*shape)
    result.outputs                    # logits (batch, classes), or (classes,) for one input
    result.paths[0].exit              # the exit the input took (len(exits): the final head); None if no exits
    result.paths[0].experts           # MoE block -> experts the input's tokens ran on
    encoder = load("minilm.onnx")
    encoder.embed(["A sentence.", "Another one."])   # (2, 384) unit-norm embeddings, tokenization included

Inputs are checked before they reach ONNX Runtime: a wrong shape, a non-float dtype or a NaN is a
ModelInputError naming the problem. Sentences are never padded: each batch handed to the session holds
sentences of one token length (they are grouped by length and put back in order).

Integer products run in the fastest form that is exact on this CPU (wattless.kernels): a file's u8 weights
(its portable form) run as u8 x s8 where the CPU's kernel sums those exactly (VNNI, AMX), and a file that
needs such a CPU is refused elsewhere (KernelError), never run wrong. ``kernels="as-written"`` runs the file
exactly as stored, as plain ONNX Runtime would.

Only numpy and onnxruntime run here; the tokenizer (transformers) loads on the first ``embed``.
"""

from __future__ import annotations

import json
import math
import os
import tempfile
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from wattless.errors import ExportError, ModelInputError

__all__ = ["load", "read_metadata", "ExportedModel", "RunResult", "PathTaken", "KERNEL_CHOICES"]

MAX_SENTENCE_TOKENS = 128  # the minilm workload's truncation, so embeddings match its evaluation


@dataclass(frozen=True)
class PathTaken:
    """The path one input took through the exported model."""

    exit: int | None = None  # index of the exit taken (len(exits) = the final head); None: no exits
    exit_name: str | None = None  # the block the exit follows, or "final"
    segments: int = 1  # chain segments computed for this input (exit + 1)
    experts: dict[str, list[int]] = field(default_factory=dict)  # MoE block -> experts its tokens used
    expert_tokens: dict[str, list[int]] = field(default_factory=dict)  # MoE block -> tokens per expert


class RunResult:
    """``outputs``: (batch, ...), or without the batch dimension for a single input. ``paths``: the path each
    input took, built on first access (a call that never asks pays nothing for it)."""

    def __init__(self, outputs: np.ndarray, paths: Any) -> None:
        self.outputs = outputs
        self._paths = paths

    @property
    def paths(self) -> list[PathTaken]:
        if callable(self._paths):
            self._paths = self._paths()
        return self._paths

    def __len__(self) -> int:
        return len(self.paths)


KERNEL_CHOICES = ("auto", "as-written")


def load(path: str | Path, *, threads: int | None = None, kernels: str = "auto", spin: bool = True) -> Any:
    """Open an export for inference; ``threads``: ONNX Runtime intra-op threads (default: all cores);
    ``kernels``: "auto" (the fastest exact form on this CPU) or "as-written" (the file as stored).
    A decoder language model (kind "decoder-lm") opens as a ``wattless.lm_runtime.DecoderLM`` (generate);
    ``spin=False`` lets its idle threads sleep instead of spinning (on cores shared with other work a
    spinning thread waits for one the OS has taken away: 17 against 29 decode tokens/s measured here)."""
    path = Path(path)
    proto = _read_model(path)
    meta = _read_meta(proto, path)
    if meta.get("kind") == "decoder-lm":
        from wattless.lm_runtime import DecoderLM

        return DecoderLM(path, meta, proto.SerializeToString(), threads=threads, spin=spin)
    return ExportedModel(path, threads=threads, kernels=kernels)


def _read_model(path: Path) -> Any:
    import onnx

    if not path.is_file():
        raise ExportError(f"{path} does not exist; export a run first: wattless export RUN_DIR --out {path}")
    if path.stat().st_size == 0:
        raise ExportError(f"{path} is empty (zero bytes); export the run again: wattless export RUN_DIR --out {path}")
    try:
        return onnx.load(str(path), load_external_data=False)
    except Exception as exc:
        raise ExportError(f"{path} is not an ONNX file ({type(exc).__name__}: {exc})") from None


def _read_meta(model: Any, path: Path) -> dict[str, Any]:
    meta = {p.key.removeprefix("wattless."): p.value for p in model.metadata_props if p.key.startswith("wattless.")}
    if "format" not in meta:
        raise ExportError(f"{path} is an ONNX file but not a wattless export (no wattless metadata); "
                          "export a run with: wattless export RUN_DIR --out FILE")
    try:
        return {k: json.loads(v) for k, v in meta.items()}
    except json.JSONDecodeError as exc:
        raise ExportError(f"{path} has damaged wattless metadata ({exc}); export it again") from None


def read_metadata(path: str | Path) -> dict[str, Any]:
    """The wattless metadata of an export file, without starting a session; ExportError names what is wrong
    with a file that is missing, empty, not ONNX or not a wattless export."""
    path = Path(path)
    return _read_meta(_read_model(path), path)


class ExportedModel:
    """An exported classifier or sentence encoder on an ONNX Runtime session."""

    def __init__(self, path: str | Path, *, threads: int | None = None, kernels: str = "auto") -> None:
        import onnxruntime as ort

        from wattless.kernels import for_this_cpu

        if kernels not in KERNEL_CHOICES:
            raise ExportError(f"kernels={kernels!r}: choose one of {', '.join(KERNEL_CHOICES)}")
        self.path = Path(path)
        proto = _read_model(self.path)
        self.meta = _read_meta(proto, self.path)
        # the form the integer products run in here (wattless.kernels); None: as written
        self.kernels = for_this_cpu(proto, self.path) if kernels == "auto" else None
        self._bytes = proto.SerializeToString()
        self.kind: str = self.meta["kind"]
        self.workload: str = self.meta.get("workload", "")
        self.threads = threads
        self.exits: list[dict[str, Any]] = self.meta.get("exits", [])
        self.routes: dict[str, dict[str, Any]] = self.meta["outputs"]["routes"]
        self._spec = self.meta["input"]
        try:
            self.session = ort.InferenceSession(self._bytes, self._options(), providers=["CPUExecutionProvider"])
        except Exception as exc:
            raise ExportError(f"ONNX Runtime cannot load {self.path}: {exc}") from None
        self._outputs = [o.name for o in self.session.get_outputs()]
        self._main = self._outputs.index(self.meta["outputs"]["output"])
        self._input = self._spec["name"]
        self._shape = tuple(self._spec.get("shape", ()))
        self._dtype = np.dtype(self._spec.get("dtype", "float32"))  # float32, or int64 token ids
        self._tokenizer = None

    def _options(self, profile_prefix: str | None = None) -> Any:
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.log_severity_level = 3
        if self.threads:
            options.intra_op_num_threads = self.threads
        if profile_prefix is not None:
            options.enable_profiling = True
            options.profile_file_prefix = profile_prefix
        return options

    @property
    def parity(self) -> dict[str, Any] | None:
        """The export's parity check (tolerances, share within, metrics), as recorded in the file."""
        return self.meta.get("parity")

    # -- running -----------------------------------------------------------------------------------------
    def __call__(self, inputs: Any) -> np.ndarray:
        return self.run(inputs).outputs

    def run(self, inputs: Any) -> RunResult:
        """Run a batch or a single input; returns the outputs and the path each input took."""
        if self.kind == "sentence-encoder":
            rows, single = self._token_rows(inputs)
            out, paths = self._run_rows(rows)
        else:
            x, single = self._classifier_input(inputs)
            out, paths = self._run_batch(x)
        return RunResult(out[0] if single else out, paths)

    def embed(self, sentences: Sequence[str], *, batch_size: int = 32) -> np.ndarray:
        """(n, dim) unit-norm sentence embeddings; tokenization included, no padding."""
        if self.kind != "sentence-encoder":
            raise ModelInputError(f"{self.path} is a {self.kind}; embed() is for sentence encoders (minilm)")
        if isinstance(sentences, str) or not all(isinstance(s, str) for s in sentences):
            raise ModelInputError("embed() takes a list of sentences (str), e.g. embed(['A sentence.'])")
        if not sentences:
            return np.zeros((0, self.meta["embedding_dim"]), np.float32)
        ids = self.tokenizer(list(sentences), truncation=True, max_length=MAX_SENTENCE_TOKENS, padding=False,
                             return_token_type_ids=False, return_attention_mask=False)["input_ids"]
        out, _ = self._run_rows([np.asarray(r, dtype=np.int64) for r in ids], batch_size=batch_size)
        return out

    @property
    def tokenizer(self) -> Any:
        if self._tokenizer is None:
            if self.meta.get("tokenizer") != "minilm":
                raise ExportError(f"{self.path} names no tokenizer; feed token ids to run() instead")
            from wattless.workloads.minilm import load_tokenizer

            self._tokenizer = load_tokenizer()
        return self._tokenizer

    def _run_batch(self, x: np.ndarray) -> tuple[np.ndarray, Any]:
        results = self.session.run(None, {self._input: x})
        return results[self._main], lambda: self._paths(dict(zip(self._outputs, results)), len(x))

    def _run_rows(self, rows: list[np.ndarray], batch_size: int = 64) -> tuple[np.ndarray, list[PathTaken]]:
        """Token rows of any lengths, run in batches of one length each (never padded), back in order."""
        by_length: dict[int, list[int]] = defaultdict(list)
        for i, r in enumerate(rows):
            by_length[len(r)].append(i)
        out: np.ndarray | None = None
        parts = []
        for members in by_length.values():
            for start in range(0, len(members), batch_size):
                part = members[start : start + batch_size]
                got, got_paths = self._run_batch(np.stack([rows[i] for i in part]))
                if out is None:
                    out = np.empty((len(rows), *got.shape[1:]), dtype=got.dtype)
                out[part] = got
                parts.append((part, got_paths))

        def paths() -> list[PathTaken]:
            ordered = [PathTaken()] * len(rows)
            for part, got_paths in parts:
                for i, p in zip(part, got_paths()):
                    ordered[i] = p
            return ordered

        return out, paths

    def _paths(self, results: dict[str, np.ndarray], n: int) -> list[PathTaken]:
        exits = results.get("exit") if self.meta["outputs"].get("exit") else None
        names = [e["after"] for e in self.exits] + ["final"]
        routes = {block: results[r["output"]].reshape(n, -1) for block, r in self.routes.items()}
        paths = []
        for i in range(n):
            experts = {b: sorted(set(v[i].tolist())) for b, v in routes.items()}
            counts = {b: np.bincount(v[i], minlength=self.routes[b]["experts"]).tolist() for b, v in routes.items()}
            k = int(exits[i]) if exits is not None else None
            paths.append(PathTaken(exit=k, exit_name=names[k] if k is not None else None,
                                   segments=k + 1 if k is not None else 1, experts=experts, expert_tokens=counts))
        return paths

    # -- checking inputs ---------------------------------------------------------------------------------
    def _classifier_input(self, inputs: Any) -> tuple[np.ndarray, bool]:
        x = inputs if type(inputs) is np.ndarray else _as_array(inputs)
        dtype = self._dtype
        if dtype.kind == "f" and x.dtype.kind != "f":
            raise ModelInputError(f"wrong dtype {x.dtype}: this model takes floating-point inputs (float32); "
                                  "convert with .astype(numpy.float32)")
        if dtype.kind in "iu" and x.dtype.kind not in "iu":
            raise ModelInputError(f"wrong dtype {x.dtype}: this model takes integer inputs ({dtype}, e.g. token ids)")
        shape = self._shape
        if x.shape == shape:
            x, single = x[None], True
        elif x.shape[1:] == shape:
            single = False
        else:
            raise ModelInputError(f"wrong shape {tuple(x.shape)}: this model takes one input of shape {shape} or "
                                  f"a batch of shape (batch, {', '.join(map(str, shape))})")
        if len(x) == 0:
            raise ModelInputError("empty batch: pass at least one input")
        if x.dtype != dtype or not x.flags.c_contiguous:
            x = np.ascontiguousarray(x, dtype=dtype)
        if dtype.kind == "f":
            _check_finite(x)
        return x, single

    def _token_rows(self, inputs: Any) -> tuple[list[np.ndarray], bool]:
        mask = None
        if isinstance(inputs, dict):
            if "input_ids" not in inputs:
                raise ModelInputError(f"a dict input needs 'input_ids' (and optionally 'attention_mask'); got keys "
                                      f"{sorted(inputs)}")
            ids, mask = _as_array(inputs["input_ids"]), inputs.get("attention_mask")
        else:
            ids = _as_array(inputs)
        if ids.dtype.kind not in "iu":
            raise ModelInputError(f"wrong dtype {ids.dtype}: input_ids must be integer token ids (int64)")
        single = ids.ndim == 1
        ids = ids[None] if single else ids
        if ids.ndim != 2 or ids.shape[0] == 0 or ids.shape[1] == 0:
            raise ModelInputError(f"wrong shape {tuple(ids.shape)}: input_ids must be (batch, tokens) or (tokens,), "
                                  "with at least one token")
        vocab, limit = self._spec["vocab_size"], self._spec["max_tokens"]
        if ids.min() < 0 or ids.max() >= vocab:
            raise ModelInputError(f"token ids must lie in [0, {vocab}); got values from {ids.min()} to {ids.max()}")
        keep = np.ones(ids.shape, dtype=bool)
        if mask is not None:
            keep = _as_array(mask)
            keep = keep[None] if single else keep
            if keep.shape != ids.shape:
                raise ModelInputError(f"attention_mask has shape {tuple(keep.shape)}, input_ids {tuple(ids.shape)}: "
                                      "they must match")
            keep = keep.astype(bool)
        rows = [row[k].astype(np.int64) for row, k in zip(ids, keep)]  # padding dropped, never computed
        if any(len(r) == 0 for r in rows):
            raise ModelInputError("a row of attention_mask is all zeros: every sentence needs at least one token")
        if max(len(r) for r in rows) > limit:
            raise ModelInputError(f"a sentence has {max(len(r) for r in rows)} tokens; the model takes at most {limit}")
        return rows, single

    # -- what actually ran ---------------------------------------------------------------------------------
    def executed_ops(self, inputs: Any) -> dict[str, int]:
        """Operators ONNX Runtime executed for one call on ``inputs`` (from its profiler), by type.

        Proof that dynamic paths skip work: an input leaving at the first exit runs fewer operators."""
        import onnxruntime as ort

        with tempfile.TemporaryDirectory() as tmp:
            session = ort.InferenceSession(self._bytes, self._options(os.path.join(tmp, "profile")),
                                           providers=["CPUExecutionProvider"])
            if self.kind == "sentence-encoder":
                rows, _ = self._token_rows(inputs)
                feed = np.stack(rows)
            else:
                feed = self._classifier_input(inputs)[0]
            session.run(None, {self._spec["name"]: feed})
            events = json.loads(Path(session.end_profiling()).read_text())
        counts: dict[str, int] = defaultdict(int)
        for e in events:
            if e.get("cat") == "Node" and e.get("name", "").endswith("_kernel_time"):
                counts[e["args"]["op_name"]] += 1
        return dict(counts)


def _as_array(inputs: Any) -> np.ndarray:
    if hasattr(inputs, "detach") and hasattr(inputs, "numpy"):  # a torch tensor, without importing torch
        inputs = inputs.detach().cpu().numpy()
    try:
        x = np.asarray(inputs)
    except (ValueError, TypeError) as exc:
        raise ModelInputError(f"inputs cannot be read as one array ({exc}): pass a numpy array, a tensor, or "
                              "equal-length nested lists") from None
    if x.dtype == object or x.dtype.kind in "USV":
        raise ModelInputError(f"wrong dtype {x.dtype}: pass numbers (a numpy array or a tensor), not "
                              f"{type(inputs).__name__} of mixed or text values")
    return x


def _check_finite(x: np.ndarray) -> None:
    if math.isfinite(np.add.reduce(x, axis=None)):  # one pass; an overflowing sum falls through to the full check
        return
    bad = ~np.isfinite(x)
    if bad.any():
        first = tuple(int(i) for i in np.argwhere(bad)[0])
        raise ModelInputError(f"input holds {int(np.isnan(x).sum())} NaN and {int(np.isinf(x).sum())} infinite values "
                              f"(first at index {first}); clean or impute them before inference")
