"""The baselines a user would reach for instead of wattless, defined once: search, bench, optimize and the report
all read them from here, so one baseline gets one metric and one energy on the same data.

    rows = run_baselines(workload, model, DEFAULT, folder, samples)
    rows["ort-static-int8"]["metric"], rows["ort-static-int8"]["energy_j"]["mobile-npu"], rows[...]["note"]

Each `Baseline` says what it is (``description``), how it is built (``build``: PyTorch's post-training dynamic
int8, ONNX Runtime fp32, ONNX Runtime's ``quantize_dynamic`` and ``quantize_static`` in QDQ format), how it is
calibrated (`Calibration`: methods, inputs, split, the split the best method is chosen on) and how its energy
is priced (`PricedAs`: the layers that run integer MACs in what the runtime executes). The metric of an ONNX
model is measured by running it in ONNX Runtime (one thread); its energy is that of the PyTorch model with
the precision declared. The ONNX ones need the `onnx` extra; without it they are reported as not run.
"""

from __future__ import annotations

import contextlib
import copy
import io
import logging
import shutil
import warnings
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from wattless.errors import WattlessError

__all__ = [
    "Baseline", "Calibration", "PricedAs", "Built", "BASELINES", "DEFAULT", "PTQ", "ALIASES", "ENERGY_INPUTS",
    "CALIBRATION_METHODS", "REVISION", "get", "canonical", "run_baselines", "choose_ptq", "describe_ptq",
    "ptq_summary", "export_onnx", "OrtModule", "ort_quantize_dynamic", "ort_quantize_static", "torch_dynamic_int8",
]

def _as_kwargs(example: Any) -> dict[str, torch.Tensor]:
    if isinstance(example, Mapping):
        return dict(example)
    return {"x": example}


def export_onnx(model: nn.Module, example: Any, path: str | Path) -> Path:
    """Export with torch's dynamo exporter; batch (and sequence, for token inputs) stay dynamic."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    kwargs = _as_kwargs(example)
    dims = {name: ({0: "batch", 1: "seq"} if t.dtype == torch.int64 and t.dim() == 2 else {0: "batch"})
            for name, t in kwargs.items()}
    model = copy.deepcopy(model).eval()
    wrapped = model if isinstance(example, Mapping) else _Positional(model)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(wrapped, (), str(path), kwargs=kwargs, input_names=list(kwargs),
                          dynamic_shapes=dims, dynamo=True, verbose=False)
    return path


class _Positional(nn.Module):
    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> Any:
        return self.model(x)


class OrtModule(nn.Module):
    """An ONNX Runtime session behind a module's forward, so a workload's evaluate runs it unchanged.

    Returns the first output as a tensor (logits for a classifier, hidden states for an encoder).
    """

    def __init__(self, path: str | Path, threads: int | None = None) -> None:
        super().__init__()
        import onnxruntime as ort

        options = ort.SessionOptions()
        if threads:
            options.intra_op_num_threads = threads
        options.log_severity_level = 3
        self.path = Path(path)
        self.session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        self.input_names = [i.name for i in self.session.get_inputs()]

    def forward(self, *args: torch.Tensor, **kwargs: torch.Tensor) -> torch.Tensor:
        feed = dict(zip(self.input_names, args)) | kwargs
        arrays = {k: v.detach().cpu().numpy() for k, v in feed.items() if k in self.input_names}
        return torch.from_numpy(self.session.run(None, arrays)[0])


def ort_quantize_dynamic(fp32: str | Path, out: str | Path) -> Path:
    """ONNX Runtime's post-training dynamic quantization (int8 weights, activations quantized at run time)."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    quantize_dynamic(str(fp32), str(out), weight_type=QuantType.QInt8)
    return Path(out)


class _Reader:
    def __init__(self, batches: Sequence[dict[str, np.ndarray]]) -> None:
        self._it = iter(batches)

    def get_next(self) -> dict[str, np.ndarray] | None:
        return next(self._it, None)


