"""MoEfication: experts cut from a dense block reproduce it, routed tokens skip the other experts' work."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from wattless.energy import count
from wattless.techniques.base import ApplyContext, apply_, full_path
from wattless.techniques.moe import MoEConfig, MoEMLP, cluster_neurons, find_mlp_blocks


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    # Tiny models run many times faster on one thread than on two contending ones.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(autouse=True)
def seeded():
    torch.manual_seed(0)


def mlp(d: int = 32, h: int = 128) -> nn.Sequential:
    return nn.Sequential(nn.Linear(d, h), nn.GELU(), nn.Linear(h, d))


def moefied(dense: nn.Module, inputs, **config) -> tuple[nn.Module, object]:
    model = copy.deepcopy(dense)
    handle = apply_(model, MoEConfig(**config), ApplyContext(example_input=inputs))
    return model, handle


def block_macs(model: nn.Module, inputs, prefixes: list[str]) -> float:
    records = count(model, inputs).mean_records()
    under = lambda name: any(name == p or name.startswith(p + ".") for p in prefixes)  # noqa: E731
    return sum(r["macs"] for r in records if under(r["name"]))


def tiny_bert():
    transformers = pytest.importorskip("transformers")
    transformers.logging.set_verbosity_error()
    config = transformers.BertConfig(
        hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64
    )
    model = transformers.BertModel(config).eval()
    ids = torch.randint(0, 1000, (3, 12))
    return model, {"input_ids": ids, "attention_mask": torch.ones_like(ids)}


@pytest.mark.parametrize("train", [False, True], ids=["eval", "train"])
def test_all_experts_reproduce_the_dense_block(train):
    dense, x = mlp(), torch.randn(4, 16, 32)
    model, _ = moefied(dense, x, experts=4, top_k=4)
    assert isinstance(model[0], MoEMLP) and isinstance(model[2], nn.Identity)
    model.train(train)
    dense.train(train)
    assert torch.allclose(model(x), dense(x), atol=1e-5)


def test_conv1d_pointwise_pairs_and_dropout_are_blocks_too():
    dense = nn.Sequential(nn.Conv1d(16, 64, 1), nn.ReLU(), nn.Dropout(0.1), nn.Conv1d(64, 16, 1)).eval()
    x = torch.randn(2, 16, 10)  # (B, channels, length)
    model, _ = moefied(dense, x, experts=4, top_k=4)
    model.eval()
    assert torch.allclose(model(x), dense(x), atol=1e-5)


def test_top1_of_4_counts_a_quarter_of_the_dense_macs_and_full_path_counts_all():
    dense, x = mlp(), torch.randn(4, 16, 32)
    model, _ = moefied(dense, x, experts=4, top_k=1)
    dense_macs = block_macs(dense, x, ["0", "2"])
    ratio = block_macs(model, x, ["0"]) / dense_macs
    assert 0.2 <= ratio <= 0.35, ratio  # router included
    with full_path(model):
        full_ratio = block_macs(model, x, ["0"]) / dense_macs
    assert 0.95 <= full_ratio <= 1.1, full_ratio


def test_full_path_computes_every_expert_without_changing_the_output():
    dense, x = mlp(), torch.randn(4, 16, 32)
    model, _ = moefied(dense, x, experts=4, top_k=1)
    model.eval()
    with torch.no_grad():
        hard = model(x)
        with full_path(model):
            full = model(x)
    assert torch.allclose(hard, full, atol=1e-5)


@pytest.mark.parametrize("top_k", [1, 2])
def test_soft_probabilities_sum_to_top_k_per_input(top_k):
    dense, x = mlp(), torch.randn(4, 16, 32)
    model, _ = moefied(dense, x, experts=4, top_k=top_k)
    model.train()
    model(x)
    probs = torch.stack([e.wattless_soft_prob for e in model[0].experts])  # (E, B)
    assert probs.shape == (4, 4)
    assert torch.allclose(probs.sum(0), torch.full((4,), float(top_k)))
    assert probs.requires_grad


def test_balance_loss_is_finite_and_trains_the_router():
    dense, x = mlp(), torch.randn(4, 16, 32)
    model, handle = moefied(dense, x, experts=4, top_k=1, balance_weight=0.1, router_hidden=8)
    model.train()
    out = model(x)
    loss = handle.loss(model, x, out)
    assert torch.isfinite(loss) and loss.item() > 0
    loss.backward()
    assert model[0].router.proj.weight.grad.abs().sum() > 0
    model.eval()
    model(x)
    assert handle.loss(model, x, out) is None  # no training forward since
    copy.deepcopy(model)  # no graph tensors left behind


def test_report_gives_expert_loads_that_sum_to_one():
    dense, x = mlp(), torch.randn(4, 16, 32)
    model, handle = moefied(dense, x, experts=4, top_k=2)
    model.eval()
    with torch.no_grad():
        model(x)
        model(x)
    count(model, x)  # a costing run is no eval batch
    block = handle.report(model)["blocks"]["0"]
    assert len(block["expert_load"]) == 4 and sum(block["expert_load"]) == pytest.approx(1.0)
    assert block["tokens"] == 2 * 4 * 16
    assert 0.0 <= block["router_entropy_nats"] <= torch.log(torch.tensor(4.0)).item() + 1e-6


def test_clusters_are_balanced_disjoint_and_deterministic():
    weight = torch.randn(130, 16)
    groups = cluster_neurons(weight, 4)
    assert sorted(g.numel() for g in groups) == [32, 32, 33, 33]
    assert torch.equal(torch.cat(groups).sort().values, torch.arange(130))
    assert all(torch.equal(a, b) for a, b in zip(groups, cluster_neurons(weight, 4)))


def test_router_fit_on_train_batches_follows_activation_mass():
    dense, x = mlp(), torch.randn(8, 16, 32)
    model = copy.deepcopy(dense)
    batches = lambda: iter([(x, None)])  # noqa: E731
    apply_(model, MoEConfig(experts=4, top_k=1), ApplyContext(example_input=x[:1], train_batches=batches))
    moe = model[0]
    tokens = x.reshape(-1, 32)
    with torch.no_grad():
        agree = (moe.router(tokens).argmax(-1) == moe.expert_mass(tokens).argmax(-1)).float().mean()
    assert agree > 0.5  # chance is 0.25


def test_block_globs_select_and_unknown_globs_list_the_blocks():
    model = nn.Sequential(mlp(), nn.ReLU(), mlp())
    assert [s.name for s in find_mlp_blocks(model)] == ["0.0", "2.0"]
    x = torch.randn(2, 32)
    moefied_model, _ = moefied(model, x, blocks=["2.*"])
    assert isinstance(moefied_model[2][0], MoEMLP) and isinstance(moefied_model[0][0], nn.Linear)
    with pytest.raises(ValueError, match=r"matches no MLP block; blocks found: \['0.0', '2.0'\]"):
        moefied(model, x, blocks=["encoder.*"])
    with pytest.raises(ValueError, match="top_k=5 exceeds experts=4"):
        MoEConfig(experts=4, top_k=5)


def test_tiny_bert_trains_and_evaluates_with_experts():
    bert, inputs = tiny_bert()
    blocks = [s.name for s in find_mlp_blocks(bert)]
    assert blocks == ["encoder.layer.0.intermediate", "encoder.layer.1.intermediate"]
    with torch.no_grad():
        reference = bert(**inputs).last_hidden_state
    model, handle = moefied(bert, inputs, experts=4, top_k=4)
    model.eval()
    with torch.no_grad():
        assert torch.allclose(model(**inputs).last_hidden_state, reference, atol=1e-5)
    model, handle = moefied(bert, inputs, experts=4, top_k=1)
    model.train()
    out = model(**inputs).last_hidden_state
    (out.pow(2).mean() + handle.loss(model, inputs, out)).backward()
    model.eval()
    with torch.no_grad():
        assert model(**inputs).last_hidden_state.shape == reference.shape
    assert set(handle.report(model)["blocks"]) == set(blocks)


def test_tiny_bert_ffn_macs_drop_to_about_a_quarter():
    bert, inputs = tiny_bert()
    model, _ = moefied(bert, inputs, experts=4, top_k=1)
    layer = "encoder.layer.0"
    dense = block_macs(bert, inputs, [f"{layer}.intermediate", f"{layer}.output.dense"])
    ratio = block_macs(model, inputs, [f"{layer}.intermediate"]) / dense
    assert 0.2 <= ratio <= 0.35, ratio
