"""The search for decoder language models (`wattless search --workload smollm2`): the perplexity-versus-
joules-per-token frontier over weight-only bits and group size, zero points, sparsity and KV-cache precision.

    result = search_decoder("smollm2", "mobile-npu", out="runs/lm-search", trials=12)
    result["frontier"][0]["perplexity"], result["frontier"][0]["energy_j_per_token"]["mobile-npu"]

A trial is one `wattless.optimize` run of a drawn recipe (no training: calibration only), in DIR/trials/N,
scored on a slice of the held-out windows (``test_windows``) with a short calibration
(``calibration_windows``), so trials stay cheap; its joules per decode token come from the energy core
(`optimize.decode_energy`, batch 1) on every built-in target. One Optuna study (default
sqlite:///DIR/study.db) minimises perplexity and joules per token on the target; the same command continues
it. The shipped recipe's grid (4 bits, group 32, float zero points, 8-bit head) is the first trial.
DIR/results.json holds every point, the frontier and the float reference.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any, Literal

import optuna
from pydantic import BaseModel, ConfigDict, Field

from wattless.errors import SearchError, WattlessError
from wattless.files import atomic_write

__all__ = ["DecoderSpace", "search_decoder", "decoder_recipe", "frontier", "is_decoder_workload", "DECODER_RESULTS"]

DECODER_RESULTS = "results.json"
Sparsity = Literal["none", "2:4", "unstructured"]


class DecoderSpace(BaseModel):
    """What a decoder search varies. Sparsity needs integer zero points (0 must lie on the grid to stay 0), so a
    sparse draw takes them; the LM head keeps its own grid (``head_bits``, symmetric, group 32)."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    bits: tuple[int, ...] = (3, 4)
    group_sizes: tuple[int, ...] = (32, 64, 128)
    zero_points: tuple[Literal["int", "float"], ...] = ("float", "int")
    sparsity: tuple[Sparsity, ...] = ("none", "2:4", "unstructured")
    unstructured_sparsity: float = Field(0.3, gt=0, lt=1)
    kv_bits: tuple[int, ...] = Field((32, 8), description="KV-cache bits: 32 keeps it float")
    head_bits: int = Field(8, ge=2, le=8)
    method: Literal["gptq", "rtn"] = "gptq"
    calibration_windows: int = Field(8, ge=1, description="calibration windows per trial (GPTQ, Wanda)")
    test_windows: int = Field(4, ge=1, description="held-out windows each trial's perplexity is scored on")


def is_decoder_workload(workload: str) -> bool:
    """Whether `wattless search` takes the decoder search: the smollm2 built-in, or a spec whose model is a
    decoder language model (the other built-ins are classifiers and encoders)."""
    from wattless.energy.decode import is_decoder_lm
    from wattless.workloads import get_workload

    if workload == "smollm2":
        return True
    return ":" in workload and is_decoder_lm(get_workload(workload).build_model())


def decoder_recipe(params: dict[str, Any], space: DecoderSpace) -> dict[str, Any]:
    """A recipe (as data) from one trial's parameters."""
    sparse = params["sparsity"] != "none"
    weight_only = {"bits": params["bits"], "group_size": params["group_size"], "method": space.method,
                   "zero_point": "int" if sparse else params["zero_point"],
                   "calibration_windows": space.calibration_windows,
                   "overrides": {"lm_head": {"bits": space.head_bits, "group_size": 32, "symmetric": True}}}
    recipe: dict[str, Any] = {"name": "search-" + _digest(params), "description": "drawn by wattless search",
                              "train": {"epochs": 0}, "weight_only": weight_only}
    if sparse:
        recipe["sparsify"] = {"pattern": params["sparsity"], "calibration_windows": space.calibration_windows,
                              **({"sparsity": space.unstructured_sparsity} if params["sparsity"] == "unstructured"
                                 else {})}
    if params["kv_bits"] < 32:
        recipe["kv_cache"] = {"bits": params["kv_bits"]}
    return recipe


def _digest(params: dict[str, Any]) -> str:
    import hashlib

    return hashlib.sha256(json.dumps(params, sort_keys=True).encode()).hexdigest()[:10]


def _draw(trial: optuna.Trial, space: DecoderSpace) -> dict[str, Any]:
    return {"bits": trial.suggest_categorical("bits", list(space.bits)),
            "group_size": trial.suggest_categorical("group_size", list(space.group_sizes)),
            "zero_point": trial.suggest_categorical("zero_point", list(space.zero_points)),
            "sparsity": trial.suggest_categorical("sparsity", list(space.sparsity)),
            "kv_bits": trial.suggest_categorical("kv_bits", list(space.kv_bits))}


def _first(space: DecoderSpace) -> dict[str, Any]:
    """The shipped recipe's grid, or the nearest the space holds."""
    def pick(options: tuple, want: Any) -> Any:
        return want if want in options else options[0]

    return {"bits": pick(space.bits, 4), "group_size": pick(space.group_sizes, 32),
            "zero_point": pick(space.zero_points, "float"), "sparsity": pick(space.sparsity, "none"),
            "kv_bits": pick(space.kv_bits, 32)}


