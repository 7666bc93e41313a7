"""The entry points: export_model and export_run build the graph, write it atomically, check parity.

The products are turned to the portable form (wattless.kernels.to_portable) as the file is written, and
the parity check runs the runtime's form for this CPU (parity.check_forms)."""

from __future__ import annotations

import copy
import json
import os
import tempfile
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.nn.utils import parametrize

from wattless.errors import ExportError, ParityError
from wattless.export import parity
from wattless.export.bert import build_bert, is_bert
from wattless.export.classifier import build_classifier, logits_only
from wattless.export.fold import fold_batchnorms
from wattless.export.graph import MS, OPSET, Ctx, all_nodes, inputs_deep, to_numpy
from wattless.export.walk import run_full
from wattless.export.report import ExportReport, Parity, Tolerance
from wattless.kernels import INT8_KERNELS, integer_products, to_portable
from wattless.techniques import convert_
from wattless.techniques.early_exit import EarlyExitModel
from wattless.techniques.prune import is_mac

__all__ = ["export_model", "export_run", "FORMAT", "OPSET"]

FORMAT = "1"


# --- the model as it is deployed ---------------------------------------------------------------------------

def _is_graph_tensor(v: Any) -> bool:
    if isinstance(v, (list, tuple)):
        return any(_is_graph_tensor(t) for t in v)
    return isinstance(v, torch.Tensor) and v.grad_fn is not None


def _deployed(model: nn.Module) -> nn.Module:
    """A converted eval copy. Tensors the last training forward left on modules (soft probabilities, exit
    logits) belong to an autograd graph, which neither export nor copy needs: they are dropped first."""
    for m in model.modules():
        for key in [k for k, v in vars(m).items() if not k.startswith("_") and _is_graph_tensor(v)]:
            setattr(m, key, None)
    model = copy.deepcopy(model).eval()
    for m in model.modules():  # a copy shares its parametrized class with the original; converting edits the class
        if parametrize.is_parametrized(m):
            body = {k: v for k, v in vars(type(m)).items() if k not in ("__dict__", "__weakref__")}
            m.__class__ = type(type(m).__name__, type(m).__bases__, body)
    return convert_(model)  # every technique's convert step: masks baked, quantizer steps frozen


# --- writing ---------------------------------------------------------------------------------------------

def _add_meta(model: Any, updates: dict[str, Any]) -> None:
    for key, value in updates.items():
        entry = model.metadata_props.add()
        entry.key, entry.value = f"wattless.{key}", json.dumps(value)


def _save(graph: Any, meta: dict[str, Any], path: Path) -> None:
    import onnx
    from onnx import helper

    used = {i for n in graph.node for i in inputs_deep(n)}
    kept = [t for t in graph.initializer if t.name in used]  # fusion leaves some constants unread
    del graph.initializer[:]
    graph.initializer.extend(kept)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET), helper.make_opsetid(MS, 1)],
                              producer_name="wattless")
    model.ir_version = min(model.ir_version, 10)  # what onnxruntime 1.18+ reads
    if meta.get("int8_kernel", "portable") == "portable":
        to_portable(model)
    forms: dict[str, int] = {}
    for product in integer_products(model):
        forms[product.weight_form] = forms.get(product.weight_form, 0) + 1
    meta["integer_products"] = forms
    _add_meta(model, {"format": FORMAT, **meta})
    onnx.save(model, str(path))


def _set_meta(path: Path, updates: dict[str, Any]) -> None:
    import onnx

    model = onnx.load(str(path))
    _add_meta(model, updates)
    onnx.save(model, str(path))


def _check(model: nn.Module, tmp: Path, wl: Any, tol: Tolerance, meta: dict[str, Any], out: Path, last: bool,
           requantized: bool) -> Parity:
    checker = parity.check_encoder if meta["kind"] == "sentence-encoder" else parity.check_classifier
    result = checker(model, tmp, wl, tol, requantized)
    if not result.passed and last:
        raise ParityError(f"export parity check failed: {result.describe()}; nothing was written to {out}. "
                          "Compare the run's metrics.json with the model, or loosen the Tolerance if the "
                          "difference is expected")
    if result.passed:
        parity.check_forms(tmp, wl, meta)
        _set_meta(tmp, {"parity": result.to_json()})
    return result


