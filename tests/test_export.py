"""Export: parity with PyTorch for every technique, units physically removed, early exits that skip work,
and a failed export that leaves nothing behind."""

from __future__ import annotations

import copy
import json
import sys
from collections import OrderedDict
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from torch import nn

from wattless.errors import ExportError, ParityError
from wattless.export import Parity, Tolerance, export_model, export_run
from wattless.runtime import load
from wattless.techniques import ApplyContext, ExitConfig, MoEConfig, PruneConfig, QuantConfig, apply_
from wattless.train import TrainSettings, train
from wattless.workloads import Split, Workload
from wattless.workloads.base import classification_evaluate

from tests.int8_oracle import saturating_products
from tests.tiny_workload import tiny

SPEC = f"{Path(__file__).parent / 'tiny_workload.py'}:tiny"


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny models: one thread beats two contending ones
    yield
    torch.set_num_threads(threads)


def _workload(name: str, build, data) -> Workload:
    train_split, val, test = data
    return Workload(name=name, metric_name="accuracy", build_model=build, train=train_split, val=val, test=test,
                    example_input=lambda n: train_split.inputs[:n], evaluate=classification_evaluate(256),
                    needs_training=True, default_epochs=2, batch_size=64, default_lr=1e-2)


def _easy_and_hard(n: int, seed: int) -> Split:
    """Half easy (two far blobs on feature 0), half hard (sign parity of three features near the origin)."""
    gen = torch.Generator().manual_seed(seed)
    easy = torch.rand(n, generator=gen) < 0.5
    y = torch.randint(0, 2, (n,), generator=gen)
    x = torch.randn(n, 8, generator=gen)
    x[easy, 0] = (2 * y[easy] - 1) * 6.0 + 0.5 * x[easy, 0]
    x[~easy, 0] = 0.3 * x[~easy, 0]
    parity = ((x[:, 1] > 0) ^ (x[:, 2] > 0) ^ (x[:, 3] > 0)).long()
    return Split(x, torch.where(easy, y, parity))


def _chain() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(OrderedDict(fc1=nn.Linear(8, 32), relu1=nn.ReLU(), fc2=nn.Linear(32, 64), relu2=nn.ReLU(),
                                     fc3=nn.Linear(64, 64), relu3=nn.ReLU(), fc4=nn.Linear(64, 2)))


def _signals(n: int, seed: int) -> Split:
    """Three classes of length-16 signals: a bump early, a bump late, a ramp; noised."""
    gen = torch.Generator().manual_seed(seed)
    y = torch.randint(0, 3, (n,), generator=gen)
    t = torch.linspace(-1, 1, 16)
    shapes = torch.stack([torch.exp(-((t + 0.5) / 0.2) ** 2), torch.exp(-((t - 0.5) / 0.2) ** 2), t])
    return Split((shapes[y] + 0.3 * torch.randn(n, 16, generator=gen)).unsqueeze(1), y)


def _conv_net() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(OrderedDict(
        conv1=nn.Conv1d(1, 16, 3, padding=1), bn1=nn.BatchNorm1d(16), relu1=nn.ReLU(), pool=nn.MaxPool1d(2),
        conv2=nn.Conv1d(16, 16, 3, padding="same"), relu2=nn.ReLU(), flatten=nn.Flatten(), fc=nn.Linear(16 * 8, 3)))


WORKLOADS = {
    "tiny": tiny,
    "exits": lambda: _workload("exits", _chain, [_easy_and_hard(n, s) for n, s in ((3000, 0), (1000, 1), (1000, 2))]),
    "conv": lambda: _workload("conv", _conv_net, [_signals(n, s) for n, s in ((1024, 0), (256, 1), (256, 2))]),
}


@pytest.fixture(scope="module")
def baselines():
    """Each workload with its baseline trained once."""
    out = {}
    for name, make in WORKLOADS.items():
        wl = make()
        model = wl.build_model()
        train(model, wl, TrainSettings(epochs=3, lr=1e-2, batch_size=64), progress=False)
        out[name] = (wl, model)
    return out


