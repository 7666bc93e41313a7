"""The cascade file: its tiers (an export, the run it came from, the target it runs on), the calibration's
goal and the server's batching and admission settings. TOML, validated on load; errors name the key and
the file.

    name = "mnist1d"
    workload = "mnist1d"                  # the workload calibrate and eval read (else --workload)
    [[tiers]]
    name = "lean"
    model = "tier0.onnx"                  # a `wattless export` file (relative to this file)
    run = "runs/npu"                      # the `wattless optimize` run it was exported from: priced from it
    target = "mobile-npu"                 # a built-in target or a target file
    [[tiers]]
    name = "big"
    model = "tier1.onnx"
    run = "runs/fp32"
    target = "datacenter-gpu"
    [calibration]
    target_accuracy_drop = 0.003          # at most 0.3 points below the last tier alone
    [serve]
    max_batch = 64
"""

from __future__ import annotations

from pathlib import Path

import tomli_w
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from wattless.errors import CascadeError, TargetError
from wattless.files import atomic_write, read_toml, validation_message

__all__ = ["TierSpec", "CalibrationSettings", "ServeSettings", "CascadeSpec", "load_cascade_spec",
           "write_cascade_spec", "calibration_path"]

_STRICT = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)


class TierSpec(BaseModel):
    """One tier: an exported model on a target; ``run`` is the optimize run the energy core prices."""

    model_config = _STRICT
    name: str = Field(min_length=1)
    model: Path = Field(description="a `wattless export` ONNX file")
    run: Path | None = Field(None, description="the `wattless optimize` run directory the export came from")
    target: str = Field(min_length=1, description="built-in target name or target file it runs on")
    threads: int = Field(1, ge=1, le=256, strict=True, description="ONNX Runtime intra-op threads")


class CalibrationSettings(BaseModel):
    """The goal thresholds are calibrated to: accuracy at most ``target_accuracy_drop`` (a fraction) below
    the last tier alone, with the early exits' one-sided paired margin at ``confidence``."""

    model_config = _STRICT
    target_accuracy_drop: float = Field(0.003, ge=0.0, le=1.0, strict=True)
    confidence: float = Field(0.9, ge=0.5, lt=1.0, strict=True)
    price_inputs: int = Field(512, ge=1, strict=True, description="held-out inputs each tier's paths are priced on")


class ServeSettings(BaseModel):
    """Dynamic batching and admission: requests within ``max_wait_ms`` of each other run as one batch of at
    most ``max_batch`` inputs; beyond ``max_pending`` inputs waiting or running, 503 with Retry-After."""

    model_config = _STRICT
    batching: bool = True
    max_batch: int = Field(64, ge=1, le=65536, strict=True)
    max_wait_ms: float = Field(2.0, ge=0.0, le=10000.0)
    max_pending: int = Field(1024, ge=1, strict=True)
    max_inputs_per_request: int = Field(256, ge=1, strict=True)
    retry_after_s: int = Field(1, ge=1, le=3600, strict=True)
    max_body_bytes: int = Field(16 * 2**20, ge=1024, strict=True, description="a larger body: 413, never read whole")


class CascadeSpec(BaseModel):
    model_config = _STRICT
    name: str = "cascade"
    workload: str | None = None
    tiers: list[TierSpec] = Field(min_length=1)
    calibration: CalibrationSettings = CalibrationSettings()
    serve: ServeSettings = ServeSettings()

    @model_validator(mode="after")
    def _names_unique(self) -> "CascadeSpec":
        names = [t.name for t in self.tiers]
        if len(set(names)) != len(names):
            raise ValueError(f"tier names must differ; got {names}")
        return self


def _resolved(spec: CascadeSpec, folder: Path) -> CascadeSpec:
    """Tier paths relative to the cascade file's folder."""
    tiers = [t.model_copy(update={"model": folder / t.model, "run": None if t.run is None else folder / t.run})
             for t in spec.tiers]
    return spec.model_copy(update={"tiers": tiers})


def _check_files(spec: CascadeSpec, path: Path) -> None:
    from wattless.energy import resolve_target

    for i, tier in enumerate(spec.tiers):
        if not tier.model.is_file():
            raise CascadeError(f"cascade {path}: key `tiers.{i}.model`: {tier.model} does not exist; export the "
                               f"tier first: wattless export RUN_DIR --out {tier.model}")
        if tier.run is not None and not tier.run.is_dir():
            raise CascadeError(f"cascade {path}: key `tiers.{i}.run`: {tier.run} is not a run directory")
        try:
            resolve_target(tier.target)
        except TargetError as exc:
            raise CascadeError(f"cascade {path}: key `tiers.{i}.target`: {exc}") from None


def load_cascade_spec(path: str | Path) -> CascadeSpec:
    """The validated cascade file, tier paths resolved; CascadeError names the key and the file."""
    path = Path(path)
    raw = read_toml(path, "cascade", CascadeError)
    try:
        spec = CascadeSpec.model_validate(raw)
    except ValidationError as exc:
        raise CascadeError(validation_message(exc, f"cascade {path}", "key",
                                              "unknown key (allowed: name, workload, tiers, calibration, serve)"))
    spec = _resolved(spec, path.parent)
    _check_files(spec, path)
    return spec


def write_cascade_spec(spec: CascadeSpec, path: str | Path) -> None:
    """Write ``spec`` as TOML (atomically); tier paths are written relative to the file where they can be."""
    path = Path(path)
    data = spec.model_dump(mode="json", exclude_none=True)
    for tier in data["tiers"]:
        for key in ("model", "run"):
            if key in tier:
                tier[key] = _relative(Path(tier[key]), path.parent)
    atomic_write(path, tomli_w.dumps(data))


def _relative(p: Path, folder: Path) -> str:
    try:
        return str(p.resolve().relative_to(folder.resolve()))
    except ValueError:
        return str(p.resolve())


def calibration_path(cascade_path: str | Path) -> Path:
    """Where the calibration of ``cascade.toml`` lives: ``cascade.calibration.json`` beside it."""
    path = Path(cascade_path)
    return path.with_name(f"{path.stem}.calibration.json")
