"""A stratified cascade on MNIST-1D, built from scratch and served by `wattless serve` under load.

Tier 0 is `recipes/mnist1d-npu.toml` exported and priced on mobile-npu; tier 1 the dense fp32 baseline
(`recipes/mnist1d-fp32.toml`) on datacenter-gpu. Calibrated on the validation split to stay within 0.3
points of tier 1 alone (the early exits' margin), evaluated on the test split, then served: a load test of
--requests requests from --clients concurrent clients on loopback, with dynamic batching on and off.

Goal (issue 16): the cascade within 0.3 accuracy points of the big model alone, at >= 10x fewer estimated
joules per request than sending every request to it; the load test with 0 errors and the joules of the
responses matching the server's /metrics total.

    python bench/serve_mnist1d.py --out DIR [--requests 10000] [--clients 32]

Leaves DIR/cascade.toml (ready for `wattless serve DIR/cascade.toml`) and writes DIR/serve.json.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import re
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
from rich.console import Console
from rich.table import Table

from wattless.cli.serve import cascade_table
from wattless.export import export_run
from wattless.files import atomic_write
from wattless.optimize import optimize
from wattless.serve import CascadeSpec, TierSpec, calibrate, evaluate, write_cascade_spec
from wattless.workloads import get_workload

RECIPES = Path(__file__).parents[1] / "recipes"
GOAL_POINTS, GOAL_RATIO = 0.3, 10.0
ENERGY_TOTAL = "wattless_estimated_energy_joules_all_tiers_total"


def build(out: Path, console: Console) -> Path:
    """Runs, exports, the cascade file and its calibration under ``out``; returns the cascade file."""
    tiers = [("lean", "mnist1d-npu", "mobile-npu"), ("big", "mnist1d-fp32", "datacenter-gpu")]
    specs = []
    for name, recipe, target in tiers:
        run, model = out / "runs" / recipe, out / f"{recipe}.onnx"
        console.print(f"[dim]{recipe}: wattless optimize (resumed or left as it is if finished), then export[/]")
        optimize("mnist1d", RECIPES / f"{recipe}.toml", run, progress=False, baselines=False)
        export_run(run, model)
        specs.append(TierSpec(name=name, model=model, run=run, target=target))
    cascade = out / "cascade.toml"
    write_cascade_spec(CascadeSpec(name="mnist1d", workload="mnist1d", tiers=specs), cascade)
    calibrate(cascade, "mnist1d", log=lambda msg: console.print(f"[dim]{msg}[/]"))
    return cascade


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _metric(metrics_text: str, name: str) -> float:
    match = re.search(rf"^{name} (\S+)$", metrics_text, re.M)
    return float(match.group(1))


def _energy_total(metrics_text: str) -> float:
    return _metric(metrics_text, ENERGY_TOTAL)


async def _client(http, url: str, jobs: asyncio.Queue, rows: list, deadline: float) -> None:
    while time.monotonic() < deadline:
        try:
            i, body, label = jobs.get_nowait()
        except asyncio.QueueEmpty:
            return
        start = time.perf_counter()
        try:
            r = await http.post(url, content=body, headers={"content-type": "application/json"})
            ok, payload = r.status_code == 200, r.json() if r.status_code == 200 else None
        except Exception:
            ok, payload = False, None
        latency_s = time.perf_counter() - start
        p = payload["predictions"][0] if ok else None
        rows.append((latency_s, ok, p["energy_j"] if ok else 0.0, ok and p["class"] == label, ok and p["escalated"]))


async def _load(base: str, bodies: list[bytes], labels: np.ndarray, requests: int, clients: int,
                time_limit_s: float) -> dict:
    import httpx

    jobs: asyncio.Queue = asyncio.Queue()
    for i in range(requests):
        jobs.put_nowait((i, bodies[i % len(bodies)], int(labels[i % len(labels)])))
    rows: list = []
    limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)
    async with httpx.AsyncClient(limits=limits, timeout=30.0) as http:
        before = _energy_total((await http.get(f"{base}/metrics")).text)
        start = time.perf_counter()
        deadline = time.monotonic() + time_limit_s
        await asyncio.gather(*(_client(http, f"{base}/v1/predict", jobs, rows, deadline) for _ in range(clients)))
        wall_s = time.perf_counter() - start
        scraped = (await http.get(f"{base}/metrics")).text
        after = _energy_total(scraped)
        batches = _metric(scraped, "wattless_batch_inputs_count")
        mean_batch = _metric(scraped, "wattless_batch_inputs_sum") / max(batches, 1)
    lat = np.asarray([r[0] for r in rows]) * 1000
    ok = np.asarray([r[1] for r in rows])
    responses_j, metrics_j = float(sum(r[2] for r in rows)), after - before
    return {"requests": len(rows), "requests_asked": requests, "clients": clients, "errors": int((~ok).sum()),
            "wall_s": wall_s, "rps": len(rows) / wall_s, "p50_ms": float(np.percentile(lat, 50)),
            "p99_ms": float(np.percentile(lat, 99)), "served_accuracy": float(np.mean([r[3] for r in rows])),
            "escalation_rate": float(np.mean([r[4] for r in rows])), "energy_kind": "estimated",
            "energy_j_sum_of_responses": responses_j, "energy_j_metrics_total": metrics_j,
            "energy_j_per_request": responses_j / max(1, int(ok.sum())),
            "batches": int(batches), "mean_batch_inputs": mean_batch,
            "energy_matches_metrics": bool(abs(responses_j - metrics_j) <= 1e-9 * max(abs(metrics_j), 1e-30) + 1e-15)}


def _wait_ready(base: str, server: subprocess.Popen, timeout_s: float = 120) -> None:
    import httpx

    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if server.poll() is not None:
            raise SystemExit(f"wattless serve exited with code {server.returncode}: {server.stderr.read()}")
        try:
            if httpx.get(f"{base}/health", timeout=1).status_code == 200:
                return
        except httpx.HTTPError:
            time.sleep(0.2)
    raise SystemExit(f"wattless serve did not answer /health within {timeout_s} s")


def load_test(cascade: Path, batching: bool, args: argparse.Namespace) -> dict:
    """Start `wattless serve` (the real command) on a free loopback port, load it, stop it."""
    wl = get_workload("mnist1d")
    x = wl.prepare_inputs(wl.test.inputs).numpy()
    bodies = [json.dumps({"inputs": [row.tolist()]}).encode() for row in x]
    port = _free_port()
    command = [sys.executable, "-m", "wattless.cli", "serve", str(cascade), "--port", str(port),
               "--batching" if batching else "--no-batching"]
    server = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                              env={**os.environ, "OMP_NUM_THREADS": "1"})
    try:
        base = f"http://127.0.0.1:{port}"
        _wait_ready(base, server)
        load_before = os.getloadavg()[0]
        record = asyncio.run(_load(base, bodies, wl.test.targets.numpy(), args.requests, args.clients,
                                   args.time_limit_s))
    finally:
        server.terminate()
        server.wait(timeout=30)
    # the machine is shared: its 1-minute load average says how much else ran beside the test
    return {"batching": batching, **record, "load_average_1min": [load_before, os.getloadavg()[0]]}


def load_table(records: list[dict]) -> Table:
    loads = ", ".join(f"{r['load_average_1min'][0]:.1f}" for r in records)
    table = Table(title=f"wattless serve under load: {records[0]['clients']} concurrent clients on loopback, this machine "
                        f"({os.cpu_count()} CPUs, 1-minute load average at the start: {loads})")
    for col in ("dynamic batching", "requests", "errors", "requests/s", "p50", "p99", "inputs/batch", "served accuracy",
                "escalated", "J/request (estimated)", "= /metrics total"):
        table.add_column(col, justify="right")
    for r in records:
        table.add_row("on" if r["batching"] else "off", str(r["requests"]), str(r["errors"]), f"{r['rps']:.0f}",
                      f"{r['p50_ms']:.2f} ms", f"{r['p99_ms']:.2f} ms", f"{r['mean_batch_inputs']:.1f}", f"{100 * r['served_accuracy']:.2f} %",
                      f"{100 * r['escalation_rate']:.1f} %", f"{r['energy_j_per_request']:.3e}",
                      "yes" if r["energy_matches_metrics"] else "NO")
    return table


def verdict(result: dict, loads: list[dict]) -> tuple[bool, str]:
    drop, ratio = result["accuracy_drop_points"], result["energy_ratio"]
    clean = all(r["errors"] == 0 and r["energy_matches_metrics"] and r["requests"] == r["requests_asked"]
                for r in loads)
    ok = drop <= GOAL_POINTS and ratio >= GOAL_RATIO and clean
    return ok, (f"cascade {result['cascade']['accuracy']:.4f} vs big alone {result['tiers'][-1]['accuracy']:.4f} "
                f"({drop:+.2f} points below; goal <= {GOAL_POINTS}), {ratio:.1f}x fewer estimated joules per request "
                f"(goal >= {GOAL_RATIO:g}x), escalation {100 * result['cascade']['escalation_rate']:.1f} %; load: "
                f"{'0 errors, joules match /metrics' if clean else 'errors or a joule mismatch'}: "
                f"{'met' if ok else 'NOT met'}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", default="bench/out/serve-mnist1d")
    parser.add_argument("--requests", type=int, default=10_000)
    parser.add_argument("--clients", type=int, default=32)
    parser.add_argument("--time-limit-s", type=float, default=300.0, help="each load test stops after this long")
    args = parser.parse_args()
    console = Console(width=max(Console().width, 150))
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    cascade = build(out, console)
    result = evaluate(cascade, "mnist1d")
    console.print(cascade_table(result, f"MNIST-1D cascade on {result['inputs']} test inputs"))
    loads = [load_test(cascade, batching, args) for batching in (True, False)]
    console.print(load_table(loads))
    ok, text = verdict(result, loads)
    record = {**result, "load": loads, "goal": {"accuracy_points": GOAL_POINTS, "energy_ratio": GOAL_RATIO, "met": ok,
                                                "verdict": text},
              "machine": {"cpus": os.cpu_count(), "python": platform.python_version(), "platform": platform.platform()},
              "cascade_file": str(cascade)}
    atomic_write(out / "serve.json", json.dumps(record, indent=2))
    console.print(("[green]" if ok else "[bold red]") + text)
    console.print(f"written to {out / 'serve.json'}; serve it with: wattless serve {cascade}")


if __name__ == "__main__":
    main()