def optimized(baselines, workload: str, *configs, epochs: int = 2) -> tuple[Workload, nn.Module]:
    wl, base = baselines[workload]
    model = copy.deepcopy(base)
    context = ApplyContext(
        example_input=wl.train.inputs[:64], total_steps=epochs * len(wl.train) // 64,
        train_batches=lambda: ((wl.train.inputs[i : i + 64], wl.train.targets[i : i + 64]) for i in range(0, 256, 64)),
        extras={"val": (wl.val.inputs, wl.val.targets)})
    handles = [apply_(model, c, context) for c in configs]
    train(model, wl, TrainSettings(epochs=epochs, lr=3e-3, batch_size=64), techniques=handles, progress=False)
    for h in handles:
        h.finish(model, context)
    return wl, model.eval()


PER_TOKEN = QuantConfig(act_granularity="token", smooth=0.5, weight_step_init="max")  # the minilm-int8 recipe's
PER_TOKEN_SYMMETRIC = PER_TOKEN.model_copy(update={"act_grid": "symmetric"})  # the minilm-fast recipe's
CASES = {
    "int8": ("tiny", [QuantConfig(weight_bits=8, act_bits=8)]),
    "int4": ("tiny", [QuantConfig(weight_bits=4, act_bits=4)]),
    "int4-weights-float-acts": ("tiny", [QuantConfig(weight_bits=4, act_bits=None)]),
    "2:4": ("tiny", [PruneConfig(pattern="n:m"), QuantConfig()]),
    "structured-neurons": ("tiny", [PruneConfig(pattern="structured", sparsity=0.5), QuantConfig()]),
    "structured-conv-channels": ("conv", [PruneConfig(pattern="structured", sparsity=0.5),
                                          QuantConfig(weight_bits=4, act_bits=4)]),
    "moe": ("tiny", [MoEConfig(experts=4, top_k=1), QuantConfig()]),
    "early-exit": ("exits", [ExitConfig(after=["relu1"], target_accuracy_drop=0.02), QuantConfig()]),
    "per-token-smoothed": ("tiny", [PER_TOKEN]),
    "per-token-structured": ("tiny", [PruneConfig(pattern="structured", sparsity=0.5), PER_TOKEN]),
    "per-token-symmetric": ("tiny", [PER_TOKEN_SYMMETRIC]),
    "per-token-symmetric-structured": ("tiny", [PruneConfig(pattern="structured", sparsity=0.5), PER_TOKEN_SYMMETRIC]),
}


@pytest.mark.parametrize("case", CASES)
def test_export_keeps_parity_with_pytorch(case, baselines, tmp_path):
    wl, model = optimized(baselines, CASES[case][0], *CASES[case][1])
    report = export_model(model, wl, tmp_path / "m.onnx")
    assert report.parity.passed and report.parity.inputs == len(wl.test)
    assert abs(report.parity.metric_onnx - report.parity.metric_torch) <= Tolerance().metric_atol
    with torch.no_grad():  # and independently of the export's own check
        ref = model(wl.test.inputs).numpy()
    got = load(tmp_path / "m.onnx").run(wl.test.inputs.numpy()).outputs
    if report.parity.requantized:  # int32 biases round the float ones: held to the classes (see Tolerance)
        assert (got.argmax(1) == ref.argmax(1)).mean() >= 0.99
    else:
        assert np.isclose(got, ref, rtol=1e-3, atol=1e-3).all(1).mean() >= 0.99
    assert load(tmp_path / "m.onnx").parity["passed"] is True  # the file carries its check
    # right on every CPU: no u8 x s8 product that ONNX Runtime's AVX2 kernel without VNNI would saturate
    assert saturating_products(tmp_path / "m.onnx") == []


def _initializers(path: Path) -> dict[str, tuple[int, ...]]:
    return {t.name: tuple(t.dims) for t in onnx.load(str(path)).graph.initializer}