def ort_quantize_static(fp32: str | Path, out: str | Path, calibration: Sequence[Any], *, method: str = "MinMax",
                        per_channel: bool = True) -> Path:
    """ONNX Runtime's post-training static quantization, QDQ format, int8 weights (per channel) and activations,
    activation ranges from ``method`` (MinMax, Percentile, Entropy, Distribution) on the given inputs."""
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static

    feeds = [{k: v.detach().cpu().numpy() for k, v in _as_kwargs(c).items()} for c in calibration]
    quantize_static(str(fp32), str(out), _Reader(feeds), quant_format=QuantFormat.QDQ,
                    activation_type=QuantType.QInt8, weight_type=QuantType.QInt8, per_channel=per_channel,
                    calibrate_method=getattr(CalibrationMethod, method))
    return Path(out)


def torch_dynamic_int8(model: nn.Module) -> nn.Module:
    """PyTorch's post-training dynamic int8 quantization of every Linear (its documented CPU path)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return torch.ao.quantization.quantize_dynamic(copy.deepcopy(model).eval(), {nn.Linear}, dtype=torch.qint8)


# --- the definitions ----------------------------------------------------------------------------------------

REVISION = 2  # bumped when a definition changes: rows cached under an older one are computed again
CALIBRATION_METHODS = ("MinMax", "Percentile", "Entropy")
ENERGY_INPUTS = 64  # test inputs each baseline's energy is counted on, by search and bench alike
_MAC_LAYERS = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d)


@dataclass(frozen=True)
class Calibration:
    """Where a static quantizer's activation ranges come from: the first ``inputs`` rows of ``split``, in
    batches of ``batch``; each of ``methods`` is tried and the one with the best metric on ``select_on`` kept."""

    methods: tuple[str, ...] = CALIBRATION_METHODS
    inputs: int = 256
    split: str = "train"
    batch: int = 32
    select_on: str = "val"
    per_channel: bool = True

    def batches(self, workload: Any) -> list[Any]:
        """Prepared once and then cut, so token batches share one padded length: ONNX Runtime's Percentile and
        Entropy calibrators stack every batch's activations and refuse ragged ones."""
        split = getattr(workload, self.split)
        n = min(self.inputs, len(split))
        prepared = workload.prepare_inputs(split.take(slice(0, n)).inputs)
        cut = (lambda i: {k: v[i : i + self.batch] for k, v in prepared.items()}) if isinstance(prepared, Mapping) \
            else (lambda i: prepared[i : i + self.batch])
        return [cut(i) for i in range(0, n, self.batch)]

    def describe(self) -> str:
        return (f"{', '.join(self.methods)} calibration tried on {self.inputs} {self.split} inputs, "
                f"{'per-channel' if self.per_channel else 'per-tensor'} weights")


@dataclass(frozen=True)
class PricedAs:
    """The precision the runtime's integer kernels run at, declared on the layers of ``layers`` (by type) of a
    copy of the fp32 model for the energy core to price; every other layer stays fp32."""

    layers: tuple[type[nn.Module], ...] = ()
    weight: str = "fp32"
    act: str = "fp32"

    def apply(self, model: nn.Module) -> nn.Module:
        from wattless.energy import set_precision

        priced = copy.deepcopy(model).eval()
        for m in priced.modules():
            if self.layers and isinstance(m, self.layers):
                set_precision(m, self.weight, self.act)
        return priced

    def describe(self) -> str:
        if not self.layers:
            return "energy priced as fp32"
        kinds = "Linear and Conv" if any(issubclass(k, nn.Conv1d) for k in self.layers) else "Linear"
        return f"energy priced as {self.weight} weights and {self.act} activations on {kinds} layers, the rest fp32"


@dataclass
class Built:
    """A baseline made runnable: ``module`` for the workload's evaluate, ``path`` for a runtime (ONNX) or None,
    ``choice`` what its calibration picked (or None)."""

    module: nn.Module
    path: Path | None = None
    choice: str | None = None


