"""Joules per generated token of Llama-3.1-8B (bf16, built from its config on the meta device), prompt
P = 512, N = 128 new tokens, batch B in {1, 8, 64}, on `datacenter-gpu` and `mobile-npu`; and how long
the profiling itself takes (each row is one `profile_decode` call: prefill + two traced decode steps,
the rest interpolated, priced on both targets).

    python bench/decode_8b.py [--json bench/out/decode_8b.json]
"""

from __future__ import annotations

import argparse
import json
import resource
import time
from pathlib import Path

from rich.console import Console
from rich.table import Table

from wattless.energy.decode import profile_decode
from wattless.models import llama31_8b

TARGETS = ("datacenter-gpu", "mobile-npu")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", type=Path, default=Path("bench/out/decode_8b.json"))
    parser.add_argument("--prompt-tokens", type=int, default=512)
    parser.add_argument("--new-tokens", type=int, default=128)
    args = parser.parse_args()
    t0 = time.perf_counter()
    model, inputs = llama31_8b()
    build_s = time.perf_counter() - t0
    rows = []
    for batch in (1, 8, 64):
        t0 = time.perf_counter()
        result = profile_decode(model, inputs, TARGETS, prompt_tokens=args.prompt_tokens,
                                new_tokens=args.new_tokens, batch=batch)
        wall = time.perf_counter() - t0
        for t in TARGETS:
            rows.append({"batch": batch, "target": t, "energy_per_token_j": result.energy_per_token_j(t),
                         "latency_per_token_s": result.latency_per_token_s(t),
                         "prefill_j_per_request": result.prefill[t].energy_j / batch,
                         "request_j": result.per_request(t)[0], "profile_wall_s": wall})
    rss_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    table = Table(title=f"Llama-3.1-8B bf16, P = {args.prompt_tokens}, N = {args.new_tokens}: estimated, not measured")
    for col in ("batch", "target", "J / token", "ms / token", "prefill J / request", "J / request", "profiling s"):
        table.add_column(col, justify="right")
    for r in rows:
        table.add_row(str(r["batch"]), r["target"], f"{r['energy_per_token_j']:.4g}",
                      f"{1e3 * r['latency_per_token_s']:.4g}", f"{r['prefill_j_per_request']:.4g}",
                      f"{r['request_j']:.4g}", f"{r['profile_wall_s']:.1f}")
    console = Console(width=140)
    console.print(table)
    console.print(f"model built on meta in {build_s:.1f} s; peak resident memory {rss_mb:.0f} MB")
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps({"model": "llama3.1-8b", "prompt_tokens": args.prompt_tokens,
                                     "new_tokens": args.new_tokens, "build_s": build_s, "peak_rss_mb": rss_mb,
                                     "rows": rows}, indent=1))


if __name__ == "__main__":
    main()
