"""The real server on a free loopback port, real HTTP: good and bad requests, /health, /metrics, overload
(503 with Retry-After, then recovery) and a client that leaves (its slot freed)."""

from __future__ import annotations

import re
import threading
import time
from contextlib import contextmanager

import httpx
import pytest

from wattless.serve import load_cascade
from wattless.serve.config import ServeSettings
from wattless.serve.app import create_app

from tests.serve.conftest import free_port
from tests.tiny_workload import tiny


class SlowCascade:
    """The real cascade, each batch held for ``delay_s`` (a busy server, without needing a busy machine)."""

    def __init__(self, cascade, delay_s: float) -> None:
        self.inner, self.delay_s = cascade, delay_s
        self.spec, self.tiers, self.kind, self.name = cascade.spec, cascade.tiers, cascade.kind, cascade.name

    def check(self, inputs):
        return self.inner.check(inputs)

    def predict(self, x):
        time.sleep(self.delay_s)
        return self.inner.predict(x)


@contextmanager
def running(app):
    import uvicorn

    port = free_port()
    # h11 and asyncio: what a bare `pip install uvicorn` runs (httptools and uvloop are optional extras)
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="error", access_log=False,
                                           http="h11", loop="asyncio"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        assert time.monotonic() < deadline and thread.is_alive(), "the server did not start"
        time.sleep(0.02)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(10)


def metric(text: str, name: str, **labels) -> float:
    want = ",".join(f'{k}="{v}"' for k, v in sorted(labels.items()))  # the exposition sorts labels
    pattern = rf"^{name}{{{want}}} (\S+)$" if labels else rf"^{name} (\S+)$"
    match = re.search(pattern, text, re.M)
    assert match, f"{name}{labels} not in /metrics"
    return float(match.group(1))


@pytest.fixture(scope="module")
def cascade(calibrated):
    return load_cascade(calibrated)


@pytest.fixture(scope="module")
def base(cascade):
    with running(create_app(cascade)) as url:
        yield url


def _inputs(n: int):
    return tiny().test.inputs[:n].tolist()


def test_predict_answers_each_input_with_its_energy(base):
    r = httpx.post(f"{base}/v1/predict", json={"inputs": _inputs(5)})
    assert r.status_code == 200
    body = r.json()
    assert len(body["predictions"]) == 5 and body["energy_kind"] == "estimated"
    for p in body["predictions"]:
        assert set(p) >= {"class", "confidence", "tier", "escalated", "energy_j", "energy_kind", "energy_targets"}
        assert 0 <= p["class"] < 4 and 0 < p["confidence"] <= 1 and p["escalated"] == (p["tier"] > 0)
        assert p["energy_targets"][0] == "mobile-npu" and len(p["energy_by_tier"]) == p["tier"] + 1
    assert body["energy_j"] == pytest.approx(sum(p["energy_j"] for p in body["predictions"]))


@pytest.mark.parametrize("content, status, words", [
    (b'{"inputs": [[1, 2', 400, "not valid JSON"),
    (b"", 400, "empty body"),
    (b'{"inputs": []}', 422, "empty batch"),
    (b'{"inputs": [[1, 2, 3]]}', 422, "wrong shape (1, 3)"),
    (b'{"inputs": [[' + b", ".join([b'"a"'] * 16) + b"]]}", 422, "must be numbers"),
    (b'{"inputs": [[' + b", ".join([b"NaN"] * 16) + b"]]}", 422, "16 NaN"),
    (b'{"inputs": [[1], [1, 2]]}', 422, "ragged"),
    (b'{"input": [[1]]}', 422, "`input`: unknown field"),
    (b'[1, 2]', 422, "(body)"),
])
def test_bad_requests_get_a_4xx_naming_the_problem(base, content, status, words):
    r = httpx.post(f"{base}/v1/predict", content=content, headers={"content-type": "application/json"})
    assert r.status_code == status
    assert words in r.json()["error"]["message"]
    assert httpx.get(f"{base}/health").json()["status"] == "ok"  # still up


