"""Pruning: N:M layout the energy core recognises, magnitude sparsity and its schedule, structured units that
carry nothing, masks that survive training and saving, and configs rejected before training."""

from __future__ import annotations

import pytest
import torch
from pydantic import ValidationError
from safetensors.torch import load_file, save_file
from torch import nn

from wattless.energy import count
from wattless.techniques.base import ApplyContext, apply_
from wattless.techniques.prune import (
    Mask, PruneConfig, PruneSchedule, bake_masks, check_prunable, cubic_sparsity,
)

CONTEXT = ApplyContext(example_input=None)


def pruned(model: nn.Module, **config) -> tuple[nn.Module, object]:
    handle = apply_(model, PruneConfig(**config), CONTEXT)
    handle.finish(model, CONTEXT)
    return model, handle


def zero_fraction(t: torch.Tensor) -> float:
    return float((t == 0).sum()) / t.numel()


class CNN(nn.Module):
    """Conv1d -> BN -> ReLU -> Conv1d -> ReLU -> Flatten -> Linear, on (B, 3, L)."""

    def __init__(self, c1: int = 8, c2: int = 8, length: int = 10, traceable: bool = True) -> None:
        super().__init__()
        self.traceable = traceable
        self.body = nn.Sequential(
            nn.Conv1d(3, c1, 3, padding=1), nn.BatchNorm1d(c1), nn.ReLU(),
            nn.Conv1d(c1, c2, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(c2 * length, 5),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.traceable and bool(x.abs().sum() < 0):  # control flow on values: torch.fx cannot trace
            return x
        return self.body(x)


def random_bn(bn: nn.BatchNorm1d) -> None:
    with torch.no_grad():
        bn.running_mean.normal_()
        bn.running_var.uniform_(0.5, 2.0)
        bn.weight.normal_()
        bn.bias.normal_()


def tiny_bert(**extra):
    transformers = pytest.importorskip("transformers")
    transformers.logging.set_verbosity_error()
    torch.manual_seed(0)
    config = transformers.BertConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                                     intermediate_size=64, vocab_size=100, **extra)
    return transformers.BertModel(config).eval()


def inputs_of(module: nn.Module, model: nn.Module, x) -> torch.Tensor:
    seen = []
    hook = module.register_forward_pre_hook(lambda _m, args: seen.append(args[0]))
    with torch.no_grad():
        model(x) if isinstance(x, torch.Tensor) else model(**x)
    hook.remove()
    return seen[0]


# --- N:M ---------------------------------------------------------------------------------------------

def test_2_4_keeps_two_of_every_four_along_the_input_and_the_energy_core_sees_2_4():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(8, 16, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(16 * 4 * 4, 12))
    pruned(model, pattern="n:m")
    conv, linear = model[0].weight, model[3].weight
    assert ((linear.reshape(12, -1, 4) != 0).sum(-1) == 2).all()  # (O, I/4, 4)
    assert ((conv.permute(0, 2, 3, 1).reshape(-1, 2, 4) != 0).sum(-1) == 2).all()  # (O, kh, kw, I) in fours
    records = {r["name"]: r for r in count(model, torch.randn(1, 8, 4, 4)).mean_records()}
    assert records["0"]["weight_pattern"] == "2:4"
    assert records["3"]["weight_pattern"] == "2:4"


def test_n_m_groups_conv1d_along_input_channels_and_ramps_per_group():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv1d(8, 6, 3))
    handle = apply_(model, PruneConfig(pattern="n:m", n=1, m=4, schedule=PruneSchedule(end=0.5)), CONTEXT)
    groups = lambda: (model[0].weight.movedim(1, -1).reshape(-1, 4) != 0).sum(-1)  # noqa: E731
    handle.on_step(0, 10)
    assert (groups() == 4).all()
    handle.on_step(1, 10)  # 1 - (1 - 0.2)^3 = 0.488 of the way: one of the three dropped per group
    assert (groups() == 3).all()
    handle.finish(model, CONTEXT)
    assert (groups() == 1).all()
    assert handle.report(model)["pattern"] == "1:4"


