"""One model, three kinds of hardware: a run's optimized model on a digital NPU (`mobile-npu`), on a PCM
analog in-memory chip (`analog-pcm`, accuracy one day after programming under the noise model) and on a
neuromorphic chip (`loihi`, the converted spiking network at its best T), each with its accuracy and its
estimated joules per inference, in one table (JSON) and one plot.

What the run measured already is reused (metrics.json's ``analog`` and ``spiking`` sections); what it did
not is computed here with the same calls `wattless optimize` makes (wattless.hardware): an analog run is
converted to spikes, a spiking run is programmed onto the chip, without retraining (said in ``how``).
"""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

from torch import nn

from wattless.errors import DamagedFileError, TrainingError
from wattless.files import json_safe
from wattless.hardware import ONE_DAY, analog_section, best_steps, spiking_section
from wattless.optimize import apply_context, eval_samples, energy_by_target, load_run
from wattless.techniques import analog, spiking
from wattless.techniques.base import apply_

__all__ = ["compare", "plot_compare", "DIGITAL", "ANALOG", "NEUROMORPHIC"]

DIGITAL, ANALOG, NEUROMORPHIC = "mobile-npu", "analog-pcm", "loihi"


def _metrics(run_dir: Path) -> dict[str, Any]:
    path = run_dir / "metrics.json"
    if not path.is_file():
        raise TrainingError(f"{run_dir} holds no metrics.json: give the directory of a finished `wattless optimize` run")
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise DamagedFileError(f"{path} is damaged ({type(exc).__name__}: {exc}); run `wattless optimize` again") from None


def _digital(model: nn.Module) -> nn.Module:
    plain = copy.deepcopy(model)
    if spiking.is_spiking(plain):
        spiking.set_steps(plain, 0)
    return analog.to_digital_(plain).eval()


def _analog_row(metrics: dict, model: nn.Module, wl, seeds: int) -> tuple[dict[str, Any], dict[str, Any]]:
    section, how = metrics.get("analog"), "from the run (metrics.json analog)"
    chip = model if analog.analog_layers(model) else None
    if section is None or ONE_DAY not in section["accuracy"]:
        chip = _digital(model)
        config = analog.AnalogConfig(hwa=False, seeds=seeds, times_s=[float(ONE_DAY)])
        apply_(chip, config, apply_context(wl))
        section = analog_section(chip.eval(), wl, config)
        how = f"the run's weights programmed without retraining (no hardware-aware training), {seeds} seeds"
    return section, {"how": how, "model": chip}


def _spiking_row(metrics: dict, model: nn.Module, wl, samples: list[Any]) -> tuple[dict[str, Any], str]:
    section = metrics.get("spiking")
    if section is not None:
        return section, "from the run (metrics.json spiking)"
    net = _digital(model)
    config = spiking.SpikingConfig(steps=[8, 16, 32, 64, 128])
    context = apply_context(wl)
    handle = apply_(net, config, context)
    handle.finish(net, context)
    return spiking_section(net, wl, config, samples), "the run's weights converted without retraining"


def compare(run_dir: str | Path, *, seeds: int = 10, energy_inputs: int = 32) -> dict[str, Any]:
    """The comparison of one run directory: {"rows": [{hardware, target, accuracy, energy_j, detail, how}],
    "energy_kind": "estimated", ...}. Written nowhere; see plot_compare and the CLI."""
    run_dir = Path(run_dir)
    metrics = _metrics(run_dir)
    model, recipe, wl = load_run(run_dir)
    samples = eval_samples(wl, energy_inputs)
    digital = _digital(model)
    digital_accuracy = wl.evaluate(digital, wl.test)[wl.metric_name]
    digital_j = energy_by_target(digital, samples).estimates[DIGITAL]["energy_j"]
    a_section, a_info = _analog_row(metrics, model, wl, seeds)
    a_model = a_info["model"] if a_info["model"] is not None else model
    a_j = (a_section.get("energy_j") or {}).get(ANALOG) or energy_by_target(a_model, samples).estimates[ANALOG]["energy_j"]
    s_section, s_how = _spiking_row(metrics, model, wl, samples)
    best = s_section.get("best_steps") or best_steps(s_section)
    s_row = s_section["steps"][best]
    day = a_section["accuracy"][ONE_DAY]
    rows = [
        {"hardware": "digital", "target": DIGITAL, "accuracy": digital_accuracy, "energy_j": digital_j,
         "detail": "the model's digital weights as trained (fp32), priced as they run",
         "how": "measured accuracy on the test split; energy estimated"},
        {"hardware": "analog", "target": ANALOG, "accuracy": day["mean"], "accuracy_std": day["std"],
         "energy_j": a_j, "detail": f"1 day after programming, mean of {a_section['seeds']} noise seeds"
         f"{'' if a_section.get('hwa') else ', no hardware-aware training'}", "how": a_info["how"]},
        {"hardware": "neuromorphic", "target": NEUROMORPHIC, "accuracy": s_row["accuracy"],
         "energy_j": s_row["energy_j"][NEUROMORPHIC], "steps": int(best),
         "synaptic_events": s_row["synaptic_events"],
         "detail": f"spiking, T = {best} (the fewest steps within 1 point of the ANN, else the most accurate)",
         "how": s_how},
    ]
    return json_safe({"run": str(run_dir), "workload": metrics.get("workload"), "recipe": recipe.name,
                      "metric_name": wl.metric_name, "energy_kind": "estimated", "rows": rows,
                      "spiking_curve": {t: {"accuracy": r["accuracy"], "energy_j": r["energy_j"][NEUROMORPHIC]}
                                        for t, r in s_section["steps"].items()},
                      "analog_over_time": {t: v["mean"] for t, v in a_section["accuracy"].items()}})


def plot_compare(result: dict[str, Any], path: str | Path) -> Path:
    """Accuracy against estimated joules per inference: the three rows, and the spiking curve over T."""
    try:
        from matplotlib.figure import Figure
    except ImportError as exc:
        raise TrainingError(f"the comparison plot needs matplotlib ({exc}): pip install 'wattless[search]'") from None

    fig = Figure(figsize=(6.4, 4.2), dpi=120, layout="constrained")
    ax = fig.subplots()
    curve = sorted(result["spiking_curve"].items(), key=lambda kv: int(kv[0]))
    ax.plot([r["energy_j"] for _, r in curve], [r["accuracy"] for _, r in curve], "-", color="tab:purple",
            alpha=0.5, label="loihi over T")
    for t, r in curve:
        ax.annotate(f"T={t}", (r["energy_j"], r["accuracy"]), fontsize=7, alpha=0.7)
    colours = {"digital": "tab:blue", "analog": "tab:orange", "neuromorphic": "tab:purple"}
    for row in result["rows"]:
        ax.scatter([row["energy_j"]], [row["accuracy"]], s=60, color=colours[row["hardware"]],
                   label=f"{row['target']} ({row['hardware']})", zorder=3)
    ax.set_xscale("log")
    ax.set_xlabel("joules per inference (estimated)")
    ax.set_ylabel(result["metric_name"])
    ax.set_title(f"{result['workload']} / {result['recipe']}: one model on three kinds of hardware", fontsize=9)
    ax.legend(fontsize=7)
    ax.grid(alpha=0.3)
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp.png")
    fig.savefig(tmp)
    tmp.replace(path)
    return path
