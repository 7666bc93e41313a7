"""`wattless serve`, `wattless cascade calibrate`, `wattless cascade eval`: the real command on a free port,
and one line with exit code 2 for what a user can get wrong."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx

from tests.serve.conftest import SPEC, free_port
from tests.test_cli import run

SRC = Path(__file__).parents[1] / "src"


def test_calibrate_and_eval_commands(capsys, monkeypatch, calibrated, tmp_path):
    code, out, _ = run(capsys, monkeypatch, "cascade", "calibrate", str(calibrated), "--workload", SPEC, "--json")
    assert code == 0
    record = json.loads(out)
    assert [t["name"] for t in record["tiers"]] == ["lean", "big"] and record["predicted"]["cascade"]["energy_kind"] == "estimated"
    result = tmp_path / "eval.json"
    code, out, _ = run(capsys, monkeypatch, "cascade", "eval", str(calibrated), "--json", str(result))
    assert code == 0 and "lean alone" in out and "escalation rate" in out and "estimated" in out
    data = json.loads(result.read_text())
    assert {"accuracy", "energy_j_per_request", "escalation_rate"} <= set(data["cascade"])
    assert all({"accuracy", "energy_j_per_request"} <= set(t) for t in data["tiers"])


def test_bad_cascade_files_and_options_are_one_line(capsys, monkeypatch, tiny_cascade_dir, calibrated, tmp_path):
    folder = tmp_path / "uncalibrated"
    shutil.copytree(tiny_cascade_dir, folder, ignore=shutil.ignore_patterns("cache", "*.calibration.json"))
    code, _, err = run(capsys, monkeypatch, "serve", str(folder / "cascade.toml"), "--port", str(free_port()))
    assert code == 2 and "not calibrated" in err and "Traceback" not in err and len(err.strip().splitlines()) <= 2
    code, _, err = run(capsys, monkeypatch, "serve", str(calibrated), "--max-batch", "0")
    assert code == 2 and "--max-batch" in err
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        code, _, err = run(capsys, monkeypatch, "serve", str(calibrated), "--port", str(busy.getsockname()[1]))
    assert code == 2 and "cannot listen" in err
    code, _, err = run(capsys, monkeypatch, "cascade", "calibrate", str(tmp_path / "none.toml"), "--workload", SPEC)
    assert code == 2 and "does not exist" in err


def test_wattless_serve_answers_over_http_and_stops(calibrated):
    port = free_port()
    env = {**os.environ, "PYTHONPATH": f"{SRC}{os.pathsep}{os.environ.get('PYTHONPATH', '')}", "OMP_NUM_THREADS": "1"}
    server = subprocess.Popen([sys.executable, "-m", "wattless.cli", "serve", str(calibrated), "--port", str(port),
                               "--max-wait-ms", "1"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            assert server.poll() is None, server.stderr.read()
            try:
                if httpx.get(f"{base}/health", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                assert time.monotonic() < deadline, "wattless serve did not start"
                time.sleep(0.2)
        good = httpx.post(f"{base}/v1/predict", json={"inputs": [[0.5] * 16]})
        assert good.status_code == 200 and good.json()["predictions"][0]["energy_kind"] == "estimated"
        bad = httpx.post(f"{base}/v1/predict", json={"inputs": [[0.5] * 15]})
        assert bad.status_code == 422 and "wrong shape" in bad.json()["error"]["message"]
        metrics = httpx.get(f"{base}/metrics").text
        assert 'wattless_requests_total{endpoint="predict",status="200"} 1.0' in metrics
        assert 'wattless_requests_total{endpoint="predict",status="422"} 1.0' in metrics
    finally:
        server.terminate()
        out, _ = server.communicate(timeout=30)
    assert server.returncode in (0, -15) and "serving tiny" in out
