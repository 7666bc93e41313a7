"""MLPerf Tiny keyword spotting (DS-CNN, int8) estimated on the MCU targets, beside published board energy.

Published medians, closed division (shared/REFERENCE.md): STM32L4R5 (Cortex-M4, 120 MHz) 1431 uJ,
STM32U575 (Cortex-M33, 160 MHz) 664 uJ. Goal: each estimate within a factor of 2.

    python bench/mcu_kws.py [--json bench/out/mcu_kws.json]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from rich.console import Console
from rich.table import Table

from wattless.energy import builtin_targets, profile, set_precision
from wattless.models import ds_cnn

PUBLISHED_UJ = {"cortex-m4": ("STM32L4R5", 1431.0), "cortex-m33": ("STM32U575", 664.0)}


def run() -> list[dict]:
    model, x = ds_cnn()
    set_precision(model, "int8", "int8")  # MLPerf Tiny boards run the int8 TFLite model
    targets = builtin_targets()
    result = profile(model, x, [targets[name] for name in PUBLISHED_UJ])
    rows = []
    for name, (board, published) in PUBLISHED_UJ.items():
        est = result.estimates[name]
        rows.append({
            "target": name, "board": board, "macs": result.macs, "estimated_uj": est.energy_j * 1e6,
            "estimated_latency_ms": est.latency_s * 1e3, "published_uj": published,
            "ratio": est.energy_j * 1e6 / published, "static_share": est.static_j / est.energy_j,
        })
    return rows


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--json", default="bench/out/mcu_kws.json")
    args = parser.parse_args()
    rows = run()
    table = Table(title="DS-CNN keyword spotting, int8: estimated (wattless) vs published (MLPerf Tiny)")
    for col in ("target", "board", "estimated", "est. latency", "published", "ratio", "static share"):
        table.add_column(col, justify="right")
    for r in rows:
        table.add_row(r["target"], r["board"], f"{r['estimated_uj']:.0f} uJ", f"{r['estimated_latency_ms']:.1f} ms",
                      f"{r['published_uj']:.0f} uJ", f"{r['ratio']:.2f}x", f"{100 * r['static_share']:.0f}%")
    Console().print(table)
    out = Path(args.json)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"rows": rows, "goal": "ratio within [0.5, 2]"}, indent=2))
    print(f"written to {out}")


if __name__ == "__main__":
    main()