# --- unstructured and the schedule -------------------------------------------------------------------

def mlp() -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 32), nn.ReLU(), nn.Linear(32, 4))


def test_unstructured_layer_scope_reaches_the_sparsity_in_every_layer():
    model, handle = pruned(mlp(), pattern="unstructured", sparsity=0.7)
    for layer in (model[0], model[2], model[4]):
        assert zero_fraction(layer.weight) == pytest.approx(0.7, abs=0.5 / layer.weight.numel())
    assert handle.report(model)["sparsity"] == pytest.approx(0.7, abs=0.01)


def test_unstructured_global_scope_reaches_the_sparsity_overall_and_spares_large_layers():
    model = mlp()
    with torch.no_grad():
        model[2].weight.mul_(100)
    model, handle = pruned(model, pattern="unstructured", sparsity=0.3, scope="global")
    weights = [model[i].weight for i in (0, 2, 4)]
    zeros = sum(int((w == 0).sum()) for w in weights)
    assert zeros == round(0.3 * sum(w.numel() for w in weights))
    assert zero_fraction(model[2].weight) < 0.05 and zero_fraction(model[0].weight) > 0.5


def test_cubic_schedule_ramps_from_start_to_end():
    schedule = PruneSchedule(start=0.2, end=0.6)
    assert cubic_sparsity(0.8, 10, 100, schedule) == 0.0
    assert cubic_sparsity(0.8, 20, 100, schedule) == 0.0
    assert cubic_sparsity(0.8, 40, 100, schedule) == pytest.approx(0.8 * (1 - 0.5**3))
    assert cubic_sparsity(0.8, 60, 100, schedule) == pytest.approx(0.8)
    assert cubic_sparsity(0.8, 95, 100, schedule) == pytest.approx(0.8)


def test_handle_follows_the_schedule_and_every():
    model = mlp()
    schedule = PruneSchedule(start=0.2, end=0.6, every=5)
    config = PruneConfig(pattern="unstructured", sparsity=0.8, schedule=schedule)
    handle = apply_(model, config, CONTEXT)
    seen = {}
    for step in range(100):
        handle.on_step(step, 100)
        seen[step] = zero_fraction(model[2].weight)
    assert seen[19] == 0.0
    assert seen[40] == pytest.approx(0.8 * 0.875, abs=1e-3)
    assert seen[42] == seen[40]  # masks move only every 5 steps
    assert seen[60] == pytest.approx(0.8, abs=1e-3)
    assert all(seen[a] <= seen[b] for a, b in zip(range(99), range(1, 100)))


# --- structured --------------------------------------------------------------------------------------

def smaller_cnn(model: CNN, keep1: torch.Tensor, keep2: torch.Tensor, length: int) -> CNN:
    """The same network with the removed channels deleted instead of zeroed."""
    small = CNN(int(keep1.sum()), int(keep2.sum()), length).eval()
    conv1, bn, _, conv2, _, _, fc = model.body
    s_conv1, s_bn, _, s_conv2, _, _, s_fc = small.body
    cols = keep2.repeat_interleave(length)  # the flatten block of each conv2 channel
    with torch.no_grad():
        s_conv1.weight.copy_(conv1.weight[keep1]), s_conv1.bias.copy_(conv1.bias[keep1])
        for name in ("weight", "bias", "running_mean", "running_var"):
            getattr(s_bn, name).copy_(getattr(bn, name)[keep1])
        s_conv2.weight.copy_(conv2.weight[keep2][:, keep1]), s_conv2.bias.copy_(conv2.bias[keep2])
        s_fc.weight.copy_(fc.weight[:, cols]), s_fc.bias.copy_(fc.bias)
    return small


