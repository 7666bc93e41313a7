"""Accuracy and joules of one model on hardware beyond von Neumann: an analog PCM chip over time, a
neuromorphic chip over time steps. The sections `wattless optimize` writes into metrics.json (``analog``,
``spiking``) and `wattless compare` reads.

Techniques simulate (techniques/analog.py programs and drifts the chip, techniques/spiking.py runs the
spikes); the energy core prices what they ran (the converted network's spikes are traced by
``energy.count_each`` as it simulates). Every joule figure here is estimated, on the named target.
"""

from __future__ import annotations

import copy
from typing import Any

import numpy as np
from torch import nn

from wattless.energy import count_each, estimate, resolve_target
from wattless.energy.profile import set_precision
from wattless.techniques import analog, spiking
from wattless.workloads import Workload

__all__ = ["analog_section", "spiking_section", "best_steps", "digital_int8_energy", "ONE_DAY"]

ONE_DAY = "86400"


def _score(workload: Workload):
    return lambda model: workload.evaluate(model, workload.test)[workload.metric_name]


def analog_section(model: nn.Module, workload: Workload, config: analog.AnalogConfig) -> dict[str, Any]:
    """``model`` (analog layers, trained) on ``config.seeds`` programmed chips at each evaluation time."""
    over_time = analog.accuracy_over_time(model, _score(workload), config)
    digital = analog.to_digital_(copy.deepcopy(model))
    return {
        "seeds": over_time["seeds"], "hwa": config.hwa, "target": config.target,
        "accuracy": over_time["accuracy"],
        "times_s": [float(t) for t in config.times_s],
        "digital_accuracy": _score(workload)(digital.eval()),
        "noise_free_accuracy": _score(workload)(model.eval()),
        "note": "accuracy of the workload's test split on chips programmed with the PCM statistical model "
                "(programming noise, drift with per-device nu, 1/f and per-inference read noise, output noise, "
                "DAC/ADC at the target's bits), global drift compensation; mean and sample std over seeds. "
                "digital_accuracy: the same weights as plain fp32 layers; noise_free_accuracy: the chip's "
                "converters alone",
    }


def _events(counts) -> tuple[float, float]:
    """Mean (synaptic events, neuron updates) per inference from the energy core's counts."""
    events = [sum(o.events for u in s.values() for o in u.ops) for s in counts.samples]
    updates = [sum(o.outputs for u in s.values() for o in u.ops if o.macs) for s in counts.samples]
    return float(np.mean(events)), float(np.mean(updates))


def digital_int8_energy(model: nn.Module, samples: list[Any], target: str = "mobile-npu") -> float:
    """Estimated joules per inference of ``model`` deployed as int8 weights and activations on ``target``."""
    plain = copy.deepcopy(model)
    if spiking.is_spiking(plain):
        spiking.set_steps(plain, 0)
    if any(analog.is_analog(m) for m in plain.modules()):
        analog.to_digital_(plain)
    set_precision(plain, "int8", "int8")
    return estimate(count_each(plain, samples), resolve_target(target)).energy_j


def spiking_section(model: nn.Module, workload: Workload, config: spiking.SpikingConfig,
                    samples: list[Any], *, ann_target: str = "mobile-npu") -> dict[str, Any]:
    """The converted network simulated at every T of ``config.steps``: accuracy on the test split, and the
    spikes the simulation produced on ``samples`` priced on ``config.target``; beside it the ANN."""
    target = resolve_target(config.target)
    score = _score(workload)
    model.eval()
    spiking.set_steps(model, 0)
    ann_accuracy = score(model)
    steps: dict[str, Any] = {}
    try:
        for t in config.steps:
            spiking.set_steps(model, t)
            accuracy = score(model)
            spiking.reset_counts(model)
            counts = count_each(model, samples)
            spikes = sum(spiking.spike_counts(model).values()) / len(samples)
            events, updates = _events(counts)
            est = estimate(counts, target)
            steps[str(t)] = {"accuracy": accuracy, "synaptic_events": events, "neuron_updates": updates,
                             "spikes": spikes, "energy_j": {target.name: est.energy_j},
                             "latency_s": {target.name: est.latency_s}}
    finally:
        spiking.set_steps(model, 0)
    section = {"ann_accuracy": ann_accuracy, "target": target.name, "steps": steps,
               "ann_energy_j": {ann_target: digital_int8_energy(model, samples, ann_target)},
               "ann_precision": "int8", "energy_kind": "estimated"}
    section["best_steps"] = best_steps(section)
    section["note"] = (f"accuracy by simulating the IF network for T steps; synaptic_events = the spikes the "
                       f"simulation produced x their fan-out, neuron_updates = neurons x T, as counted by the "
                       f"energy core on {len(samples)} test inputs and priced on {target.name}; the ANN is priced "
                       f"as an int8 deployment on {ann_target} (its accuracy is the fp32 ANN's)")
    return section


def best_steps(section: dict[str, Any], within: float = 0.01) -> str:
    """The smallest T within ``within`` of the ANN's accuracy, else the most accurate T."""
    steps = section["steps"]
    close = [t for t, row in steps.items() if row["accuracy"] >= section["ann_accuracy"] - within]
    if close:
        return min(close, key=int)
    return max(steps, key=lambda t: (steps[t]["accuracy"], -int(t)))