def test_quantized_layers_run_integer_kernels(baselines, tmp_path):
    wl, model = optimized(baselines, "tiny", QuantConfig(weight_bits=8, act_bits=8))
    report = export_model(model, wl, tmp_path / "m.onnx")
    ops = {n.op_type for n in onnx.load(str(tmp_path / "m.onnx")).graph.node}
    assert "MatMulIntegerToFloat" in ops and "QuantizeLinear" in ops and "MatMul" not in ops
    weights = [t for t in onnx.load(str(tmp_path / "m.onnx")).graph.initializer if t.name.endswith(".weight")]
    # int8 codes, or their portable u8 form (code + 128, zero point 128: wattless.kernels)
    assert weights and all(t.data_type in (onnx.TensorProto.INT8, onnx.TensorProto.UINT8) for t in weights)
    assert all(k.startswith("int8") for k in report.layers.values())


def test_per_token_smoothed_layers_run_integer_kernels(baselines, tmp_path):
    wl, model = optimized(baselines, "tiny", PER_TOKEN)
    report = export_model(model, wl, tmp_path / "m.onnx")
    ops = [n.op_type for n in onnx.load(str(tmp_path / "m.onnx")).graph.node]
    assert ops.count("MatMulInteger") == 3 and "MatMul" not in ops and "QuantizeLinear" not in ops
    assert ops.count("ReduceMin") == 3  # each layer's rows on their own grid, at run time
    divisors = [t for t in onnx.load(str(tmp_path / "m.onnx")).graph.initializer if t.name.endswith("smooth_factor")]
    assert len(divisors) == 3  # the smoothing is in the graph, not dropped
    assert all("MatMulInteger, per-token" in k and "SmoothQuant" in k for k in report.layers.values())


def test_four_bit_weights_with_float_activations_use_matmul_nbits(baselines, tmp_path):
    wl, model = optimized(baselines, "tiny", QuantConfig(weight_bits=4, act_bits=None))
    export_model(model, wl, tmp_path / "m.onnx")
    assert {n.op_type for n in onnx.load(str(tmp_path / "m.onnx")).graph.node} >= {"MatMulNBits"}


def test_structured_pruning_removes_units_physically(baselines, tmp_path):
    wl, model = optimized(baselines, "conv", PruneConfig(pattern="structured", sparsity=0.5),
                          QuantConfig(weight_bits=8, act_bits=8))
    report = export_model(model, wl, tmp_path / "m.onnx")
    assert report.removed == {"conv1": {"kept": 8, "total": 16}, "conv2": {"kept": 8, "total": 16}}
    shapes = _initializers(tmp_path / "m.onnx")
    assert shapes["conv1.weight"] == (8, 1, 3) and shapes["conv2.weight"] == (8, 8, 3)  # not masks: fewer rows
    assert shapes["fc.weight"] == (8 * 8, 3)  # the classifier reads only the kept channels


def test_requantization_fuses_convs_and_is_held_to_the_same_classes(baselines, tmp_path):
    wl, model = optimized(baselines, "conv", QuantConfig(weight_bits=8, act_bits=8))
    fused = export_model(model, wl, tmp_path / "fused.onnx", requantize=True)
    exact = export_model(model, wl, tmp_path / "exact.onnx", requantize=False)
    ops = {name: [n.op_type for n in onnx.load(str(tmp_path / name)).graph.node] for name in ("fused.onnx", "exact.onnx")}
    assert ops["fused.onnx"].count("QLinearConv") == 2  # conv1's BatchNorm is folded into it: both convs fuse
    assert "QLinearConv" not in ops["exact.onnx"] and ops["exact.onnx"].count("ConvInteger") == 2
    assert fused.parity.requantized and fused.parity.agree >= 0.99 and "QLinearConv" in fused.layers["conv2"]
    assert not exact.parity.requantized and exact.parity.within >= 0.99
    assert saturating_products(tmp_path / "fused.onnx") == saturating_products(tmp_path / "exact.onnx") == []


