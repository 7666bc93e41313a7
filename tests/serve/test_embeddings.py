"""POST /v1/embeddings on a one-tier sentence-encoder cascade: the shape users of embedding APIs expect,
each sentence priced by its token count on the tier's target."""

from __future__ import annotations

from pathlib import Path

import httpx
import numpy as np
import pytest

from tests.serve.test_app import running

SPEC = f"{Path(__file__).parent / 'tiny_encoder.py'}:workload"


@pytest.fixture(scope="module")
def encoder_cascade(tmp_path_factory):
    import torch

    from wattless.export import export_run
    from wattless.optimize import optimize
    from wattless.serve import calibrate

    folder = tmp_path_factory.mktemp("encoder")
    (folder / "fp32.toml").write_text('name = "minilm-1layer"\ntarget = "server-cpu"\n[train]\nepochs = 0\n'
                                      '[distill]\nteacher = "baseline"\n')  # unlabelled: distill, 0 epochs
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        optimize(SPEC, folder / "fp32.toml", folder / "run", progress=False, baselines=False, energy_inputs=4)
        export_run(folder / "run", folder / "enc.onnx")
    finally:
        torch.set_num_threads(threads)
    path = folder / "cascade.toml"
    path.write_text(f'name = "enc"\nworkload = "{SPEC}"\n[[tiers]]\nname = "enc"\nmodel = "enc.onnx"\nrun = "run"\n'
                    'target = "server-cpu"\n')
    record = calibrate(path)
    return path, record


def test_calibration_prices_by_token_count(encoder_cascade):
    _, record = encoder_cascade
    prices = record["tiers"][0]["prices"]
    assert record["kind"] == "sentence-encoder" and prices["kind"] == "estimated"
    lengths = sorted(int(k.split(":")[1]) for k in prices["paths"])
    energies = [prices["paths"][f"tokens:{n}"]["energy_j"] for n in lengths]
    assert len(lengths) > 2 and energies[-1] > energies[0] and prices["by_tokens"]  # longer sentences cost more
    from wattless.serve.pricing import PathPrices

    table = PathPrices.from_json(prices)
    a, b = lengths[0], lengths[1]
    if b - a > 1:  # a length between two priced ones lies between their prices
        assert min(energies[:2]) <= table.price_tokens(a + 1) <= max(energies[:2])
    assert table.price_tokens(lengths[-1] + 50) > energies[-1]  # longer than any seen: extrapolated, not capped


def test_embeddings_endpoint(encoder_cascade):
    from wattless.serve import load_cascade
    from wattless.serve.app import create_app

    cascade = load_cascade(encoder_cascade[0])
    with running(create_app(cascade)) as url:
        r = httpx.post(f"{url}/v1/embeddings", json={"input": ["A short one.", "A somewhat longer sentence here."]},
                       timeout=30)
        assert r.status_code == 200
        body = r.json()
        assert body["object"] == "list" and [d["index"] for d in body["data"]] == [0, 1]
        vectors = np.asarray([d["embedding"] for d in body["data"]])
        assert vectors.shape == (2, 384)
        np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1, rtol=1e-4)
        np.testing.assert_allclose(vectors, cascade.tiers[0].model.embed(["A short one.", "A somewhat longer sentence here."]),
                                   rtol=1e-4, atol=1e-5)
        assert body["energy_kind"] == "estimated" and body["energy_target"] == "server-cpu"
        tokens = [len(t) for t in cascade.tiers[0].model.tokenizer(["A short one.", "A somewhat longer sentence here."])["input_ids"]]
        table = cascade.tiers[0].prices
        assert [d["energy_j"] for d in body["data"]] == [table.price_tokens(n) for n in tokens]
        assert body["energy_j"] == pytest.approx(sum(d["energy_j"] for d in body["data"]))
        assert body["usage"]["prompt_tokens"] > 4
        one = httpx.post(f"{url}/v1/embeddings", json={"input": "Just one."}, timeout=30).json()
        assert len(one["data"]) == 1
        for bad, words in (({"input": []}, "empty list"), ({"input": [""]}, "empty sentence"),
                           ({"input": [1, 2]}, "`input"), ({"text": "x"}, "unknown field")):
            r = httpx.post(f"{url}/v1/embeddings", json=bad, timeout=30)
            assert r.status_code == 422 and words in r.json()["error"]["message"], r.text
        r = httpx.post(f"{url}/v1/predict", json={"inputs": [[1.0]]})
        assert r.status_code == 400 and "/v1/embeddings" in r.json()["error"]["message"]
