"""The MCU targets are grounded: MLPerf Tiny keyword spotting lands within 2x of published board energy."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

spec = importlib.util.spec_from_file_location("mcu_kws", Path(__file__).parents[2] / "bench" / "mcu_kws.py")
mcu_kws = importlib.util.module_from_spec(spec)
spec.loader.exec_module(mcu_kws)


@pytest.mark.parametrize("row", mcu_kws.run(), ids=lambda r: r["target"])
def test_ds_cnn_estimate_within_factor_2_of_published(row):
    assert row["macs"] == pytest.approx(2.66e6, rel=0.02)
    assert 0.5 <= row["ratio"] <= 2.0, row
