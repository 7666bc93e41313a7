"""Targets are validated data: every coefficient sourced, unknown keys and bad fields named with the file."""

from __future__ import annotations

import tomllib
from pathlib import Path

import pytest
import tomli_w

from wattless.energy import builtin_targets, load_target, resolve_target
from wattless.energy.precision import parse_precision
from wattless.errors import TargetError, UnknownTargetError

TOY = Path(__file__).parents[1] / "data" / "toy-target.toml"
BUILTIN = ["server-cpu", "datacenter-gpu", "mobile-npu", "cortex-m4", "cortex-m33", "analog-pcm", "loihi"]


def test_every_builtin_target_loads_with_every_coefficient_sourced():
    targets = builtin_targets()
    assert set(BUILTIN) <= set(targets)
    for target in targets.values():
        covers = [c for s in target.sources for c in s.covers]
        for path in target.coefficients:
            assert any(path == c or path.startswith(c + ".") for c in covers), (target.name, path)
        assert all(len(s.cite) >= 10 for s in target.sources)


def test_builtin_kinds():
    targets = builtin_targets()
    assert targets["loihi"].event_driven and targets["loihi"].sparsity.skips_zero_activations
    assert targets["analog-pcm"].memory.weights_in == "stationary"
    assert "2:4" in targets["datacenter-gpu"].sparsity.weight_patterns
    assert {targets[n].kind for n in ("cortex-m4", "cortex-m33")} == {"mcu"}


def _write(tmp_path, data, name="t.toml") -> Path:
    path = tmp_path / name
    path.write_text(tomli_w.dumps(data))
    return path


def _toy() -> dict:
    return tomllib.loads(TOY.read_text())


def test_missing_field_is_named_with_the_file(tmp_path):
    data = _toy()
    del data["memory"]["sram_bytes"]
    path = _write(tmp_path, data)
    with pytest.raises(TargetError, match=r"t\.toml.*memory\.sram_bytes"):
        load_target(path)


def test_malformed_and_unknown_fields_are_named(tmp_path):
    data = _toy()
    data["throughput"]["static_w"] = "lots"
    with pytest.raises(TargetError, match=r"throughput\.static_w"):
        load_target(_write(tmp_path, data))
    data = _toy()
    data["memory"]["sram_kb"] = 5
    with pytest.raises(TargetError, match=r"memory\.sram_kb.*unknown field"):
        load_target(_write(tmp_path, data))
    data = _toy()
    data["mac_pj"]["int9x"] = 1.0
    with pytest.raises(TargetError, match="int9x"):
        load_target(_write(tmp_path, data))


def test_a_coefficient_without_a_source_is_rejected(tmp_path):
    data = _toy()
    data["sources"][0]["covers"] = ["mac_pj", "op_pj", "memory", "sparsity"]  # throughput left bare
    with pytest.raises(TargetError, match=r"without a source: throughput"):
        load_target(_write(tmp_path, data))


def test_not_toml_and_missing_file(tmp_path):
    bad = tmp_path / "bad.toml"
    bad.write_text("name = [")
    with pytest.raises(TargetError, match="not valid TOML"):
        load_target(bad)
    with pytest.raises(TargetError, match="does not exist"):
        load_target(tmp_path / "nope.toml")


def test_unknown_target_name_lists_the_known_ones():
    with pytest.raises(UnknownTargetError, match="cortex-m4"):
        resolve_target("cortex-m99")


def test_unlisted_precisions_use_the_cheapest_wide_enough_entry():
    toy = load_target(TOY)  # lists fp32, fp16, int8, int4
    assert toy.mac_key(parse_precision("int2")) == "int4"
    assert toy.mac_key(parse_precision("int16")) == "fp16"
    assert toy.mac_key(parse_precision("bf16")) == "fp16"  # a float as wide; int units cannot run floats
    assert toy.mac_key(parse_precision("fp8")) == "fp16"
    assert toy.mac_key(parse_precision("int8")) == "int8"