@dataclass(frozen=True)
class Baseline:
    """One baseline: its ``name`` (results.json's key), the ``runtime`` label of its bench row, whether it is a
    post-training quantization (``ptq``), how it is built, calibrated and priced."""

    name: str
    description: str
    build: Callable[["_Maker"], Built]
    priced_as: PricedAs = PricedAs()
    calibration: Calibration | None = None
    ptq: bool = True
    runtime: str = ""

    @property
    def label(self) -> str:
        return self.runtime or self.name

    def note(self, choice: str | None = None) -> str:
        how = self.description + (f" ({self.calibration.describe()})" if self.calibration else "")
        won = f"; {choice} won on the {self.calibration.select_on} split" if choice and self.calibration else ""
        return f"{how}{won}; {self.priced_as.describe()}"


class _Maker:
    """What the builders share for one model: the workload, a folder for files, one fp32 ONNX export."""

    def __init__(self, workload: Any, model: nn.Module, folder: Path) -> None:
        self.workload, self.model, self.folder = workload, model.eval(), folder
        self._fp32: Path | None = None

    def fp32_onnx(self) -> Path:
        if self._fp32 is None:
            self._fp32 = export_onnx(self.model, self.workload.example_input(2), self.folder / "fp32.onnx")
        return self._fp32

    def metric(self, module: nn.Module, split: str = "test") -> dict[str, float]:
        with torch.inference_mode():
            return self.workload.evaluate(module, getattr(self.workload, split))


def _fp32(make: _Maker) -> Built:
    return Built(make.model)


def _torch_dynamic(make: _Maker) -> Built:
    return Built(torch_dynamic_int8(make.model))


def _ort_fp32(make: _Maker) -> Built:
    path = make.fp32_onnx()
    return Built(OrtModule(path, threads=1), path)


def _ort_dynamic(make: _Maker) -> Built:
    path = ort_quantize_dynamic(make.fp32_onnx(), make.folder / "dynamic-int8.onnx")
    return Built(OrtModule(path, threads=1), path)


def _ort_static(make: _Maker) -> Built:
    """Every calibration method a user would try; the best on the validation split (ties: the first) is kept."""
    cal = get("ort-static-int8").calibration
    batches = cal.batches(make.workload)
    best: tuple[float, str, Path] | None = None
    failed = []
    for method in cal.methods:
        try:
            path = ort_quantize_static(make.fp32_onnx(), make.folder / f"static-int8-{method.lower()}.onnx", batches,
                                       method=method, per_channel=cal.per_channel)
        except (ValueError, RuntimeError) as exc:  # e.g. Entropy on a tensor with no spread: "Too many bins"
            failed.append(f"{method} failed ({type(exc).__name__}: {exc})")
            continue
        score = make.metric(OrtModule(path, threads=1), cal.select_on)[make.workload.metric_name]
        if best is None or score > best[0]:
            best = (score, method, path)
    if best is None:
        raise ValueError("every calibration method failed: " + "; ".join(failed))
    chosen = make.folder / "static-int8.onnx"
    shutil.copyfile(best[2], chosen)
    return Built(OrtModule(chosen, threads=1), chosen, best[1] + (f" ({'; '.join(failed)})" if failed else ""))


