"""Hardware targets as data: one TOML file per target, loaded into a frozen, validated object.

Every number in a target file is a coefficient and must be covered by an entry of its ``sources`` list
(``covers = ["mac_pj.int8", "memory"]``; a prefix covers every coefficient under it). Unknown keys are
rejected by name. See docs/TARGETS.md for the format.
"""

from __future__ import annotations

from functools import cached_property, lru_cache
from importlib import resources
from pathlib import Path
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, Strict, ValidationError, field_validator, model_validator

from wattless.files import read_toml, validation_message
from wattless.energy.precision import Precision, parse_precision
from wattless.errors import TargetError, UnknownTargetError

__all__ = ["Target", "Source", "Analog", "load_target", "builtin_targets", "resolve_target", "coefficient_paths"]

_FROZEN = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)
# every coefficient is a finite number: NaN, inf, true or "1.5" are refused on load, naming the field
Number = Annotated[float, Strict()]
WeightPattern = Literal["unstructured", "2:4"]


def _check_precisions(table: dict[str, float], field: str) -> dict[str, float]:
    for key, value in table.items():
        try:
            parse_precision(key)
        except ValueError as exc:
            raise ValueError(f"{field}: {exc}") from None
        if value < 0:
            raise ValueError(f"{field}.{key} must be >= 0, got {value}")
    if "fp32" not in table:
        raise ValueError(f"{field} must list fp32 (every model can arrive in fp32)")
    return table


class Memory(BaseModel):
    model_config = _FROZEN
    sram_bytes: Number = Field(gt=0, description="on-chip memory; larger working sets spill to DRAM")
    sram_pj_per_byte: Number = Field(ge=0)
    dram_pj_per_byte: Number = Field(ge=0, description="off-chip memory (or the MCU's flash) per byte")
    weights_in: Literal["auto", "sram", "dram", "stationary"] = Field(
        "auto",
        description="where weights are read from each inference: auto = SRAM while they fit, the rest "
        "from DRAM; stationary = weights live in the compute array (analog) and are not moved",
    )


class Throughput(BaseModel):
    model_config = _FROZEN
    macs_per_s: dict[str, Number]
    ops_per_s: dict[str, Number] | None = None
    dram_bytes_per_s: Number = Field(gt=0)
    static_w: Number = Field(ge=0, description="power drawn while an inference runs, beyond per-op energy")

    @field_validator("macs_per_s", "ops_per_s")
    @classmethod
    def _rates(cls, v: dict[str, float] | None, info) -> dict[str, float] | None:
        if v is None:
            return v
        _check_precisions(v, f"throughput.{info.field_name}")
        if any(x <= 0 for x in v.values()):
            raise ValueError(f"throughput.{info.field_name}: every rate must be > 0")
        return v


class Sparsity(BaseModel):
    model_config = _FROZEN
    weight_patterns: tuple[WeightPattern, ...] = ()
    skips_zero_activations: bool = False
    sparse_index_bits: Number = Field(
        0.0, ge=0, description="index bits stored per non-zero weight in the target's sparse format"
    )


class Events(BaseModel):
    """Event-driven (neuromorphic) pricing: work is synaptic events, not MACs."""

    model_config = _FROZEN
    synop_pj: Number = Field(ge=0, description="energy per synaptic event (a spike reaching one synapse)")
    neuron_update_pj: Number = Field(0.0, ge=0, description="energy per neuron (output element) update")
    synops_per_s: Number = Field(gt=0)


class Analog(BaseModel):
    """An analog in-memory array's device and converter model: what `techniques.analog` simulates. Array size
    and converter bit widths are the chip's; the conductance statistics are the PCM model's (docs/TARGETS.md)."""

    model_config = _FROZEN
    array_rows: Annotated[int, Strict()] = Field(gt=0, description="inputs (rows) of one crossbar tile")
    array_cols: Annotated[int, Strict()] = Field(gt=0, description="outputs (columns) of one crossbar tile")
    dac_bits: Annotated[int, Strict()] = Field(ge=2, le=16, description="input DAC resolution")
    adc_bits: Annotated[int, Strict()] = Field(ge=2, le=16, description="output ADC resolution")
    out_bound: Number = Field(gt=0, description="ADC range, in units of a full-scale input on a full-scale weight")
    out_noise: Number = Field(ge=0, description="additive output noise std, same units as out_bound")
    w_noise: Number = Field(ge=0, description="short-term read noise std per inference, relative to g_max")
    g_max_us: Number = Field(gt=0, description="conductance the largest |weight| maps to, microsiemens")
    prog_c0_us: Number = Field(description="programming noise std = c0 + c1 g + c2 g^2 (g = G / g_max), uS")
    prog_c1_us: Number
    prog_c2_us: Number
    prog_g_ref_us: Number = Field(gt=0, description="g_max the programming polynomial was fitted at")
    drift_t0_s: Number = Field(gt=0, description="first read after programming: drift is (t / t0)^-nu")
    nu_mean_log_slope: Number = Field(description="mean nu = slope * ln(g) + offset, clamped")
    nu_mean_offset: Number
    nu_mean_min: Number = Field(ge=0)
    nu_mean_max: Number = Field(ge=0)
    nu_std_log_slope: Number
    nu_std_offset: Number
    nu_std_min: Number = Field(ge=0)
    nu_std_max: Number = Field(ge=0)
    read_q_coeff: Number = Field(ge=0, description="1/f read noise: Q = coeff / g^exponent, at most q_max")
    read_q_exponent: Number = Field(ge=0)
    read_q_max: Number = Field(ge=0)
    read_t_s: Number = Field(gt=0, description="read duration in the 1/f noise fit, seconds")