def test_moe_export_runs_each_expert_on_its_tokens_and_reports_routes(baselines, tmp_path):
    wl, model = optimized(baselines, "tiny", MoEConfig(experts=4, top_k=1))
    export_model(model, wl, tmp_path / "m.onnx")
    rt = load(tmp_path / "m.onnx")
    result = rt.run(wl.test.inputs[:32].numpy())
    block = next(iter(rt.routes))
    with torch.no_grad():  # the block is the first layers, so its tokens are the inputs themselves
        probs = model.get_submodule(block).router(wl.test.inputs[:32]).softmax(-1)
    assert [p.experts[block] for p in result.paths] == [[int(e)] for e in probs.argmax(-1)]
    assert all(sum(p.expert_tokens[block]) == 1 for p in result.paths)  # top-1: one expert per token


def test_early_exit_export_stops_easy_inputs_early(baselines, tmp_path):
    wl, model = optimized(baselines, "exits", ExitConfig(after=["relu1"], target_accuracy_drop=0.02), QuantConfig())
    export_model(model, wl, tmp_path / "m.onnx")
    rt = load(tmp_path / "m.onnx")
    x = wl.test.inputs
    paths = rt.run(x.numpy()).paths
    with torch.no_grad():
        model(x)
    exits = np.array([p.exit for p in paths])
    assert (exits == model.last_exits.numpy()).mean() >= 0.99  # the same path as in PyTorch
    assert 0.2 < (exits == 0).mean() < 0.9, "the test data should hold easy and hard inputs"
    easy, hard = x[exits == 0][:1].numpy(), x[exits == 1][:1].numpy()
    assert [p.segments for p in rt.run(easy).paths] == [1] and rt.run(hard).paths[0].segments == 2
    ran_easy, ran_hard = rt.executed_ops(easy), rt.executed_ops(hard)
    # segment 1 (fc1 + the exit head) for both; segment 2 (fc2, fc3, fc4) only for the hard input
    assert ran_easy["MatMulIntegerToFloat"] == 2 and ran_hard["MatMulIntegerToFloat"] == 5
    assert sum(ran_easy.values()) < sum(ran_hard.values())


def test_a_failed_parity_check_leaves_nothing_at_out(baselines, tmp_path, monkeypatch):
    wl, model = optimized(baselines, "tiny", QuantConfig())
    out = tmp_path / "m.onnx"
    failing = Parity(False, 256, 0.5, 3.0, "accuracy", 0.9, 0.7, Tolerance())
    monkeypatch.setattr("wattless.export.parity.check_classifier", lambda *args: failing)
    with pytest.raises(ParityError, match=r"parity check failed: 50\.00% of 256 eval inputs.*nothing was written"):
        export_model(model, wl, out)
    assert list(tmp_path.iterdir()) == []
    out.write_bytes(b"an older export")
    with pytest.raises(ParityError):
        export_model(model, wl, out)
    assert out.read_bytes() == b"an older export" and len(list(tmp_path.iterdir())) == 1