_INT8_MACS = PricedAs(_MAC_LAYERS, "int8", "int8")
BASELINES: dict[str, Baseline] = {b.name: b for b in (
    Baseline("fp32", "the dense fp32 baseline", _fp32, ptq=False, runtime="torch-fp32"),
    Baseline("torch-dynamic-int8", "PyTorch post-training dynamic int8 (torch.ao quantize_dynamic of the Linear "
             "layers: int8 weights, activations quantized at run time)", _torch_dynamic,
             PricedAs((nn.Linear,), "int8", "int8")),
    Baseline("ort-fp32", "the dense fp32 baseline exported by torch's dynamo exporter, in ONNX Runtime", _ort_fp32,
             ptq=False),
    Baseline("ort-dynamic-int8", "ONNX Runtime quantize_dynamic (int8 weights, activations quantized at run "
             "time: ConvInteger and MatMulInteger)", _ort_dynamic, _INT8_MACS),
    Baseline("ort-static-int8", "ONNX Runtime quantize_static (QDQ, int8 weights and activations)", _ort_static,
             _INT8_MACS, Calibration()),
)}
DEFAULT = ("fp32", "torch-dynamic-int8", "ort-dynamic-int8", "ort-static-int8")  # search's and the report's
PTQ = tuple(n for n, b in BASELINES.items() if b.ptq)
# names earlier versions used; read as the baseline they name
ALIASES = {"ort-static-qdq": "ort-static-int8", "torch-fp32": "fp32"}


def canonical(name: str) -> str:
    return ALIASES.get(name, name)


def get(name: str) -> Baseline:
    try:
        return BASELINES[canonical(name)]
    except KeyError:
        raise WattlessError(f"unknown baseline {name!r}: choose among {', '.join(BASELINES)}") from None


def _row(baseline: Baseline, make: _Maker, samples: list[Any]) -> dict[str, Any]:
    from wattless.optimize import energy_by_target

    built = baseline.build(make)
    metrics = make.metric(built.module)
    priced = baseline.priced_as.apply(make.model)
    energy, macs, _ = energy_by_target(priced, samples)
    return {"metric": metrics[make.workload.metric_name], "metrics": metrics,
            "energy_j": {k: v["energy_j"] for k, v in energy.items()},
            "latency_s": {k: v["latency_s"] for k, v in energy.items()},
            "size_bytes": _size_bytes(priced, samples[0]), "macs": macs, "note": baseline.note(built.choice),
            "calibration": built.choice, "runtime": baseline.label, "file": str(built.path) if built.path else None}


def _size_bytes(model: nn.Module, sample: Any) -> float:
    """Weight bytes at their precision."""
    from wattless.energy import count_each

    return float(sum(r["weight_bytes"] for r in count_each(model, [sample]).mean_records()))


