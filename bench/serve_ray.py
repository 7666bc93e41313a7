"""The same cascade on Ray Serve (an existing distributed serving engine), on a one-node local cluster.

The app holds no state between requests, so Ray Serve runs it as it is: each replica builds it with
`wattless.serve.server.asgi_app` (the cascade loaded in the replica), Ray's proxy routes HTTP to the
replicas. The script sends requests through Ray's proxy, checks every answer against the cascade run
locally (same class, tier and estimated joules), reads /health from the replicas, and stops the cluster.

    pip install 'wattless[ray]'
    python bench/serve_ray.py [--cascade bench/out/serve-mnist1d/cascade.toml] [--replicas 2] [--requests 500]

Build the cascade first with `python bench/serve_mnist1d.py --out bench/out/serve-mnist1d`.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import socket
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from rich.console import Console
from rich.table import Table

from wattless.files import atomic_write
from wattless.serve import load_cascade
from wattless.workloads import get_workload


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _shadow_broken_amdsmi(folder: Path) -> bool:
    """zeus brings the `amdsmi` package, which raises KeyError (not ImportError) when imported on a machine
    without ROCm's libamd_smi.so; `import ray` probes it and fails, in the driver and in every Ray worker.
    Where that is so, a stand-in that raises ImportError is put first on the path of all of them (Ray then
    sees no AMD GPU, which is true). True if it was needed."""
    try:
        import amdsmi  # noqa: F401
        return False
    except ImportError:
        return False
    except Exception:
        sys.modules.pop("amdsmi", None)
    stub = folder / "amdsmi"
    stub.mkdir(parents=True, exist_ok=True)
    (stub / "__init__.py").write_text('raise ImportError("amdsmi stand-in: no ROCm library on this machine")\n')
    sys.path.insert(0, str(folder))
    os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, [str(folder), os.environ.get("PYTHONPATH")]))
    return True


def start(cascade: Path, replicas: int, port: int) -> None:
    import ray
    from ray import serve

    from wattless.serve.server import asgi_app

    path = str(cascade.resolve())
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, configure_logging=False)
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    ingress = serve.ingress(lambda: asgi_app(path))()
    deployment = serve.deployment(ingress, name="wattless-cascade", num_replicas=replicas,
                                  ray_actor_options={"num_cpus": 0.5})
    serve.run(deployment.bind(), name="wattless", route_prefix="/")


async def _send(base: str, bodies: list[bytes], clients: int) -> tuple[list, float]:
    import httpx

    answers: list = [None] * len(bodies)
    queue: asyncio.Queue = asyncio.Queue()
    for i in range(len(bodies)):
        queue.put_nowait(i)

    async def client(http):
        while not queue.empty():
            i = queue.get_nowait()
            r = await http.post(f"{base}/v1/predict", content=bodies[i], headers={"content-type": "application/json"})
            answers[i] = (r.status_code, r.json() if r.status_code == 200 else r.text)

    start_s = time.perf_counter()
    async with httpx.AsyncClient(timeout=60) as http:
        await asyncio.gather(*(client(http) for _ in range(clients)))
    return answers, time.perf_counter() - start_s


def compare(cascade: Path, x: np.ndarray, answers: list) -> dict:
    local = load_cascade(cascade).predict(x)
    ok = [a[0] == 200 for a in answers]
    same = [a[0] == 200 and (p := a[1]["predictions"][0])["class"] == q.label and p["tier"] == q.tier
            and abs(p["energy_j"] - q.energy_j) <= 1e-12 * q.energy_j for a, q in zip(answers, local)]
    return {"requests": len(answers), "errors": len(ok) - sum(ok), "same_as_local": sum(same),
            "energy_kind": "estimated",
            "energy_j_sum_of_responses": float(sum(a[1]["energy_j"] for a in answers if a[0] == 200)),
            "energy_j_sum_local": float(sum(q.energy_j for q in local))}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cascade", default="bench/out/serve-mnist1d/cascade.toml")
    parser.add_argument("--replicas", type=int, default=2)
    parser.add_argument("--requests", type=int, default=500)
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--json", default="bench/out/serve_ray.json")
    args = parser.parse_args()
    shadowed = _shadow_broken_amdsmi(Path(tempfile.mkdtemp(prefix="wattless-ray-")))
    try:
        import ray  # noqa: F401
        from ray import serve
    except ImportError:
        raise SystemExit("Ray Serve is not installed: pip install 'wattless[ray]'") from None
    console, cascade = Console(), Path(args.cascade)
    load_cascade(cascade)  # a missing or uncalibrated cascade fails here, before any cluster starts
    wl = get_workload("mnist1d")
    x = wl.prepare_inputs(wl.test.inputs).numpy()[: args.requests]
    bodies = [json.dumps({"inputs": [row.tolist()]}).encode() for row in x]
    port = _free_port()
    started = time.perf_counter()
    try:
        start(cascade, args.replicas, port)
        startup_s = time.perf_counter() - started
        base = f"http://127.0.0.1:{port}"
        answers, wall_s = asyncio.run(_send(base, bodies, args.clients))
        import httpx

        health = httpx.get(f"{base}/health", timeout=30).json()
    finally:
        import ray

        serve.shutdown()
        ray.shutdown()
    record = {"engine": "ray serve", "ray_version": ray.__version__, "replicas": args.replicas, "cluster": "one-node local",
              "startup_s": startup_s, "amdsmi_shadowed": shadowed, "wall_s": wall_s, "rps": len(bodies) / wall_s, "clients": args.clients,
              "health": health, **compare(cascade, x, answers)}
    table = Table(title=f"the cascade on Ray Serve {ray.__version__}, {args.replicas} replicas, one-node local cluster")
    for col in ("requests", "errors", "same answer and joules as local", "requests/s", "startup"):
        table.add_column(col, justify="right")
    table.add_row(str(record["requests"]), str(record["errors"]), str(record["same_as_local"]), f"{record['rps']:.0f}",
                  f"{startup_s:.1f} s")
    console.print(table)
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    atomic_write(Path(args.json), json.dumps(record, indent=2))
    console.print(f"written to {args.json}")


if __name__ == "__main__":
    main()