class Source(BaseModel):
    model_config = _FROZEN
    key: str
    cite: str = Field(min_length=10, description="where the figure comes from: paper, datasheet, page")
    covers: tuple[str, ...] = Field(min_length=1)
    note: str = ""


class Target(BaseModel):
    """A priced hardware target. Energies in picojoules, rates per second, power in watts."""

    model_config = _FROZEN
    schema_version: int = Field(1, alias="schema")
    name: str = Field(pattern=r"^[a-z0-9][a-z0-9._-]*$")
    kind: Literal["cpu", "gpu", "npu", "mcu", "analog", "neuromorphic", "other"]
    description: str
    version: str = "1"
    mac_pj: dict[str, Number]
    op_pj: dict[str, Number]
    memory: Memory
    throughput: Throughput
    sparsity: Sparsity = Sparsity()
    events: Events | None = None
    analog: Analog | None = None
    sources: tuple[Source, ...] = Field(min_length=1)

    @field_validator("mac_pj", "op_pj")
    @classmethod
    def _tables(cls, v: dict[str, float], info) -> dict[str, float]:
        return _check_precisions(v, info.field_name)

    @model_validator(mode="after")
    def _every_coefficient_sourced(self) -> "Target":
        paths = coefficient_paths(self)
        covers = [c for s in self.sources for c in s.covers]
        unknown = [c for c in covers if not any(p == c or p.startswith(c + ".") for p in paths)]
        if unknown:
            raise ValueError(f"sources cover fields that the target does not have: {', '.join(unknown)}")
        bare = [p for p in paths if not any(p == c or p.startswith(c + ".") for c in covers)]
        if bare:
            raise ValueError(f"coefficients without a source: {', '.join(bare)} (add them to a source's covers)")
        return self

    @property
    def event_driven(self) -> bool:
        return self.events is not None

    def _pick(self, table: dict[str, float], p: Precision, best) -> str:
        # The hardware runs a precision at any listed width at least as wide; int work can run on
        # float units, never the reverse. Taking the best candidate keeps narrower never costlier.
        cands = [
            k for k in table
            if (q := parse_precision(k)).bits >= p.bits and (q.is_float or not p.is_float)
        ]
        return best(cands, key=table.__getitem__) if cands else "fp32"

    def mac_key(self, p: Precision) -> str:
        """The mac_pj entry that prices a MAC of precision p."""
        return self._pick(self.mac_pj, p, min)

    def op_key(self, p: Precision) -> str:
        return self._pick(self.op_pj, p, min)

    def macs_per_s_for(self, p: Precision) -> float:
        rates = self.throughput.macs_per_s
        return rates[self._pick(rates, p, max)]

    def ops_per_s_for(self, p: Precision) -> float:
        rates = self.throughput.ops_per_s or self.throughput.macs_per_s
        return rates[self._pick(rates, p, max)]

    @cached_property
    def coefficients(self) -> dict[str, float]:
        """Every coefficient by dotted path, e.g. 'mac_pj.int8', 'memory.sram_pj_per_byte'."""
        return _flatten(self.model_dump(exclude={"sources", "schema_version", "version"}, exclude_none=True))

    def to_toml_dict(self) -> dict:
        return self.model_dump(mode="json", by_alias=True, exclude_none=True)


def _flatten(obj: dict, prefix: str = "") -> dict[str, float]:
    flat: dict[str, float] = {}
    for key, value in obj.items():
        if isinstance(value, dict):
            flat.update(_flatten(value, f"{prefix}{key}."))
        elif isinstance(value, (int, float)) and not isinstance(value, bool):
            flat[f"{prefix}{key}"] = float(value)
    return flat


def coefficient_paths(target: Target) -> list[str]:
    """Dotted paths of every number in a target: the things a source must cover."""
    return list(target.coefficients)


def load_target(path: str | Path) -> Target:
    """Read and validate one target file; errors name the file and the field."""
    data = read_toml(Path(path), "target file", TargetError)
    try:
        return Target.model_validate(data)
    except ValidationError as exc:
        raise TargetError(validation_message(
            exc, f"target file {path}", "field", "unknown field (remove it or check its spelling)")) from None


def _builtin_dir() -> Path:
    return Path(str(resources.files("wattless.energy") / "targets"))


@lru_cache(maxsize=None)
def builtin_targets() -> dict[str, Target]:
    """The targets shipped with wattless, by name."""
    found = {}
    for file in sorted(_builtin_dir().glob("*.toml")):
        target = load_target(file)
        found[target.name] = target
    return found


def resolve_target(name_or_path: str | Path | Target) -> Target:
    """A built-in target name, a path to a target file, or a Target as is."""
    if isinstance(name_or_path, Target):
        return name_or_path
    text = str(name_or_path)
    known = builtin_targets()
    if text in known:
        return known[text]
    if text.endswith(".toml") or Path(text).exists():
        return load_target(text)
    raise UnknownTargetError(
        f"unknown target {text!r}: built-in targets are {', '.join(known)}; or give a path to a .toml file"
    )
