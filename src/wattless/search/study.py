"""A study's life cycle: its name, the output folder that holds it, its settings stored in it, creating it
(the seeds enqueued first) or joining it, and refusing one started with other settings."""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import optuna

from wattless.energy import Target
from wattless.errors import SearchError
from wattless.recipe import Recipe, parse_recipe
from wattless.search.constraints import Constraints
from wattless.search.quiet import quiet
from wattless.search.space import RecipeSpace
from wattless.workloads import Workload

__all__ = ["CLAIM_FILE", "CLAIM_DEFAULT_STORAGE", "study_name", "default_sampler", "check_out", "study_info",
           "open_study"]

CLAIM_FILE = "search.json"
CLAIM_DEFAULT_STORAGE = "study.db in this folder"


def study_name(workload: str, target: str) -> str:
    """One study per workload and target: workers and resumes find it by this name."""
    return f"wattless-{workload}-{target}"


def default_sampler(seed: int | None = None) -> optuna.samplers.BaseSampler:
    """Multi-objective TPE: a few random draws (after the seeds), then it models where good recipes lie;
    the constant liar keeps parallel workers from drawing the same recipe."""
    with quiet():
        return optuna.samplers.TPESampler(n_startup_trials=5, multivariate=True, group=True, constant_liar=True,
                                          seed=seed)


def check_out(out: Path, identity: dict[str, str]) -> None:
    """An output folder holds one study; reading only, so a refused command changes nothing."""
    claim = out / CLAIM_FILE
    if claim.exists():
        try:
            held = json.loads(claim.read_text(encoding="utf-8"))
            held.get("study_name")
        except (OSError, UnicodeDecodeError, ValueError, AttributeError) as exc:
            raise SearchError(f"{claim} is damaged ({type(exc).__name__}); {out} cannot be trusted as a search "
                              "folder: choose another --out or remove it") from None
        if {k: held.get(k) for k in identity} != identity:
            raise SearchError(
                f"{out} holds the search of study {held.get('study_name')!r} (workload "
                f"{held.get('workload')!r}, target {held.get('target')!r}, storage {held.get('storage')!r}), not "
                f"{identity['study_name']!r} in {identity['storage']!r}; choose another --out, or run that study's "
                "own command to continue it"
            )
    elif out.exists() and any(out.iterdir()):
        raise SearchError(f"{out} exists and is not a wattless search folder; choose an empty or new --out")


def study_info(wl: Workload, target: Target, constraints: Constraints, space: RecipeSpace,
               seeds: Sequence[Recipe], neighbours: int) -> dict[str, Any]:
    """The study's settings, stored in it: what it searches, the space, and the plan (the first seed's
    neighbours, enqueued one at a time as workers look for work)."""
    plan = space.neighbours(space.params_of(seeds[0]))[:neighbours] if seeds else []
    return {"version": 1, "workload": wl.name, "target": target.name, "metric_name": wl.metric_name,
            "constraints": constraints.to_dict(), "space": space.dims, "base": space.base.to_dict(),
            "plan": plan, "plan_of": seeds[0].name if seeds else None}


def open_study(storage, name: str, info: dict[str, Any], sampler, seeds: Sequence[Recipe],
               space: RecipeSpace) -> tuple[optuna.Study, RecipeSpace]:
    """Create the study (and enqueue the seeds) or load it; a study started with other settings is refused
    before anything is written."""
    try:
        study = optuna.create_study(storage=storage, study_name=name, directions=["maximize", "minimize"],
                                    sampler=sampler)
        held = None
    except optuna.exceptions.DuplicatedStudyError:
        study = optuna.load_study(storage=storage, study_name=name, sampler=sampler)
        held = _wait_for_info(study)
    if held is None:
        _initialise(study, name, info, seeds, space)
        return study, space
    _check_settings(name, held, info)
    return study, RecipeSpace(held["space"], parse_recipe(held["base"], "(study base recipe)"), space.workload)


def _initialise(study: optuna.Study, name: str, info: dict[str, Any], seeds: Sequence[Recipe],
                space: RecipeSpace) -> None:
    if study.directions != [optuna.study.StudyDirection.MAXIMIZE, optuna.study.StudyDirection.MINIMIZE]:
        raise SearchError(f"study {name!r} in this storage is not a wattless search; use another storage")
    # the seeds first, the settings last: a worker that finds the settings finds the seeds too
    enqueued = {t.user_attrs.get("seed") for t in study.get_trials(deepcopy=False)}
    for seed in seeds:
        if seed.name not in enqueued:
            attrs = {"seed": seed.name, "seed_recipe": seed.to_dict()}
            study.enqueue_trial(space.params_of(seed), user_attrs=attrs)
    study.set_user_attr("wattless", info)


def _check_settings(name: str, held: dict[str, Any], info: dict[str, Any]) -> None:
    for key in ("workload", "target", "metric_name", "constraints"):
        if held.get(key) != info[key]:
            raise SearchError(
                f"study {name!r} was started with {key} = {held.get(key)!r}, this command gives {info[key]!r}; "
                "rerun with the study's settings to continue it, or search into another --out / --storage"
            )


def _wait_for_info(study: optuna.Study, patience_s: float = 15.0) -> dict[str, Any] | None:
    """The settings of a study another worker has just created (it writes them once its seeds are
    enqueued); None after ``patience_s``: its creator died before, and this worker finishes the job."""
    give_up = time.monotonic() + patience_s
    while True:
        held = study.user_attrs.get("wattless")  # user_attrs reads storage on every access
        if held is not None or time.monotonic() > give_up:
            return held
        time.sleep(0.5)