@pytest.mark.parametrize("traceable", [True, False], ids=["whole-model", "submodules"])
def test_channel_pruning_zeroes_whole_channels_that_carry_nothing(traceable):
    torch.manual_seed(0)
    length = 10
    model = CNN(length=length, traceable=traceable).eval()
    random_bn(model.body[1])
    model, handle = pruned(model, pattern="structured", sparsity=0.5)
    conv1, bn, _, conv2, _, _, fc = model.body
    keep1, keep2 = conv1.wattless_kept_out, conv2.wattless_kept_out
    assert int(keep1.sum()) == int(keep2.sum()) == 4
    assert (conv1.weight[~keep1] == 0).all() and (conv1.bias[~keep1] == 0).all()
    assert (bn.weight[~keep1] == 0).all() and (bn.bias[~keep1] == 0).all()
    assert (conv2.weight[:, ~keep1] == 0).all() and (conv2.weight[:, keep1][keep2] != 0).all()
    assert (conv2.weight[~keep2] == 0).all() and (conv2.bias[~keep2] == 0).all()
    fc_blocks = fc.weight.reshape(5, 8, length)  # (out, conv2 channel, position): the flatten block
    assert (fc_blocks[:, ~keep2] == 0).all() and (fc_blocks[:, keep2] != 0).all()
    assert torch.equal(fc.wattless_kept_in, keep2.repeat_interleave(length))
    found_by = handle.report(model)["found_by"]
    assert found_by == ("torch.fx" if traceable else "torch.fx per block (1 traced)")

    x = torch.randn(4, 3, length)
    with torch.no_grad():
        torch.testing.assert_close(model(x), smaller_cnn(model, keep1, keep2, length)(x))


