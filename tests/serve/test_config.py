"""The cascade file: validated, errors name the key and the file; tier paths relative to the file."""

from __future__ import annotations

import pytest

from wattless.errors import CascadeError
from wattless.serve import calibration_path, load_cascade_spec
from wattless.serve.config import write_cascade_spec

from tests.serve.conftest import cascade_text


def _write(folder, text, name="c.toml"):
    (folder / "runs" / "lean").mkdir(parents=True, exist_ok=True)
    (folder / "runs" / "big").mkdir(parents=True, exist_ok=True)
    for f in ("lean.onnx", "big.onnx"):
        (folder / f).write_bytes(b"x")
    path = folder / name
    path.write_text(text)
    return path


def test_valid_file_resolves_paths_beside_it(tmp_path):
    spec = load_cascade_spec(_write(tmp_path, cascade_text()))
    assert [t.name for t in spec.tiers] == ["lean", "big"]
    assert spec.tiers[0].model == tmp_path / "lean.onnx" and spec.tiers[1].run == tmp_path / "runs" / "big"
    assert spec.calibration.target_accuracy_drop == 0.02 and spec.serve.batching is True
    assert calibration_path(tmp_path / "c.toml") == tmp_path / "c.calibration.json"


@pytest.mark.parametrize("text, key", [
    (cascade_text(extra="[serve]\nmax_batch = 0\n"), "serve.max_batch"),
    (cascade_text(extra="[serve]\nmax_bach = 4\n"), "serve.max_bach"),
    (cascade_text() + "\n[calibration2]\nx = 1\n", "calibration2"),
    (cascade_text().replace('target_accuracy_drop = 0.02', 'target_accuracy_drop = "a lot"'),
     "calibration.target_accuracy_drop"),
    (cascade_text().replace('name = "big"', 'name = "lean"'), "(top level)"),
    ('name = "x"\ntiers = []\n', "tiers"),
])
def test_bad_keys_are_named_with_the_file(tmp_path, text, key):
    path = _write(tmp_path, text)
    with pytest.raises(CascadeError) as info:
        load_cascade_spec(path)
    assert str(path) in str(info.value) and f"`{key}`" in str(info.value)


def test_missing_model_unknown_target_and_not_toml(tmp_path):
    path = _write(tmp_path, cascade_text(big_model="nowhere.onnx"))
    with pytest.raises(CascadeError, match=r"`tiers.1.model`: .*nowhere.onnx does not exist"):
        load_cascade_spec(path)
    path = _write(tmp_path, cascade_text().replace('"datacenter-gpu"', '"warp-drive"'))
    with pytest.raises(CascadeError, match=r"`tiers.1.target`.*warp-drive"):
        load_cascade_spec(path)
    path = _write(tmp_path, "name = [", "broken.toml")
    with pytest.raises(CascadeError, match="not valid TOML"):
        load_cascade_spec(path)


def test_written_file_reads_back(tmp_path):
    spec = load_cascade_spec(_write(tmp_path, cascade_text()))
    out = tmp_path / "again.toml"
    write_cascade_spec(spec, out)
    assert 'model = "lean.onnx"' in out.read_text()
    assert load_cascade_spec(out) == spec
