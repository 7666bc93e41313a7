"""Quantization-aware training: integer grids, accuracy, gradients, per-layer bits, energy, composition."""

from __future__ import annotations


import numpy as np
import pytest
import torch
from pydantic import ValidationError
from torch import nn
from torch.nn.utils import parametrize

from wattless.energy import count, estimate, resolve_target
from wattless.techniques.base import ApplyContext, apply_
from wattless.techniques.quantize import (
    LayerBits, QuantConfig, QuantizeError, QuantLinear, act_scale, integer_weights, ptq_int8_,
)


def quantize(model: nn.Module, x, **config):
    return apply_(model, QuantConfig(**config), ApplyContext(example_input=x))


def mlp() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(32, 64), nn.ReLU(), nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 8))


class ConvNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 8, 3, padding=1))
        self.classifier = nn.Linear(8 * 8 * 8, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # x: (B, 3, 8, 8)
        return self.classifier(torch.relu(self.features(x)).flatten(1))


def rel_err(y: torch.Tensor, ref: torch.Tensor) -> float:
    return float((y - ref).detach().norm() / ref.detach().norm())


def used_weight(layer: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """The weight a quantized layer actually multiplies with on input x."""
    seen = []
    op = layer._float_op
    layer._float_op = lambda inp, w: seen.append(w.detach()) or op(inp, w)
    try:
        with torch.no_grad():
            layer(x)
    finally:
        del layer._float_op
    return seen[0]


LAYERS = [
    (lambda: nn.Linear(16, 6), (4, 16)),
    (lambda: nn.Conv1d(4, 6, 3), (2, 4, 10)),
    (lambda: nn.Conv2d(4, 6, 3), (2, 4, 6, 6)),
]


# --- the integer grid ----------------------------------------------------------------------------------

@pytest.mark.parametrize("bits", [2, 4, 8])
@pytest.mark.parametrize("make, shape", LAYERS, ids=["linear", "conv1d", "conv2d"])
@pytest.mark.parametrize("learn_step", [True, False])
def test_int_k_weights_take_at_most_2_to_the_k_values_per_channel(bits, make, shape, learn_step):
    torch.manual_seed(0)
    layer, x = make(), torch.randn(shape)
    quantize(layer, x, weight_bits=bits, act_bits=bits, learn_step=learn_step)
    w = used_weight(layer, x)
    for row in w.flatten(1):
        assert row.unique().numel() <= 2**bits
    codes, scale = integer_weights(layer)
    assert codes.dtype == torch.int8 and scale.shape == (w.shape[0],)
    assert int(codes.min()) >= -(2 ** (bits - 1)) and int(codes.max()) <= 2 ** (bits - 1) - 1


@pytest.mark.parametrize("make, shape", LAYERS, ids=["linear", "conv1d", "conv2d"])
@pytest.mark.parametrize("per_channel", [True, False])
def test_integer_weights_times_scale_is_the_weight_the_layer_uses(make, shape, per_channel):
    torch.manual_seed(0)
    layer, x = make(), torch.randn(shape)
    quantize(layer, x, weight_bits=4, per_channel=per_channel)
    codes, scale = integer_weights(layer)
    expected = codes.float() * scale.reshape(-1, *[1] * (codes.dim() - 1))
    assert torch.equal(expected, used_weight(layer, x))


def test_act_scale_is_unsigned_after_a_relu_and_signed_otherwise():
    model = mlp()
    quantize(model, torch.randn(8, 32), act_bits=8)
    scale, zero_point, signed = act_scale(model[0])
    assert signed and zero_point == 0 and scale > 0
    assert act_scale(model[2])[2] is False
    with pytest.raises(QuantizeError, match="not a quantized layer"):
        integer_weights(nn.Linear(2, 2))


# --- accuracy and training -----------------------------------------------------------------------------

def test_8_bit_outputs_stay_close_to_float_and_2_bit_ones_do_not():
    x = torch.randn(64, 32)
    ref = mlp()(x)
    errors = {}
    for bits in (8, 2):
        model = mlp()
        quantize(model, x, weight_bits=bits, act_bits=bits)
        errors[bits] = rel_err(model(x), ref)
    assert errors[8] < 0.03
    assert errors[2] > 10 * errors[8]


def test_gradients_reach_weights_and_steps_and_training_lowers_the_loss():
    torch.manual_seed(1)
    x = torch.randn(128, 32)
    y = torch.sin(x[:, :8])  # a toy regression
    model = mlp()
    quantize(model, x, weight_bits=4, act_bits=4)
    loss_fn = nn.MSELoss()
    loss = loss_fn(model(x), y)
    loss.backward()
    for layer in (model[0], model[2], model[4]):
        for p in (layer.weight, layer.weight_step, layer.act_step):
            assert p.grad is not None and p.grad.abs().sum() > 0
    first = loss.item()
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    for _ in range(30):
        opt.zero_grad()
        loss = loss_fn(model(x), y)
        loss.backward()
        opt.step()
    assert loss.item() < 0.7 * first


def test_without_learned_steps_the_act_step_tracks_a_running_max_until_finish():
    model = mlp()
    handle = quantize(model, torch.randn(8, 32), learn_step=False)
    assert model[0].weight_step is None and not isinstance(model[0].act_step, nn.Parameter)
    before = model[0].act_step.clone()
    model(10 * torch.randn(8, 32))
    assert model[0].act_step > before
    handle.finish(model, None)
    frozen = model[0].act_step.clone()
    model(100 * torch.randn(8, 32))
    assert torch.equal(model[0].act_step, frozen)


# --- configuration ---------------------------------------------------------------------------------------

def test_overrides_and_skip_apply_per_layer():
    model, x = ConvNet(), torch.randn(2, 3, 8, 8)
    config = {"weight_bits": 8, "act_bits": 8, "skip": ["features.2"],
              "overrides": {"features.*": LayerBits(weight_bits=4), "classifier": LayerBits(act_bits=None)}}
    handle = quantize(model, x, **config)
    report = handle.report(model)
    assert report["layers"] == {
        "features.0": {"weight_bits": 4, "act_bits": 8, "act_granularity": "tensor", "act_grid": "asymmetric",
                       "smoothed": False},
        "classifier": {"weight_bits": 8, "act_bits": None, "act_granularity": "tensor", "act_grid": "asymmetric",
                       "smoothed": False},
    }
    assert report["float_layers"] == ["features.2"]
    assert type(model.features[2]) is nn.Conv2d
    assert not hasattr(model.classifier, "wattless_act_precision")
    assert 4 < report["mean_weight_bits"] < 32


@pytest.mark.parametrize("bad, field", [
    ({"weight_bits": 9}, "weight_bits"), ({"weight_bits": 1}, "weight_bits"), ({"act_bits": 12}, "act_bits"),
    ({"bits": 4}, "bits"), ({"overrides": {"fc": {"weight_bits": 16}}}, "weight_bits"),
    ({"overrides": {"fc": {"wbits": 4}}}, "wbits"),
])
def test_bad_configs_raise_naming_the_field(bad, field):
    with pytest.raises(ValidationError, match=field):
        QuantConfig(**bad)


def test_a_glob_that_matches_no_layer_is_an_error_that_lists_layer_names():
    with pytest.raises(QuantizeError, match="'*.fc'.*features.0"):
        quantize(ConvNet(), torch.randn(2, 3, 8, 8), skip=["*.fc"])


def test_quantizing_twice_is_an_error():
    model = mlp()
    quantize(model, torch.randn(2, 32))
    with pytest.raises(QuantizeError, match="quantized already"):
        quantize(model, torch.randn(2, 32))


# --- what the energy core sees ------------------------------------------------------------------------

def test_energy_core_reads_the_precision_and_energy_falls_with_bits():
    x = torch.randn(4, 32)
    target = resolve_target("mobile-npu")
    energy_j = {"fp32": estimate(count(mlp(), x), target).energy_j}
    for bits in (8, 4):
        model = mlp()
        quantize(model, x, weight_bits=bits, act_bits=8)
        records = {r["name"]: r for r in count(model, x).mean_records()}
        assert records["0"]["weight_precision"] == f"int{bits}"
        assert records["0"]["act_precision"] == "int8"
        energy_j[f"int{bits}"] = estimate(count(model, x), target).energy_j
    assert energy_j["fp32"] > energy_j["int8"] > energy_j["int4"]


# --- composition with a pruning mask ----------------------------------------------------------------

class Mask(nn.Module):
    def __init__(self, mask: torch.Tensor) -> None:
        super().__init__()
        self.register_buffer("mask", mask)

    def forward(self, w: torch.Tensor) -> torch.Tensor:
        return w * self.mask


def half_mask(layer: nn.Linear) -> torch.Tensor:
    mask = (torch.rand_like(layer.weight) > 0.5).float()
    mask[0] = 0  # one whole output channel pruned: its step must stay positive
    return mask


@pytest.mark.parametrize("mask_first", [True, False], ids=["mask-then-quantize", "quantize-then-mask"])
def test_pruned_zeros_survive_quantization_in_either_order(mask_first):
    torch.manual_seed(0)
    layer, x = nn.Linear(16, 8), torch.randn(4, 16)
    mask = half_mask(layer)
    if mask_first:
        parametrize.register_parametrization(layer, "weight", Mask(mask))
    quantize(layer, x, weight_bits=4)
    if not mask_first:
        parametrize.register_parametrization(layer, "weight", Mask(mask))
    assert isinstance(layer, QuantLinear) and parametrize.is_parametrized(layer, "weight")
    w = used_weight(layer, x)
    assert torch.all(w[mask == 0] == 0)
    assert w[mask == 1].ne(0).any() and torch.isfinite(layer(x)).all()
    codes, _ = integer_weights(layer)
    assert torch.all(codes[mask == 0] == 0)
    parametrize.remove_parametrizations(layer, "weight")
    assert type(layer) is QuantLinear  # removing the mask keeps the layer quantized
    assert torch.all(used_weight(layer, x)[mask == 0] == 0)


# --- models, baselines, checkpoints ----------------------------------------------------------------

def test_a_tiny_bert_runs_with_every_linear_at_int8():
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(0)
    config = transformers.BertConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                                     intermediate_size=64, vocab_size=100)
    model = transformers.BertModel(config).eval()
    inputs = {"input_ids": torch.randint(0, 100, (2, 12))}
    ref = model(**inputs).last_hidden_state
    handle = quantize(model, inputs)
    out = model(**inputs).last_hidden_state
    layers = handle.report(model)["layers"]
    assert len(layers) == 2 * 6 + 1  # q, k, v, attention out, intermediate, output per layer; pooler
    assert all(v["weight_bits"] == v["act_bits"] == 8 for v in layers.values())
    assert rel_err(out, ref) < 0.05


@pytest.mark.parametrize("act_range", ["max", "percentile"])
def test_ptq_int8_stays_close_to_float_without_training(act_range):
    x = torch.randn(64, 32)
    ref = mlp()(x)
    model = mlp()
    handle = ptq_int8_(model, x, act_range=act_range)
    assert rel_err(model(x), ref) < 0.03
    assert set(handle.report(model)["layers"]) == {"0", "2", "4"}
    assert not any(p.requires_grad for n, p in model.named_parameters() if "step" in n)


def test_state_dicts_round_trip_through_safetensors_and_float_checkpoints_load_strictly(tmp_path):
    safetensors = pytest.importorskip("safetensors.torch")
    x = torch.randn(8, 32)
    model = mlp()
    quantize(model, x, weight_bits=4)
    assert {k for k in model.state_dict() if k.startswith("0.")} == {
        "0.weight", "0.bias", "0.weight_step", "0.act_step", "0.act_signed"}
    safetensors.save_file(model.state_dict(), tmp_path / "q.safetensors")
    fresh = mlp()
    quantize(fresh, x * 3, weight_bits=4)  # different steps, then overwritten by the checkpoint
    fresh.load_state_dict(safetensors.load_file(tmp_path / "q.safetensors"))
    assert torch.equal(fresh(x), model(x))

    reference = mlp()
    quantize(reference, x)
    quantized = mlp()
    quantize(quantized, 3 * x)
    with torch.no_grad():
        for p in quantized.parameters():
            p.add_(1.0)  # steps and weights both off
    quantized.load_state_dict(mlp().state_dict())  # strict; the missing steps re-initialise on next forward
    assert torch.equal(quantized(x), reference(x))


# --- per-token activations, smoothing, weight-step start ----------------------------------------------------

def outlier_mlp() -> tuple[nn.Module, torch.Tensor]:
    """Two layers reading one input whose channel 3 is 50x the others (the outliers SmoothQuant moves)."""
    torch.manual_seed(0)

    class Fork(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.a, self.b, self.out = nn.Linear(16, 16), nn.Linear(16, 16), nn.Linear(32, 4)

        def forward(self, x: torch.Tensor) -> torch.Tensor:  # x: (B, T, 16)
            return self.out(torch.cat([self.a(x), self.b(x)], -1))

    x = torch.randn(8, 5, 16)
    x[..., 3] *= 50
    return Fork(), x


def test_per_token_codes_fit_k_bits_per_row_and_zero_stays_exact():
    layer = nn.Linear(16, 6)
    quantize(layer, torch.randn(4, 16), act_bits=4, act_granularity="token")
    x = torch.randn(3, 7, 16) * torch.linspace(0.1, 10, 7)[:, None]  # rows of very different scales
    x[0, 0, :4] = 0
    q = layer._quantize_input(x)
    assert torch.equal(q[0, 0, :4], torch.zeros(4))
    for row in q.reshape(-1, 16):
        assert row.unique().numel() <= 2**4
    assert not hasattr(layer, "act_step")  # no per-tensor step: each row sets its own at run time
    assert float((q - x).abs().amax(-1).div(x.abs().amax(-1)).max()) < 0.15


def test_symmetric_per_token_grid_is_each_rows_max_with_no_zero_point():
    layer = nn.Linear(16, 6)
    quantize(layer, torch.randn(4, 16), act_bits=8, act_granularity="token", act_grid="symmetric")
    x = torch.randn(3, 7, 16) * torch.linspace(0.1, 10, 7)[:, None]
    x[0, 0, :4] = 0
    q = layer._quantize_input(x)
    step = x.abs().amax(-1, keepdim=True) / 127
    codes = q / step
    assert torch.allclose(codes, codes.round(), atol=1e-3) and codes.abs().max() <= 127 + 1e-3
    assert torch.equal(q[0, 0, :4], torch.zeros(4))  # zero is a code: no zero point
    assert torch.allclose(codes.abs().amax(-1), torch.full((3, 7), 127.0))  # each row's max is the top code
    assert "per token, symmetric" in repr(layer)


def test_symmetric_grid_needs_per_token_activations():
    with pytest.raises(ValidationError, match="act_granularity"):
        QuantConfig(act_grid="symmetric")


def test_per_token_beats_per_tensor_on_rows_of_different_scales():
    torch.manual_seed(0)
    model, x = mlp(), torch.randn(64, 32) * torch.logspace(-2, 1, 64)[:, None]
    ref = model(x)
    quantize(model, x)
    err_tensor = rel_err(model(x), ref)
    per_token = mlp()
    quantize(per_token, x, act_granularity="token")
    assert rel_err(per_token(x), ref) < err_tensor / 2


def unsmoothed_err(x: torch.Tensor, ref: torch.Tensor, granularity: str) -> float:
    """The relative error of outlier_mlp quantized with no smoothing: what smoothing must beat."""
    plain, _ = outlier_mlp()
    quantize(plain, x, act_granularity=granularity)
    return rel_err(plain(x), ref)


def test_smoothing_moves_outliers_into_weights_and_keeps_the_float_function():
    model, x = outlier_mlp()
    ref = model(x)
    quantize(model, x, act_granularity="token", smooth=0.5)
    a, b = model.a, model.b
    assert torch.equal(a.smooth_factor, b.smooth_factor)  # one input, one factor (folds into the op before)
    assert int(a.smooth_factor.argmax()) == 3
    folded = (x / a.smooth_factor) @ (a.weight * a.smooth_factor).T + a.bias
    assert torch.allclose(folded, x @ a.weight.T + a.bias, atol=1e-3)
    assert rel_err(model(x), ref) < unsmoothed_err(x, ref, "token")


def test_smoothed_integer_weights_are_the_weights_the_layer_rounds():
    model, x = outlier_mlp()
    quantize(model, x, act_granularity="token", smooth=0.5, smooth_skip=["out"])
    assert model.out.smooth_factor is None
    codes, scale = integer_weights(model.a)
    assert torch.equal(codes.float() * scale[:, None], used_weight(model.a, x))
    with pytest.raises(QuantizeError, match="per token"):
        act_scale(model.a)


def test_max_weight_start_never_clips_and_lsq_start_may():
    layer = nn.Linear(256, 4)
    with torch.no_grad():
        layer.weight.normal_()
        layer.weight[:, 0] = 40  # a heavy tail
    quantize(layer, torch.randn(2, 256), weight_step_init="max")
    qp = 127
    assert torch.allclose(layer.weight_step * qp, layer.weight.abs().amax(1))
    lsq = nn.Linear(256, 4)
    lsq.load_state_dict({"weight": layer.weight.detach(), "bias": layer.bias.detach()})
    quantize(lsq, torch.randn(2, 256))
    assert bool((lsq.weight_step * qp < lsq.weight.abs().amax(1)).all())


def test_smoothed_per_token_state_round_trips(tmp_path):
    from wattless.train import load_state, save_state

    model, x = outlier_mlp()
    quantize(model, x, act_granularity="token", smooth=0.5)
    save_state(model, tmp_path / "m.safetensors")
    again, _ = outlier_mlp()
    quantize(again, x * 3, act_granularity="token", smooth=0.5)  # other statistics, replaced by the load
    load_state(again, tmp_path / "m.safetensors")
    assert torch.equal(again.a.smooth_factor, model.a.smooth_factor)
    assert torch.equal(again(x), model(x))


def test_outlier_smoothing_divides_only_the_outlier_channels_down_to_the_quantile():
    model, x = outlier_mlp()
    ref = model(x)
    quantize(model, x, act_granularity="dynamic", smooth_outliers=["a", "b"], outlier_quantile=0.75)
    a = model.a
    assert model.out.smooth_factor is None  # neither smooth nor smooth_outliers names it
    x_max = x.abs().reshape(-1, 16).amax(0)
    cap = x_max.quantile(0.75)
    assert torch.allclose(a.smooth_factor, (x_max / cap).clamp_min(1))
    assert int((a.smooth_factor > 1).sum()) == 4 and float(a.smooth_factor[3]) > 30  # the 50x channel, most of all
    assert torch.equal(a.smooth_factor, model.b.smooth_factor)
    assert rel_err(model(x), ref) < unsmoothed_err(x, ref, "dynamic")


def test_outlier_smoothing_caps_what_smoothquant_leaves_and_refuses_a_split_group():
    model, x = outlier_mlp()
    quantize(model, x, act_granularity="dynamic", smooth=0.5, smooth_skip=["out"], smooth_outliers=["a", "b", "out"])
    assert float(model.out.smooth_factor.min()) == 1.0  # in smooth_skip: capped from 1, no channel scaled up
    sq, _ = outlier_mlp()
    quantize(sq, x, act_granularity="dynamic", smooth=0.5)
    left = x.abs().reshape(-1, 16).amax(0) / sq.a.smooth_factor  # what SmoothQuant leaves of each channel
    ratio = model.a.smooth_factor / sq.a.smooth_factor
    assert torch.allclose(ratio, (left / left.quantile(0.9)).clamp_min(1), rtol=1e-5)
    assert float((x.abs().reshape(-1, 16).amax(0) / model.a.smooth_factor).max()) <= float(left.quantile(0.9)) * 1.0001
    split, _ = outlier_mlp()
    with pytest.raises(QuantizeError, match="read one tensor"):
        quantize(split, x, act_granularity="dynamic", smooth=0.5, smooth_outliers=["a"])
    with pytest.raises(QuantizeError, match="smooth_outliers glob 'fc9'"):
        quantize(outlier_mlp()[0], x, smooth_outliers=["fc9"])
    with pytest.raises(ValidationError, match="outlier_quantile"):
        QuantConfig(outlier_quantile=1.0)


def test_smooth_skip_without_smooth_and_a_bad_granularity_are_errors():
    with pytest.raises(ValidationError, match="smooth_skip"):
        QuantConfig(smooth_skip=["a"])
    with pytest.raises(ValidationError, match="act_granularity"):
        QuantConfig(act_granularity="channel")
    with pytest.raises(ValidationError, match="smooth"):
        QuantConfig(smooth=1.5)


def test_an_override_written_out_keeps_only_the_bits_it_gives():
    from wattless.recipe import parse_recipe

    recipe = parse_recipe({"quantize": {"weight_bits": 4, "act_bits": 4, "overrides": {"fc": {"weight_bits": 2}}}})
    again = parse_recipe(recipe.to_dict())
    assert recipe.to_dict()["quantize"]["overrides"] == {"fc": {"weight_bits": 2}}
    from wattless.techniques.quantize import _layer_bits

    assert _layer_bits("fc", again.quantize) == (2, 4)  # act bits still from the config, not a default 8


@pytest.mark.parametrize("make, shape", [
    (lambda: nn.Linear(48, 16), (64, 48)),
    (lambda: nn.Linear(1024, 8), (8, 1024)),  # sums may pass 2^24 in float32: the float64 path
    (lambda: nn.Conv1d(8, 16, 5, padding=2), (4, 8, 30)),
    (lambda: nn.Conv2d(6, 8, 3, stride=2), (2, 6, 11, 11)),
], ids=["linear", "linear-wide", "conv1d", "conv2d"])
def test_evaluation_computes_the_integer_kernels_arithmetic_to_the_bit(make, shape):
    """In eval, a quantized layer's output is what ConvInteger / MatMulIntegerToFloat give: the int64 sum of
    code products times float32(step_x * step_w) plus the bias, bit for bit (training keeps the float path)."""
    torch.manual_seed(0)
    model = make()
    x = torch.randn(*shape) * 3
    quantize(model, x, weight_bits=8, act_bits=8)
    with torch.no_grad():
        model.train()(x)  # steps set from the first input
        train_y = model(x)
        y = model.eval()(x)
        s_w = model._weight_scale(model.weight)
        codes = model._weight_codes(model.weight, s_w).to(torch.int64)
        qn, qp = model._act_range()
        s_x = model._act_step_value(x)
        qx = torch.round((x / s_x).clamp(qn, qp)).to(torch.int64)
        if isinstance(model, nn.Linear):
            acc, shape_c = qx @ codes.T, (-1,)
        else:
            conv = nn.functional.conv1d if isinstance(model, nn.Conv1d) else nn.functional.conv2d
            acc = conv(qx.double(), codes.double(), None, model.stride, model.padding).round().to(torch.int64)
            shape_c = (-1, *[1] * (acc.dim() - 2))
        scale = (s_x.double() * s_w.reshape(-1).double()).float().reshape(shape_c)
        ref = acc.to(torch.float32) * scale + model.bias.reshape(shape_c)
    assert torch.equal(y, ref)
    assert torch.allclose(y, train_y, rtol=1e-4, atol=1e-4)  # the same values, summed in another order


def test_dynamic_grid_is_onnx_runtimes_dynamic_quantize_linear_to_the_code():
    """act_granularity = "dynamic": the whole input on one uint8 grid from its own min and max, the codes
    ONNX Runtime's DynamicQuantizeLinear writes (compared code by code on a run of the real operator)."""
    import onnxruntime as ort
    from onnx import TensorProto, helper

    layer = nn.Linear(16, 6)
    quantize(layer, torch.randn(4, 16), act_bits=8, act_granularity="dynamic")
    assert not hasattr(layer, "act_step") and "dynamic per call" in repr(layer)
    node = helper.make_node("DynamicQuantizeLinear", ["x"], ["q", "s", "z"])
    graph = helper.make_graph([node], "dql", [helper.make_tensor_value_info("x", TensorProto.FLOAT, None)],
                              [helper.make_tensor_value_info(n, t, None) for n, t in
                               (("q", TensorProto.UINT8), ("s", TensorProto.FLOAT), ("z", TensorProto.UINT8))])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    torch.manual_seed(0)
    for x in (torch.randn(3, 7, 16) * 3, torch.rand(2, 16) + 0.5, -torch.rand(5, 16), torch.zeros(2, 16)):
        q, s, z = session.run(None, {"x": x.numpy()})
        expected = (torch.from_numpy(q.astype(np.float32)) - float(z)) * float(s)
        assert torch.equal(layer._quantize_input(x), expected)


def test_dynamic_grid_takes_eight_bits_only():
    with pytest.raises(ValidationError, match="act_bits = 8"):
        QuantConfig(act_granularity="dynamic", act_bits=4)