def _write_checked(graph: Any, meta: dict[str, Any], model: nn.Module, wl: Any, out: Path, tol: Tolerance | None,
                   last: bool, requantized: bool = False) -> Parity | None:
    """Write to a temporary file beside ``out``, check parity, then move it into place (atomic). A failed
    check raises ParityError if ``last``, else returns the failed Parity; nothing is left behind either way."""
    fd, tmp_name = tempfile.mkstemp(prefix=f".{out.name}.", suffix=".tmp", dir=out.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        _save(graph, meta, tmp)
        result = None if tol is None else _check(model, tmp, wl, tol, meta, out, last, requantized)
        if result is not None and not result.passed:
            return result
        os.replace(tmp, out)
        return result
    finally:
        tmp.unlink(missing_ok=True)


# --- notes -------------------------------------------------------------------------------------------------

def _kernel_notes(meta: dict[str, Any]) -> list[str]:
    forms = meta["integer_products"]
    if meta["int8_kernel"] == "vnni" and forms.get("s8"):
        return ["--int8-kernel vnni: s8 weights everywhere; exact only on CPUs with AVX-512 VNNI, AVX-VNNI or AMX "
                "(ONNX Runtime's u8 x s8 kernel saturates on AVX2 without VNNI; wattless.runtime refuses it there)"]
    if forms.get("u8"):
        return [f"{forms['u8']} integer products hold u8 weights (code + 128, zero point 128): exact on every CPU; "
                "wattless.runtime runs them as u8 x s8 where the CPU sums those exactly (VNNI, AMX)"]
    return []


def _notes(model: nn.Module, ctx: Ctx) -> list[str]:
    notes = []
    kept = [ctx.keep.take(m, "weight", to_numpy(m.weight)) for m in model.modules() if is_mac(m)]  # after the cut
    zeros = sum(int((w == 0).sum()) for w in kept) / max(1, sum(w.size for w in kept))
    if zeros > 0.05:
        notes.append("zero weights (unstructured or 2:4) are stored dense: ONNX Runtime has no sparse CPU kernel")
    dead_rows = any(bool((w.reshape(w.shape[0], -1) == 0).all(1).any()) for w in kept if w.ndim > 1)
    if isinstance(model, EarlyExitModel) and dead_rows:
        notes.append("structurally pruned units stay as zeros in early-exit models (exit heads read the blocks' "
                     "channels, so no unit is cut)")
    return notes


def _fold_notes(folded: list[str]) -> list[str]:
    if not folded:
        return []
    return [f"{len(folded)} BatchNorm layers folded into the Conv/Linear before them (weights and per-channel steps "
            f"scaled, the same integer codes): {', '.join(folded[:4])}{', ...' if len(folded) > 4 else ''}"]


def _fused_note(parity_: Parity) -> str:
    return (f"fused integer requantization (QLinearConv): its int32 biases round the trained float biases, so "
            f"{100 * parity_.within:.1f}% of the logits match PyTorch within the output tolerance and "
            f"{100 * parity_.agree:.2f}% of the classes agree; --exact exports the exact path")


def _rejected_note(parity_: Parity) -> str:
    return (f"fused integer requantization (QLinearConv, int32 bias) was rejected: {parity_.describe()}; "
            "the exact path (ConvInteger + float scale and bias) is exported instead")


# --- the entry points ------------------------------------------------------------------------------------

def _output_path(out: str | Path) -> Path:
    out = Path(out)
    if out.exists() and out.is_dir():
        raise ExportError(f"--out {out} is a directory; give a file path such as {out / 'model.onnx'}")
    out.parent.mkdir(parents=True, exist_ok=True)
    return out


def _example(wl: Any, bert: bool) -> torch.Tensor | None:
    example = None if bert else wl.example_input(2)
    if not bert and not isinstance(example, torch.Tensor):
        raise ExportError(f"export supports classifiers taking one tensor and BERT sentence encoders; "
                          f"workload {wl.name!r} feeds {type(example).__name__}")
    return example if bert or not example.is_floating_point() else example.float()


from wattless.export.lm import export_decoder, is_decoder  # noqa: E402  (after this module's own imports)


def export_model(model: nn.Module, workload: Any, out: str | Path, *, tolerance: Tolerance | None = None,
                 check: bool = True, requantize: bool | None = None, int8_kernel: str = "portable") -> ExportReport:
    """Export ``model`` (a wattless-optimized module of ``workload``) to the ONNX file ``out``.

    ``int8_kernel``: "portable" (exact on every CPU: u8 weights where u8 x s8 pair sums could saturate) or
    "vnni" (s8 weights everywhere: exact only on CPUs with VNNI or AMX); see wattless.kernels.

    ``requantize``: fuse each integer conv with the next layer's quantizer (QLinearConv, integers in and out).
    Its int32 bias rounds the float bias the QAT trained to the accumulator's grid, which can flip codes;
    None (default) tries it and keeps it only if the parity check passes, else exports the exact path.
    The parity check runs on the workload's test split; a failure raises ParityError and leaves nothing at
    ``out`` (an existing file there is kept unchanged)."""
    from wattless.workloads import get_workload

    if int8_kernel not in INT8_KERNELS:
        raise ExportError(f"int8_kernel {int8_kernel!r}: choose one of {', '.join(INT8_KERNELS)}")
    wl = get_workload(workload) if isinstance(workload, str) else workload
    out = _output_path(out)
    tol = tolerance or Tolerance()
    model = _deployed(model)
    if is_decoder(model):
        return export_decoder(model, out, windows=wl.test.inputs, tokenizer="smollm2" if wl.name == "smollm2" else None,
                              workload=wl.name, check=check)
    bert = is_bert(model)
    example = _example(wl, bert)
    model = model if bert else logits_only(model, example)
    built, folded = (model, []) if bert else fold_batchnorms(model, lambda m: run_full(m, example[:2]))
    modes = [False] if bert or requantize is False else [True] if requantize else [True, False]
    notes: list[str] = []
    for fuse in modes:
        graph, ctx, meta = build_bert(model, wl.name) if bert else build_classifier(built, example, wl.name, fuse)
        fused = any(n.op_type == "QLinearConv" for n in all_nodes(graph))
        if fuse and not fused:
            modes = [fuse]  # nothing was fused: the exact path is this one
        meta.update(workload=wl.name, layers=ctx.layers, removed=ctx.keep.removed, int8_kernel=int8_kernel)
        result = _write_checked(graph, meta, model, wl, out, tol if check else None, last=fuse == modes[-1],
                                requantized=fused)
        if result is None or result.passed:
            notes += [_fused_note(result)] if fused and result is not None else []
            break
        notes.append(_rejected_note(result))
    return ExportReport(path=out, kind=meta["kind"], workload=wl.name, size_bytes=out.stat().st_size,
                        parity=result if check else None, layers=ctx.layers, removed=ctx.keep.removed,
                        exits=meta["exits"], routes={k: v["experts"] for k, v in meta["outputs"]["routes"].items()},
                        notes=notes + _fold_notes(folded) + _notes(built, ctx) + _kernel_notes(meta),
                        int8_kernel=int8_kernel,
                        integer_products=meta["integer_products"])


def export_run(run_dir: str | Path, out: str | Path, *, tolerance: Tolerance | None = None,
               check: bool = True, requantize: bool | None = None, workload: Any = None,
               int8_kernel: str = "portable") -> ExportReport:
    """Export the optimized model of a `wattless optimize` run directory (see export_model). ``workload``: the
    run's workload (a name, spec or Workload) where run.json's name alone cannot rebuild it (user workloads)."""
    from wattless.optimize import load_run

    run_dir = Path(run_dir)
    missing = [f for f in ("run.json", "recipe.toml", "model.safetensors") if not (run_dir / f).is_file()]
    if missing:
        raise ExportError(f"{run_dir} is not a finished `wattless optimize` run: it lacks {', '.join(missing)}")
    model, _, workload = load_run(run_dir, workload)
    return export_model(model, workload, out, tolerance=tolerance, check=check, requantize=requantize,
                        int8_kernel=int8_kernel)