class DepthwiseCNN(nn.Module):
    """A DS-CNN block: the depthwise conv and its BN are channel-wise, so they lose the channel too."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(1, 8, 3, padding=1)
        self.bn1 = nn.BatchNorm2d(8)
        self.dw = nn.Conv2d(8, 8, 3, padding=1, groups=8)
        self.bn2 = nn.BatchNorm2d(8)
        self.pw = nn.Conv2d(8, 8, 1)
        self.fc = nn.Linear(8, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.relu(self.bn2(self.dw(torch.relu(self.bn1(self.stem(x))))))
        return self.fc(torch.flatten(nn.functional.adaptive_avg_pool2d(torch.relu(self.pw(h)), 1), 1))


def test_channel_pruning_through_depthwise_conv_leaves_exact_zeros_at_the_consumer():
    torch.manual_seed(0)
    model = DepthwiseCNN().eval()
    for bn in (model.bn1, model.bn2):
        random_bn(bn)
    model, handle = pruned(model, pattern="structured", sparsity=0.25)
    assert handle.report(model)["units"] == {"stem": {"kept": 6, "total": 8}, "pw": {"kept": 6, "total": 8}}
    removed = ~model.stem.wattless_kept_out
    assert (model.dw.weight[removed] == 0).all() and (model.bn2.bias[removed] == 0).all()
    reaching_pw = inputs_of(model.pw, model, torch.randn(2, 1, 6, 6))  # (B, 8, 6, 6)
    assert (reaching_pw[:, removed] == 0).all() and (reaching_pw[:, ~removed] != 0).any()


def test_neuron_pruning_zeroes_ffn_rows_and_columns_in_bert():
    model, handle = pruned(tiny_bert(), pattern="structured", granularity="neuron", sparsity=0.25)
    ids = {"input_ids": torch.randint(0, 100, (2, 7))}
    for layer in model.encoder.layer:
        up, down = layer.intermediate.dense, layer.output.dense
        gone = ~up.wattless_kept_out
        assert int(gone.sum()) == 16
        assert (up.weight[gone] == 0).all() and (up.bias[gone] == 0).all()
        assert (down.weight[:, gone] == 0).all()
        assert (down.weight[:, ~gone] != 0).all()
        assert (inputs_of(down, model, ids)[..., gone] == 0).all()  # GELU(0): the neuron carries nothing
    assert all(u == {"kept": 48, "total": 64} for u in handle.report(model)["units"].values())


def test_head_pruning_zeroes_query_key_value_rows_and_output_columns_in_bert():
    model, handle = pruned(tiny_bert(), pattern="structured", granularity="head", sparsity=0.5)
    ids = {"input_ids": torch.randint(0, 100, (2, 7))}
    for layer in model.encoder.layer:
        attn, out = layer.attention.self, layer.attention.output.dense
        heads = attn.query.wattless_kept_out.view(4, 8).all(1)  # (heads,) from (heads * head size,)
        assert int(heads.sum()) == 2
        gone = ~heads.repeat_interleave(8)
        for proj in (attn.query, attn.key, attn.value):
            assert (proj.weight[gone] == 0).all() and (proj.bias[gone] == 0).all()
            assert (proj.weight[~gone] != 0).all()
        assert (out.weight[:, gone] == 0).all() and (out.weight[:, ~gone] != 0).all()
        assert (inputs_of(out, model, ids)[..., gone] == 0).all()
    assert handle.report(model)["units"]["encoder.layer.0.attention.self"] == {"kept": 2, "total": 4}


def _quiet_but_large(model, granularity: str) -> torch.Tensor:
    """Give a quarter of layer 0's FFN neurons (or one of its 4 heads) large input weights and tiny output
    columns: magnitude keeps them, though they add next to nothing to the output. (units,) bool, True there."""
    layer = model.encoder.layer[0]
    if granularity == "neuron":
        producers, consumer, units, block = [layer.intermediate.dense], layer.output.dense, 64, 1
    else:
        attn = layer.attention.self
        producers, consumer, units, block = [attn.query, attn.key, attn.value], layer.attention.output.dense, 4, 8
    quiet = torch.arange(units) < units // 4
    rows = quiet.repeat_interleave(block)
    with torch.no_grad():
        for p in producers:
            p.weight[rows] *= 10
        consumer.weight[:, rows] *= 1e-4
    return quiet


def _kept(model, granularity: str) -> torch.Tensor:
    layer = model.encoder.layer[0]
    if granularity == "neuron":
        return layer.intermediate.dense.wattless_kept_out
    return layer.attention.self.query.wattless_kept_out.view(4, 8).all(1)


@pytest.mark.parametrize("granularity", ["neuron", "head"])
def test_activation_importance_drops_the_units_that_add_least_to_the_consumers_output(granularity):
    ids = {"input_ids": torch.randint(0, 100, (4, 9), generator=torch.Generator().manual_seed(0))}
    context = ApplyContext(example_input=ids)
    model = tiny_bert()
    quiet = _quiet_but_large(model, granularity)
    config = PruneConfig(pattern="structured", granularity=granularity, sparsity=0.25, importance="activation")
    apply_(model, config, context).finish(model, context)
    assert (_kept(model, granularity) == ~quiet).all()
    assert not model.encoder.layer[0].output.dense._forward_pre_hooks  # the statistics' hooks leave with finish
    magnitude = tiny_bert()
    _quiet_but_large(magnitude, granularity)
    pruned(magnitude, pattern="structured", granularity=granularity, sparsity=0.25)
    assert _kept(magnitude, granularity)[quiet].all()


def test_activation_statistics_follow_training_batches_and_survive_a_checkpoint():
    model = tiny_bert()
    ids = {"input_ids": torch.randint(0, 100, (2, 7), generator=torch.Generator().manual_seed(1))}
    handle = apply_(model, PruneConfig(pattern="structured", granularity="neuron", sparsity=0.5,
                                       importance="activation"), ApplyContext(example_input=ids))
    model.eval()
    model(**ids)
    assert handle.state()["input_mean_sq"] == {}  # eval forwards are not training batches
    model.train()
    model(**ids)
    state = handle.state()
    assert set(state["input_mean_sq"]) == {f"encoder.layer.{i}.output.dense" for i in range(2)}
    twin = apply_(tiny_bert(), PruneConfig(pattern="structured", granularity="neuron", sparsity=0.5,
                                           importance="activation"), ApplyContext(example_input=ids))
    twin.load_state(state)  # a resumed run ranks units on the statistics the interrupted one had gathered
    for h in (handle, twin):
        h.on_step(1, 2)
    assert all((twin._keeps[k] == handle._keeps[k]).all() for k in handle._keeps)


class FFN(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc1, self.fc2 = nn.Linear(16, 32), nn.Linear(32, 16)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.fc2(torch.relu(self.fc1(x)))


def test_two_prunings_compose_each_with_its_own_mask():
    torch.manual_seed(0)
    model, _ = pruned(FFN(), pattern="structured", granularity="neuron", sparsity=0.5)
    gone = ~model.fc1.wattless_kept_out
    model, _ = pruned(model, pattern="n:m")
    assert (model.fc2.weight[:, gone] == 0).all()  # 2:4 chose among the survivors, revived nothing
    assert ((model.fc2.weight.reshape(16, -1, 4) != 0).sum(-1) <= 2).all()
    assert len(model.fc2.parametrizations.weight) == 2


# --- masks in training and on disk -------------------------------------------------------------------

@pytest.mark.parametrize("config", [
    {"pattern": "unstructured", "sparsity": 0.5},
    {"pattern": "n:m"},
    {"pattern": "structured", "sparsity": 0.5},
], ids=["unstructured", "2:4", "channel"])
def test_masks_survive_training_with_momentum_and_weight_decay(config):
    model = mlp()
    first = model[0].weight
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=0.01)  # made before pruning
    model, _ = pruned(model, **config)
    assert model[0].parametrizations.weight.original is first  # the optimiser still holds the real weight
    zeros = [model[i].weight == 0 for i in (0, 2, 4)]
    before = model[0].weight.detach().clone()
    for _ in range(5):
        opt.zero_grad()
        model(torch.randn(8, 16)).pow(2).mean().backward()
        opt.step()
    for i, z in zip((0, 2, 4), zeros):
        assert (model[i].weight[z] == 0).all()
    assert not torch.equal(model[0].weight.detach(), before)


def test_pruned_model_round_trips_through_safetensors(tmp_path):
    config = {"pattern": "structured", "sparsity": 0.5}
    model, _ = pruned(CNN().eval(), **config)
    save_file(model.state_dict(), tmp_path / "pruned.safetensors")
    fresh = CNN().eval()
    apply_(fresh, PruneConfig(**config), CONTEXT)  # same parametrizations, then the saved masks
    fresh.load_state_dict(load_file(tmp_path / "pruned.safetensors"))
    assert torch.equal(fresh.body[3].wattless_kept_out, model.body[3].wattless_kept_out)
    x = torch.randn(2, 3, 10)
    with torch.no_grad():
        torch.testing.assert_close(fresh(x), model(x))
        baked = bake_masks(model)
        assert not any(isinstance(m, Mask) for m in baked.modules())
        assert "body.0.weight" in baked.state_dict()
        torch.testing.assert_close(baked(x), fresh(x))


# --- rejected before training ------------------------------------------------------------------------

def test_check_prunable_names_the_layer_whose_input_is_not_a_multiple_of_m():
    model = nn.Sequential(nn.Linear(8, 10), nn.ReLU(), nn.Linear(10, 4))
    with pytest.raises(ValueError, match=r"'2' \(Linear, input size 10\).*skip=\['2'\]"):
        check_prunable(model, PruneConfig(pattern="n:m", layers=["0", "2"]))  # named: each must fit
    check_prunable(model, PruneConfig(pattern="n:m", layers=["0", "2"], skip=["2"]))


def test_n_m_on_every_layer_leaves_the_layers_that_do_not_fit_dense_and_says_so():
    model = nn.Sequential(nn.Linear(3, 8), nn.ReLU(), nn.Linear(8, 4))  # '0' reads 3 inputs: no 2:4 groups
    handle = apply_(model, PruneConfig(pattern="n:m", schedule=PruneSchedule(end=0.0)), CONTEXT)
    handle.on_step(0, 0)
    report = handle.report(model)
    assert report["left_dense"] == {"0": "input size not a multiple of 4"}
    assert list(report["layers"]) == ["2"] and report["layers"]["2"]["sparsity"] == 0.5


@pytest.mark.parametrize("config, message", [
    ({"pattern": "structured", "sparsity": 0.5, "granularity": "head"}, "self-attention"),
    ({"pattern": "unstructured", "sparsity": 0.5, "layers": ["encoder.*"]}, "layers glob 'encoder.*'"),
    ({"pattern": "unstructured", "sparsity": 0.5, "skip": ["*"]}, "leaves nothing to prune"),
])
def test_check_prunable_rejects_configs_that_do_not_fit(config, message):
    with pytest.raises(ValueError, match=message):
        check_prunable(CNN(), PruneConfig(**config))


@pytest.mark.parametrize("config, field", [
    ({"pattern": "unstructured", "sparsity": 0.5, "sparsty": 0.3}, "sparsty"),
    ({"pattern": "unstructured", "sparsity": 0.5, "schedule": {"begin": 0.1}}, "begin"),
    ({"pattern": "unstructured"}, "needs sparsity"),
    ({"pattern": "unstructured", "sparsity": 1.0}, "sparsity"),
    ({"pattern": "n:m", "n": 4, "m": 4}, "must be below m"),
    ({"pattern": "unstructured", "sparsity": 0.5, "granularity": "head"}, "only to pattern 'structured'"),
    ({"pattern": "structured", "sparsity": 0.5, "importance": "activation"}, "granularity 'neuron' or 'head'"),
])
def test_bad_configs_raise_validation_errors_naming_the_field(config, field):
    with pytest.raises(ValidationError, match=field):
        PruneConfig(**config)


class ShapeBranch(nn.Module):
    """A forward torch.fx cannot trace (a branch on the input's length, as Hugging Face's TF padding has) with a
    residual and a squeeze-style mean: stem's and conv_b's channels meet the skip (not prunable alone), conv_a's
    reach conv_b through a ReLU, head_conv's reach the Linear through a mean over positions."""

    def __init__(self) -> None:
        super().__init__()
        self.stem, self.bn = nn.Conv1d(3, 8, 3, padding=1), nn.BatchNorm1d(8)
        self.conv_a, self.conv_b = nn.Conv1d(8, 8, 3, padding=1), nn.Conv1d(8, 8, 3, padding=1)
        self.head_conv, self.fc = nn.Conv1d(8, 8, 1), nn.Linear(8, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[-1] % 2:
            x = nn.functional.pad(x, (0, 1))
        h = nn.functional.silu(self.bn(self.stem(x)))
        h = h + self.conv_b(torch.relu(self.conv_a(h)))
        return self.fc(torch.relu(self.head_conv(h)).mean(-1))


def test_channel_pairs_come_from_torch_export_where_torch_fx_cannot_trace_the_forward():
    torch.manual_seed(0)
    x = torch.randn(4, 3, 9)
    model = ShapeBranch().eval()
    handle = apply_(model, PruneConfig(pattern="structured", sparsity=0.5), ApplyContext(example_input=x))
    handle.finish(model, ApplyContext(example_input=x))
    assert handle.report(model)["found_by"] == "torch.export"
    pruned_out = {n for n, m in model.named_modules()
                  if getattr(m, "wattless_kept_out", None) is not None and not bool(m.wattless_kept_out.all())}
    assert pruned_out == {"conv_a", "head_conv"}  # stem and conv_b feed the skip; fc's output leaves the model
    keep = model.conv_a.wattless_kept_out
    assert (model.conv_b.weight[:, ~keep] == 0).all() and (model.conv_b.weight[:, keep] != 0).any()
    keep = model.head_conv.wattless_kept_out
    assert (model.fc.weight[:, ~keep] == 0).all()  # the mean keeps each channel in its own column
    from wattless.techniques.prune import structural_cuts

    assert {c.group for c in structural_cuts(model, x)} == {"conv_a", "head_conv"}  # what export cuts out