def run_baselines(workload: Any, model: nn.Module, names: Sequence[str], folder: str | Path,
                  samples: list[Any], *, on_step: Callable[[str], None] | None = None) -> dict[str, dict[str, Any]]:
    """{name: {metric, metrics (test split), energy_j and latency_s (every built-in target, estimated on
    ``samples``), size_bytes, macs, note, calibration, runtime, file}} for each of ``names``; files go to
    ``folder``. One that cannot run here (e.g. without onnxruntime) is {metric: None, energy_j: {}, error,
    note}; fp32 always runs."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    make, rows = _Maker(workload, model, folder), {}
    with _hushed():
        for name in names:
            baseline = get(name)
            try:
                rows[baseline.name] = _row(baseline, make, samples)
            except Exception as exc:  # noqa: BLE001 - a missing tool leaves a gap, named, not a failed run
                if baseline.name == "fp32":
                    raise
                error = f"{type(exc).__name__}: {exc}".splitlines()[0]
                rows[baseline.name] = {"metric": None, "energy_j": {}, "error": error, "note": baseline.note(),
                                       "runtime": baseline.label}
            if on_step is not None:
                on_step(baseline.name)
    return rows


@contextlib.contextmanager
def _hushed() -> Iterator[None]:
    """The ONNX exporter and ONNX Runtime's quantizer log advice on every call (the quantizer on the root
    logger, and its calibrators print); none of it concerns the user of a baseline."""
    names = ("", "torch.onnx", "onnxruntime", "onnxscript")
    levels = {name: logging.getLogger(name).level for name in names}
    for name in names:
        logging.getLogger(name).setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
            warnings.simplefilter("ignore")
            yield
    finally:
        for name, lvl in levels.items():
            logging.getLogger(name).setLevel(lvl)


# --- the best post-training quantization -------------------------------------------------------------------

def choose_ptq(rows: Mapping[str, Mapping[str, Any]], target: str, reference: float | None,
               within: float) -> dict[str, Any]:
    """The honest comparison: the lowest-energy PTQ baseline on ``target`` whose metric is within ``within`` of
    ``reference`` (fp32's), as best_ptq / best_ptq_metric / best_ptq_energy_j, and beside it the most accurate
    PTQ baseline (most_accurate_ptq...). None within: best_ptq is None and best_ptq_note says so."""
    ran = {canonical(n): r for n, r in rows.items()
           if canonical(n) in PTQ and r.get("metric") is not None and target in r.get("energy_j", {})}
    out: dict[str, Any] = {"best_ptq": None, "best_ptq_within": False}
    if not ran:
        out["best_ptq_note"] = "no post-training quantization baseline ran"
        return out
    top = max(ran, key=lambda n: (ran[n]["metric"], -ran[n]["energy_j"][target]))
    out.update(most_accurate_ptq=top, most_accurate_ptq_metric=ran[top]["metric"],
               most_accurate_ptq_energy_j=ran[top]["energy_j"][target])
    near = [n for n in ran if reference is not None and ran[n]["metric"] >= reference - within - 1e-12]
    if not near:
        out["best_ptq_note"] = (f"no post-training quantization baseline is within {_points(within)} of fp32; "
                                f"the most accurate is {top}")
        return out
    best = min(near, key=lambda n: (ran[n]["energy_j"][target], -ran[n]["metric"]))
    out.update(best_ptq=best, best_ptq_within=True, best_ptq_metric=ran[best]["metric"],
               best_ptq_energy_j=ran[best]["energy_j"][target])
    return out


def _points(within: float) -> str:
    return f"{100 * within:g} point" + ("" if 100 * within == 1 else "s")


def _metric_text(value: float, metric_name: str) -> str:
    return f"{100 * value:.1f}%" if metric_name == "accuracy" else f"{value:.4f}"


def describe_ptq(summary: Mapping[str, Any], metric_name: str) -> str:
    """The comparison with post-training quantization in words, from a search summary: the cheapest PTQ
    baseline within the tolerance, or, when none is, that fact and the ratio against the most accurate one."""
    s = summary
    if s.get("best_ptq") is not None:
        ratio = f"{s['ratio_vs_best_ptq']:.1f}x lower than " if s.get("ratio_vs_best_ptq") else ""
        return (f"{ratio}the best post-training quantization within {_points(s['within'])} of fp32 "
                f"({s['best_ptq']}, {_metric_text(s['best_ptq_metric'], metric_name)})")
    if s.get("most_accurate_ptq") is None:
        return "no post-training quantization baseline ran"
    ratio = f"; {s['ratio_vs_most_accurate_ptq']:.1f}x lower than it" if s.get("ratio_vs_most_accurate_ptq") else ""
    return (f"no post-training quantization baseline is within {_points(s['within'])} of fp32 (the most "
            f"accurate: {s['most_accurate_ptq']}, {_metric_text(s['most_accurate_ptq_metric'], metric_name)}){ratio}")


def ptq_summary(results: Mapping[str, Any]) -> dict[str, Any]:
    """A results.json's summary, its PTQ comparison chosen by `choose_ptq` where the file predates that rule
    (then it named the lowest-energy PTQ baseline whatever its metric)."""
    s = dict(results.get("summary") or {})
    if "best_ptq_within" in s:
        return s
    for key in [k for k in s if "ptq" in k]:
        del s[key]
    fp32 = (results.get("baselines") or {}).get("fp32") or {}
    s.update(choose_ptq(results.get("baselines") or {}, results["target"], fp32.get("metric"), s.get("within", 0.01)))
    if s.get("energy_j"):
        for name in ("best_ptq", "most_accurate_ptq"):
            if s.get(name) is not None:
                s[f"ratio_vs_{name}"] = s[f"{name}_energy_j"] / s["energy_j"]
    return s
