"""The runtime: batch or single inputs, the path each input took, clear errors on bad input, and a sentence
encoder's embed() with tokenization and no padding."""

from __future__ import annotations


import numpy as np
import onnx
import pytest
import torch
from onnx import TensorProto, helper

from wattless.errors import ExportError, ModelInputError
from wattless.export import export_model
from wattless.runtime import load
from wattless.techniques import ApplyContext, QuantConfig, apply_
from wattless.train import TrainSettings, train

from tests.tiny_workload import tiny


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny models: one thread beats two contending ones
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def classifier(tmp_path_factory):
    wl = tiny()
    model = wl.build_model()
    handle = apply_(model, QuantConfig(), ApplyContext(example_input=wl.train.inputs[:64]))
    train(model, wl, TrainSettings(epochs=1, lr=1e-2, batch_size=64), techniques=[handle], progress=False)
    handle.finish(model, None)
    path = tmp_path_factory.mktemp("export") / "tiny.onnx"
    export_model(model, wl, path)
    return load(path, threads=1), wl, model.eval()


def test_single_and_batch_inputs_give_the_same_outputs(classifier):
    rt, wl, model = classifier
    x = wl.test.inputs[:8].numpy()
    batch = rt.run(x)
    assert batch.outputs.shape == (8, 4) and len(batch.paths) == 8
    single = rt.run(x[3])
    assert single.outputs.shape == (4,) and len(single.paths) == 1
    np.testing.assert_allclose(single.outputs, batch.outputs[3], rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(rt(torch.from_numpy(x)), batch.outputs)  # tensors and float64 are taken too
    np.testing.assert_allclose(rt(x.astype(np.float64)), batch.outputs, rtol=1e-5, atol=1e-6)
    assert batch.paths[0].exit is None and batch.paths[0].segments == 1  # no dynamic path in this model


@pytest.mark.parametrize("bad, message", [
    (np.zeros((4, 15), np.float32), r"wrong shape \(4, 15\).*\(16,\)"),
    (np.zeros((2, 4, 16), np.float32), "wrong shape"),
    (np.zeros((0, 16), np.float32), "empty batch"),
    (np.zeros((4, 16), np.int64), "wrong dtype int64"),
    (np.zeros((4, 16), bool), "wrong dtype bool"),
    (np.array([["a"] * 16]), "wrong dtype"),
    ([[0.0] * 16, [0.0] * 3], "cannot be read as one array|wrong dtype"),
])
def test_bad_inputs_get_a_clear_error(classifier, bad, message):
    rt = classifier[0]
    with pytest.raises(ModelInputError, match=message):
        rt.run(bad)


def test_nan_and_infinite_inputs_are_refused_with_their_place(classifier):
    rt, wl, _ = classifier
    x = wl.test.inputs[:4].numpy().copy()
    x[2, 5] = np.nan
    x[3, 0] = np.inf
    with pytest.raises(ModelInputError, match=r"1 NaN and 1 infinite values \(first at index \(2, 5\)\)"):
        rt.run(x)


def test_files_that_are_not_exports_are_refused(tmp_path):
    with pytest.raises(ExportError, match="does not exist"):
        load(tmp_path / "missing.onnx")
    (tmp_path / "junk.onnx").write_bytes(b"not a model")
    with pytest.raises(ExportError, match="not an ONNX file"):
        load(tmp_path / "junk.onnx")
    graph = helper.make_graph([helper.make_node("Relu", ["x"], ["y"])], "g",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])])
    onnx.save(helper.make_model(graph), str(tmp_path / "plain.onnx"))
    with pytest.raises(ExportError, match="not a wattless export"):
        load(tmp_path / "plain.onnx")


@pytest.fixture(scope="module")
def encoder(tmp_path_factory):
    """all-MiniLM-L6-v2 cut to its first layer and quantized after training (int8), checked on 48 sentences."""
    import dataclasses

    from wattless.techniques.quantize import ptq_int8_
    from wattless.workloads import get_workload

    full = get_workload("minilm")
    wl = dataclasses.replace(full, test=full.test.take(slice(0, 48)))
    model = wl.build_model()
    model.encoder.layer = model.encoder.layer[:1]
    ptq_int8_(model, wl.prepare_inputs(wl.train.take(slice(0, 16)).inputs), act_range="percentile")
    path = tmp_path_factory.mktemp("export") / "minilm.onnx"
    report = export_model(model, wl, path)
    assert report.parity.passed and report.kind == "sentence-encoder"
    return load(path), wl, model.eval()


def test_embed_matches_the_pytorch_model_without_padding(encoder):
    from wattless.workloads.minilm import embed, load_tokenizer

    rt, wl, model = encoder
    sentences = list(wl.test.inputs[:12])
    got = rt.embed(sentences)
    assert got.shape == (12, 384) and got.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(got, axis=1), 1.0, rtol=1e-5)
    ref = embed(model, load_tokenizer(), sentences).numpy()  # PyTorch, padded batches and a mask
    assert ((got * ref).sum(1) > 0.99).all()
    one_by_one = np.stack([rt.embed([s])[0] for s in sentences])
    np.testing.assert_allclose(one_by_one, got, rtol=1e-4, atol=1e-5)  # grouping by length changes nothing
    assert rt.embed([]).shape == (0, 384)


def test_token_ids_with_padding_are_cut_to_the_real_tokens(encoder):
    rt, wl, _ = encoder
    tok = rt.tokenizer
    short, long = "A short sentence.", "A much longer sentence that needs many more tokens than the first."
    enc = tok([short, long], padding=True, return_tensors="np")
    padded = rt.run({"input_ids": enc["input_ids"], "attention_mask": enc["attention_mask"]}).outputs
    np.testing.assert_allclose(padded, rt.embed([short, long]), rtol=1e-4, atol=1e-5)
    single = rt.run(np.asarray(tok(short)["input_ids"]))
    assert single.outputs.shape == (384,)


@pytest.mark.parametrize("bad, message", [
    ({"input_ids": np.array([[101, 40000, 102]])}, r"token ids must lie in \[0, 30522\)"),
    ({"input_ids": np.array([[101.0, 102.0]])}, "wrong dtype float64"),
    ({"ids": np.array([[101, 102]])}, "needs 'input_ids'"),
    ({"input_ids": np.array([[101, 102]]), "attention_mask": np.array([[1, 1, 1]])}, "must match"),
    ({"input_ids": np.array([[101, 102]]), "attention_mask": np.array([[0, 0]])}, "all zeros"),
    ({"input_ids": np.ones((1, 600), np.int64)}, "at most 512"),
])
def test_bad_token_inputs_get_a_clear_error(encoder, bad, message):
    with pytest.raises(ModelInputError, match=message):
        encoder[0].run(bad)


def test_embed_takes_a_list_of_sentences(encoder, classifier):
    with pytest.raises(ModelInputError, match="list of sentences"):
        encoder[0].embed("one string, not a list")
    with pytest.raises(ModelInputError, match="for sentence encoders"):
        classifier[0].embed(["a sentence"])