def test_unsupported_models_fail_with_a_clear_error(tmp_path):
    class Branchy(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = nn.Linear(16, 4)

        def forward(self, x):
            return self.fc(x) if x.sum() > 0 else -self.fc(x)

    with pytest.raises(ExportError, match="cannot trace Branchy"):
        export_model(Branchy(), tiny(), tmp_path / "m.onnx")
    assert not (tmp_path / "m.onnx").exists()


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    from wattless.optimize import optimize
    from wattless.recipe import parse_recipe

    root = tmp_path_factory.mktemp("run")
    recipe = parse_recipe({"name": "tiny-export", "train": {"epochs": 1, "lr": 3e-3},
                           "quantize": {"weight_bits": 8, "act_bits": 8},
                           "prune": {"pattern": "structured", "sparsity": 0.5}})
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("WATTLESS_CACHE", str(root / "cache"))
        optimize(SPEC, recipe, root / "run", progress=False, baselines=False)
    return root / "run"


def test_export_run_and_the_command_line(run_dir, tmp_path, capsys, monkeypatch):
    from wattless.cli import main

    report = export_run(run_dir, tmp_path / "a.onnx", workload=SPEC)
    assert report.parity.passed and report.removed
    monkeypatch.setattr(sys, "argv", ["wattless", "export", str(run_dir), "--out", str(tmp_path / "b.onnx"),
                                      "--workload", SPEC, "--json"])
    with pytest.raises(SystemExit) as done:
        main()
    assert done.value.code in (0, None)
    printed = json.loads(capsys.readouterr().out)
    assert printed["parity"]["passed"] and Path(printed["path"]).is_file()


@pytest.mark.parametrize("args, message", [
    (["export", "no/such/run", "--out", "x.onnx"], "does not exist"),
    (["export", "{empty}", "--out", "x.onnx"], "not a finished `wattless optimize` run"),
])
def test_bad_export_input_exits_2_with_one_line(args, message, tmp_path, capsys, monkeypatch):
    from wattless.cli import main

    args = [a.replace("{empty}", str(tmp_path)) for a in args]
    monkeypatch.setattr(sys, "argv", ["wattless", *args])
    with pytest.raises(SystemExit) as done:
        main()
    err = capsys.readouterr().err
    assert done.value.code == 2 and message in " ".join(err.split())


def test_pruned_attention_heads_and_ffn_neurons_leave_the_encoder(tmp_path):
    """A BERT layer with half its heads and half its FFN neurons pruned exports with smaller projections."""
    import dataclasses

    from wattless.techniques.quantize import ptq_int8_
    from wattless.workloads import get_workload

    full = get_workload("minilm")
    wl = dataclasses.replace(full, test=full.test.take(slice(0, 32)))
    model = wl.build_model()
    model.encoder.layer = model.encoder.layer[:1]
    context = ApplyContext(example_input=wl.example_input(2))
    for config in (PruneConfig(pattern="structured", granularity="head", sparsity=0.5),
                   PruneConfig(pattern="structured", granularity="neuron", sparsity=0.5)):
        apply_(model, config, context).finish(model, context)
    ptq_int8_(model, wl.prepare_inputs(wl.train.take(slice(0, 16)).inputs))
    report = export_model(model, wl, tmp_path / "m.onnx")
    assert report.parity.passed
    assert report.removed == {"encoder.layer.0.attention": {"kept": 6, "total": 12},
                              "encoder.layer.0.intermediate": {"kept": 768, "total": 1536}}
    shapes = _initializers(tmp_path / "m.onnx")
    assert shapes["encoder.layer.0.attention.self.query.weight"] == (384, 192)  # (in, out): 6 heads of 32
    assert shapes["encoder.layer.0.intermediate.dense.weight"] == (384, 768)
    assert shapes["encoder.layer.0.output.dense.weight"] == (768, 384)
    assert saturating_products(tmp_path / "m.onnx") == []


def test_per_token_smoothed_encoder_exports_with_integer_kernels(tmp_path):
    """The minilm-int8 recipe's quantizer on one BERT layer: Q, K and V share one smoothing and one
    per-token quantization of their input, and every projection runs MatMulInteger."""
    import dataclasses

    from wattless.workloads import get_workload

    full = get_workload("minilm")
    wl = dataclasses.replace(full, test=full.test.take(slice(0, 32)))
    model = wl.build_model()
    model.encoder.layer = model.encoder.layer[:1]
    context = ApplyContext(example_input=wl.prepare_inputs(wl.train.take(slice(0, 16)).inputs))
    apply_(model, PER_TOKEN.model_copy(update={"smooth_skip": ["*output.dense"]}), context).finish(model, context)
    report = export_model(model, wl, tmp_path / "m.onnx")
    assert report.parity.passed and report.parity.within == 1.0
    ops = [n.op_type for n in onnx.load(str(tmp_path / "m.onnx")).graph.node]
    assert ops.count("MatMulInteger") == 6 and "MatMul" not in ops and "MatMulIntegerToFloat" not in ops
    assert ops.count("ReduceMin") == 4  # Q, K, V quantize their shared input once
    smoothed = [n for n, k in report.layers.items() if "SmoothQuant" in k]
    assert smoothed == [f"encoder.layer.0.{n}" for n in ("attention.self.query", "attention.self.key",
                                                         "attention.self.value", "intermediate.dense")]
    shared = [t for t in onnx.load(str(tmp_path / "m.onnx")).graph.initializer if t.name.endswith("smooth_factor")]
    assert len(shared) == 2  # one for Q, K, V; one for the FFN's first layer
    assert saturating_products(tmp_path / "m.onnx") == []


def _one_layer_encoder(config: QuantConfig, *prune: PruneConfig):
    import dataclasses

    from wattless.workloads import get_workload

    full = get_workload("minilm")
    wl = dataclasses.replace(full, test=full.test.take(slice(0, 32)))
    model = wl.build_model()
    model.encoder.layer = model.encoder.layer[:1]
    context = ApplyContext(example_input=wl.prepare_inputs(wl.train.take(slice(0, 16)).inputs))
    for c in prune:
        apply_(model, c, context).finish(model, context)
    apply_(model, config, context).finish(model, context)
    return wl, model


def test_symmetric_per_token_encoder_runs_one_quantization_per_input_and_no_zero_point_correction(tmp_path):
    """The minilm-fast recipe's quantizer on one BERT layer: Q, K and V are one product on one QuantizeLinear
    of their input, the output projection's smoothing is folded into V, and no product needs a zero-point
    correction in int32."""
    wl, model = _one_layer_encoder(PER_TOKEN_SYMMETRIC.model_copy(update={"smooth_skip": ["*layer.?.output.dense"]}))
    report = export_model(model, wl, tmp_path / "m.onnx")
    assert report.parity.passed and report.parity.within == 1.0
    graph = onnx.load(str(tmp_path / "m.onnx")).graph
    ops = [n.op_type for n in graph.node]
    assert ops.count("MatMulIntegerToFloat") == 4 and ops.count("QuantizeLinear") == 4  # QKV, out, fc1, fc2
    assert not {"MatMulInteger", "MatMul", "ReduceMin", "Sub", "Round", "Cast"} & set(ops)
    assert ops.count("Split") == 1 and ops.count("MultiHeadAttention") == 1
    mha = next(n for n in graph.node if n.op_type == "MultiHeadAttention")
    assert len(mha.input) == 4  # Q, K, V's biases added inside attention
    divisors = [t.name for t in graph.initializer if t.name.endswith("smooth_factor")]
    assert len(divisors) == 2  # Q, K, V share one; the FFN's first layer; the output projection's is in V
    assert "folded" in report.layers["encoder.layer.0.attention.output.dense"]
    assert "one product with 2 more" in report.layers["encoder.layer.0.attention.self.value"]
    assert saturating_products(tmp_path / "m.onnx") == []


def test_dynamic_encoder_runs_each_product_as_one_dynamic_quantize_matmul(tmp_path):
    """act_granularity = "dynamic" on one BERT layer: Q, K, V and the attention are one QAttention on one
    DynamicQuantizeLinear (biases inside), every other product one DynamicQuantizeMatMul, with no other
    quantization operator around any product; the output projection's smoothing is folded into V; parity
    holds, and the weights are exact on every CPU's kernel."""
    from wattless.kernels import integer_products

    config = QuantConfig(act_granularity="dynamic", smooth=0.5, weight_step_init="max",
                         smooth_skip=["*layer.?.output.dense"])
    wl, model = _one_layer_encoder(config)
    report = export_model(model, wl, tmp_path / "m.onnx")
    assert report.parity.passed
    model_proto = onnx.load(str(tmp_path / "m.onnx"))
    ops = [n.op_type for n in model_proto.graph.node]
    assert ops.count("DynamicQuantizeMatMul") == 3 and ops.count("QAttention") == 1  # out, fc1, fc2; QKV
    assert ops.count("DynamicQuantizeLinear") == 1
    assert not {"QuantizeLinear", "MatMulInteger", "MatMulIntegerToFloat", "MatMul", "MultiHeadAttention", "Split",
                "ReduceMax", "Abs"} & set(ops)
    qatt = next(n for n in model_proto.graph.node if n.op_type == "QAttention")
    inits = {i.name: i for i in model_proto.graph.initializer}
    assert list(inits[qatt.input[1]].dims) == [384, 3 * 384] and list(inits[qatt.input[4]].dims) == [3 * 384]
    assert ops.count("Div") == 2  # the smoothing of Q, K, V's input and of the FFN's; the output's is in V
    assert "DynamicQuantizeMatMul" in report.layers["encoder.layer.0.attention.output.dense"]
    assert "QAttention" in report.layers["encoder.layer.0.attention.self.value"]
    assert {p.op_type for p in integer_products(model_proto)} == {"DynamicQuantizeMatMul", "QAttention"}
    assert saturating_products(tmp_path / "m.onnx") == []


def test_dynamic_encoder_with_outlier_smoothing_divides_the_ffn_input_in_graph(tmp_path):
    """smooth_outliers on the FFN output (after GELU, which cannot take a factor): one Div more before that
    product, parity holds, and the product is still one DynamicQuantizeMatMul."""
    config = QuantConfig(act_granularity="dynamic", smooth=0.5, weight_step_init="max",
                         smooth_skip=["*layer.?.output.dense"], smooth_outliers=["*layer.?.output.dense"])
    wl, model = _one_layer_encoder(config)
    assert float(model.encoder.layer[0].output.dense.smooth_factor.min()) == 1.0
    report = export_model(model, wl, tmp_path / "m.onnx")
    assert report.parity.passed
    ops = [n.op_type for n in onnx.load(str(tmp_path / "m.onnx")).graph.node]
    assert ops.count("DynamicQuantizeMatMul") == 3 and ops.count("QAttention") == 1 and ops.count("Div") == 3
    assert "SmoothQuant (input / s in-graph)" in report.layers["encoder.layer.0.output.dense"]


def test_pruned_symmetric_encoder_cuts_units_out_of_the_fused_product(tmp_path):
    wl, model = _one_layer_encoder(PER_TOKEN_SYMMETRIC.model_copy(update={"smooth_skip": ["*layer.?.output.dense"]}),
                                   PruneConfig(pattern="structured", granularity="head", sparsity=0.5),
                                   PruneConfig(pattern="structured", granularity="neuron", sparsity=0.5))
    report = export_model(model, wl, tmp_path / "m.onnx")
    assert report.parity.passed
    assert report.removed == {"encoder.layer.0.attention": {"kept": 6, "total": 12},
                              "encoder.layer.0.intermediate": {"kept": 768, "total": 1536}}
    shapes = _initializers(tmp_path / "m.onnx")
    assert shapes["encoder.layer.0.attention.self.query.weight"] == (384, 3 * 192)  # Q, K, V: 6 heads of 32 each
    assert shapes["encoder.layer.0.intermediate.dense.weight"] == (384, 768)
    assert shapes["encoder.layer.0.output.dense.weight"] == (768, 384)
    assert saturating_products(tmp_path / "m.onnx") == []


def test_seven_bit_symmetric_encoder_holds_only_products_exact_in_u8_x_s8(tmp_path):
    """7-bit weights: every product keeps s8 weights in the portable file (no pair of u8 x s8 products can
    pass int16), so AVX2 without VNNI runs the same fast u8 x s8 kernel as VNNI, exactly."""
    from wattless.kernels import integer_products

    wl, model = _one_layer_encoder(PER_TOKEN_SYMMETRIC.model_copy(update={"smooth_skip": ["*layer.?.output.dense"],
                                                                          "weight_bits": 7}))
    report = export_model(model, wl, tmp_path / "m.onnx")
    assert report.parity.passed
    products = integer_products(onnx.load(str(tmp_path / "m.onnx")))
    assert len(products) == 4 and all(p.weight_form == "s8" and p.exact_everywhere for p in products)
    assert saturating_products(tmp_path / "m.onnx") == []


def test_lean_recipe_trains_prunes_and_exports_a_smaller_ffn(tmp_path):
    """recipes/minilm-lean.toml as shipped (distilled FFN-neuron pruning on the fast quantizer), two steps on a
    one-layer MiniLM: the run's FFN keeps the recipe's share of neurons, and the export cuts the rest out of both
    FFN products and keeps the fast form (one fused Q, K, V product, no zero-point correction)."""
    import dataclasses

    from wattless.optimize import optimize
    from wattless.recipe import load_recipe

    from tests.serve.tiny_encoder import workload

    wl = workload()
    wl = dataclasses.replace(wl, train=wl.train.take(slice(0, 32)))
    shipped = load_recipe(Path(__file__).parents[1] / "recipes" / "minilm-lean.toml")
    recipe = shipped.model_copy(update={"train": shipped.train.model_copy(update={"epochs": 1, "batch_size": 16})})
    metrics = optimize(wl, recipe, tmp_path / "run", progress=False, baselines=False, energy_inputs=2,
                       cache=tmp_path / "cache")
    kept = round(1536 * (1 - shipped.prune[0].sparsity))
    assert metrics["techniques"]["prune"]["units"] == {"encoder.layer.0.intermediate.dense": {"kept": kept, "total": 1536}}
    report = export_run(tmp_path / "run", tmp_path / "m.onnx", workload=wl)
    assert report.parity.passed
    assert report.removed == {"encoder.layer.0.intermediate": {"kept": kept, "total": 1536}}
    shapes = _initializers(tmp_path / "m.onnx")
    assert shapes["encoder.layer.0.intermediate.dense.weight"] == (384, kept)
    assert shapes["encoder.layer.0.output.dense.weight"] == (kept, 384)
    ops = [n.op_type for n in onnx.load(str(tmp_path / "m.onnx")).graph.node]
    assert ops.count("MatMulIntegerToFloat") == 4 and "MatMulInteger" not in ops


def test_dynamic_recipe_trains_and_exports_one_dynamic_quantize_matmul_per_product(tmp_path):
    """recipes/minilm-dynamic.toml as shipped, one epoch of two steps on a one-layer MiniLM: the run exports with
    parity, every product one DynamicQuantizeMatMul, and the portable file's weights right on every CPU."""
    import dataclasses

    from wattless.optimize import optimize
    from wattless.recipe import load_recipe

    from tests.serve.tiny_encoder import workload

    wl = workload()
    wl = dataclasses.replace(wl, train=wl.train.take(slice(0, 32)))
    shipped = load_recipe(Path(__file__).parents[1] / "recipes" / "minilm-dynamic.toml")
    assert shipped.quantize.act_granularity == "dynamic"
    recipe = shipped.model_copy(update={"train": shipped.train.model_copy(update={"epochs": 1, "batch_size": 16})})
    metrics = optimize(wl, recipe, tmp_path / "run", progress=False, baselines=False, energy_inputs=2,
                       cache=tmp_path / "cache")
    assert {v["act_granularity"] for v in metrics["techniques"]["quantize"]["layers"].values()} == {"dynamic"}
    report = export_run(tmp_path / "run", tmp_path / "m.onnx", workload=wl)
    assert report.parity.passed
    ops = [n.op_type for n in onnx.load(str(tmp_path / "m.onnx")).graph.node]
    assert ops.count("DynamicQuantizeMatMul") == 3 and ops.count("QAttention") == 1
    assert not {"MatMulIntegerToFloat", "QuantizeLinear"} & set(ops)
    assert saturating_products(tmp_path / "m.onnx") == []