def _sliced(wl: Any, space: DecoderSpace) -> Any:
    """The workload with the trial's calibration and held-out windows only."""
    from wattless.workloads import Split

    return dataclasses.replace(wl, train=Split(wl.train.inputs[: space.calibration_windows]),
                               test=Split(wl.test.inputs[: space.test_windows]))


def _point(number: int, params: dict[str, Any], metrics: dict[str, Any]) -> dict[str, Any]:
    decode = metrics["decode"]
    return {"trial": number, "params": params, "perplexity": metrics["metrics"]["perplexity"],
            "next_token_agreement": metrics["metrics"].get("next_token_agreement"),
            "energy_j_per_token": decode["energy_j_per_token"], "energy_ratio": decode["energy_ratio"],
            "recipe": metrics.get("recipe")}


def frontier(points: list[dict[str, Any]], target: str) -> list[dict[str, Any]]:
    """Points no other beats on both perplexity (lower) and joules per token on ``target`` (lower), by energy."""
    out, best = [], float("inf")
    for p in sorted(points, key=lambda p: (p["energy_j_per_token"][target], p["perplexity"])):
        if p["perplexity"] < best:
            out.append(p)
            best = p["perplexity"]
    return out


def search_decoder(workload: str | Any, target: str, *, out: str | Path, trials: int,
                   space: DecoderSpace = DecoderSpace(), storage: str | None = None,
                   sampler: optuna.samplers.BaseSampler | None = None, log: Any = None) -> dict[str, Any]:
    """Run (or continue) the study until it holds ``trials`` finished trials; returns what DIR/results.json holds."""
    from wattless.energy import builtin_targets, resolve_target
    from wattless.optimize import optimize
    from wattless.workloads import get_workload

    if trials < 1:
        raise SearchError(f"--trials must be >= 1, got {trials}")
    say = log or (lambda msg: None)
    tgt = resolve_target(target).name
    if tgt not in builtin_targets():
        raise SearchError(f"the decoder search prices tokens on the built-in targets ({', '.join(builtin_targets())}); "
                          f"{target!r} is not one of them")
    wl = get_workload(workload) if isinstance(workload, str) else workload
    sliced = _sliced(wl, space)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    study = optuna.create_study(storage=storage or f"sqlite:///{out / 'study.db'}", load_if_exists=True,
                                study_name=f"{wl.name}-{tgt}-decoder", directions=["minimize", "minimize"],
                                sampler=sampler or optuna.samplers.TPESampler(seed=0))
    held = study.user_attrs.get("space")
    if held is None:
        study.set_user_attr("space", space.model_dump(mode="json"))
        study.enqueue_trial(_first(space))
    elif held != space.model_dump(mode="json"):
        raise SearchError(f"{out} holds a decoder study with another space ({held}): use another --out, or the "
                          "same settings to continue it")

    def objective(trial: optuna.Trial) -> tuple[float, float]:
        from wattless.recipe import parse_recipe

        params = _draw(trial, space)
        recipe = parse_recipe(decoder_recipe(params, space), "(decoder search)")
        say(f"trial {trial.number}: {params}")
        metrics = optimize(sliced, recipe, out / "trials" / str(trial.number), progress=False, baselines=False)
        point = _point(trial.number, params, {**metrics, "recipe": recipe.to_dict()})
        trial.set_user_attr("point", point)
        say(f"trial {trial.number}: perplexity {point['perplexity']:.4f}, "
            f"{point['energy_j_per_token'][tgt] * 1e3:.4f} mJ/token on {tgt} (estimated)")
        return point["perplexity"], point["energy_j_per_token"][tgt]

    done = len(study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,)))
    if done < trials:
        study.optimize(objective, n_trials=trials - done, catch=(WattlessError, ValueError))  # a grid the model cannot take
    return _results(study, wl, sliced, tgt, space, out)


def _results(study: optuna.Study, wl: Any, sliced: Any, target: str, space: DecoderSpace, out: Path) -> dict[str, Any]:
    from wattless.optimize import decode_energy

    points = [t.user_attrs["point"] for t in study.get_trials(deepcopy=False) if "point" in t.user_attrs]
    reference = study.user_attrs.get("reference")
    if reference is None:
        model = sliced.build_model()
        ref = decode_energy(model, model, sliced)
        reference = {"perplexity": sliced.evaluate(model, sliced.test)["perplexity"],
                     "energy_j_per_token": ref["energy_j_per_token"]}
        study.set_user_attr("reference", reference)
    failed = [{"trial": t.number, "params": t.params} for t in study.get_trials(deepcopy=False)
              if t.state == optuna.trial.TrialState.FAIL]
    result = {"schema": 1, "kind": "decoder", "workload": wl.name, "target": target, "energy_kind": "estimated",
              "space": space.model_dump(mode="json"), "reference": reference, "points": points,
              "frontier": frontier(points, target), "failed": failed,
              "scored_tokens": int(sliced.test.inputs.numel())}
    atomic_write(out / DECODER_RESULTS, json.dumps(result, indent=2))
    return result