def test_oversized_batch_and_wrong_endpoint(base):
    r = httpx.post(f"{base}/v1/predict", json={"inputs": [[0.0] * 16] * 257})
    assert r.status_code == 413 and "at most 256" in r.json()["error"]["message"]
    r = httpx.post(f"{base}/v1/predict", content=b"[" + b"0," * (9 * 2**20) + b"0]",
                   headers={"content-type": "application/json"})
    assert r.status_code == 413 and "larger than" in r.json()["error"]["message"]
    r = httpx.post(f"{base}/v1/embeddings", json={"input": ["a sentence"]})
    assert r.status_code == 400 and "/v1/predict" in r.json()["error"]["message"]


def test_health_and_metrics(base):
    health = httpx.get(f"{base}/health").json()
    assert health["kind"] == "classifier" and [t["target"] for t in health["tiers"]] == ["mobile-npu", "datacenter-gpu"]
    before = httpx.get(f"{base}/metrics").text
    body = httpx.post(f"{base}/v1/predict", json={"inputs": _inputs(20)}).json()
    httpx.post(f"{base}/v1/predict", content=b"{", headers={"content-type": "application/json"})
    r = httpx.get(f"{base}/metrics")
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/plain")
    after = r.text

    def delta(name, **labels):
        return metric(after, name, **labels) - metric(before, name, **labels)

    escalated = sum(p["escalated"] for p in body["predictions"])
    assert delta("wattless_requests_total", endpoint="predict", status="200") == 1
    assert delta("wattless_request_errors_total", endpoint="predict", reason="malformed_json") == 1
    assert delta("wattless_inputs_total", tier="lean") == 20
    assert delta("wattless_escalations_total", tier="lean") == escalated
    assert delta("wattless_inputs_total", tier="big") == escalated
    assert delta("wattless_estimated_energy_joules_all_tiers_total") == pytest.approx(body["energy_j"], rel=1e-9)
    lean_j = sum(p["energy_by_tier"][0]["energy_j"] for p in body["predictions"])
    assert delta("wattless_estimated_energy_joules_total", tier="lean", target="mobile-npu") == pytest.approx(lean_j)
    assert "wattless_request_latency_seconds_bucket" in after and "wattless_pending_inputs" in after


def _pending(url):
    return httpx.get(f"{url}/health").json()["pending_inputs"]


def _wait(condition, timeout_s=10.0):
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, "timed out waiting"
        time.sleep(0.02)


def test_overload_answers_503_with_retry_after_then_recovers(cascade):
    settings = ServeSettings(max_pending=1, retry_after_s=2)
    with running(create_app(SlowCascade(cascade, 1.0), settings)) as url:
        result = {}
        first = threading.Thread(target=lambda: result.update(r=httpx.post(f"{url}/v1/predict",
                                                                           json={"inputs": _inputs(1)}, timeout=30)))
        first.start()
        _wait(lambda: _pending(url) == 1)
        refused = httpx.post(f"{url}/v1/predict", json={"inputs": _inputs(1)})
        assert refused.status_code == 503 and refused.headers["retry-after"] == "2"
        assert "overloaded" in refused.json()["error"]["message"]
        first.join(30)
        assert result["r"].status_code == 200
        again = httpx.post(f"{url}/v1/predict", json={"inputs": _inputs(1)}, timeout=30)
        assert again.status_code == 200  # recovered
        assert metric(httpx.get(f"{url}/metrics").text, "wattless_requests_total", endpoint="predict",
                      status="503") == 1


def test_a_client_that_leaves_frees_its_slot(cascade):
    settings = ServeSettings(max_pending=1)
    with running(create_app(SlowCascade(cascade, 1.5), settings)) as url:
        with pytest.raises(httpx.TimeoutException):
            httpx.post(f"{url}/v1/predict", json={"inputs": _inputs(1)}, timeout=0.3)
        _wait(lambda: _pending(url) == 0)  # freed while its batch may still be running
        text = httpx.get(f"{url}/metrics").text
        assert metric(text, "wattless_cancelled_requests_total") == 1
        assert httpx.post(f"{url}/v1/predict", json={"inputs": _inputs(1)}, timeout=30).status_code == 200
