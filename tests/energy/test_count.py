"""Counting: published work counts, every op family, sparsity, precision and per-input paths."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from wattless.energy import count, set_precision
from wattless.models import bert_base, ds_cnn, gpt2, mobilenet_v2, resnet50
from wattless.testing import EarlyExitToy


def total_macs(model, inputs) -> float:
    return sum(count(model, inputs).total("macs"))


def by_name(counts):
    return {r["name"]: r for r in counts.mean_records()}


# --- published figures (shared/REFERENCE.md), built from transformers' config classes -------------------

@pytest.mark.slow
@pytest.mark.parametrize(
    "factory, published",
    [(resnet50, 4.09e9), (mobilenet_v2, 300e6), (bert_base, 11.2e9), (ds_cnn, 2.66e6)],
    ids=["resnet50", "mobilenetv2", "bert-base-128", "ds-cnn"],
)
def test_published_mac_counts_within_2_percent(factory, published):
    model, inputs = factory()
    assert total_macs(model, inputs) == pytest.approx(published, rel=0.02)


@pytest.mark.slow
def test_decoder_counts_match_the_analytic_formula():
    model, inputs = gpt2()
    seq, d, layers, vocab = 128, 768, 12, 50257
    # per layer: qkv 3d^2 + proj d^2 + mlp 8d^2 per token, attention 2 * seq^2 * d; plus the LM head
    expected = layers * (12 * d * d * seq + 2 * seq * seq * d) + seq * d * vocab
    assert total_macs(model, inputs) == pytest.approx(expected, rel=0.01)


# --- op families -------------------------------------------------------------------------------------

def test_linear_and_conv_counts_are_exact():
    x = torch.randn(1, 8, 16, 16)
    for conv, per_out in [(nn.Conv2d(8, 16, 3, padding=1), 8 * 9), (nn.Conv2d(8, 16, 3, padding=1, groups=4), 2 * 9),
                          (nn.Conv2d(8, 8, 3, padding=1, groups=8), 9)]:
        assert total_macs(conv, x) == conv.out_channels * 16 * 16 * per_out
    conv1d = nn.Conv1d(4, 6, 5)
    assert total_macs(conv1d, torch.randn(1, 4, 20)) == 6 * 16 * 4 * 5
    assert total_macs(nn.Linear(10, 7), torch.randn(1, 3, 10)) == 3 * 10 * 7


class Functional(nn.Module):
    """Work done through functional calls, with no Linear/Conv submodules."""

    def __init__(self):
        super().__init__()
        self.w = nn.Parameter(torch.randn(12, 8))
        self.table = nn.Parameter(torch.randn(100, 8))

    def forward(self, ids):
        e = F.embedding(ids, self.table)  # (1, 5, 8): bytes, no MACs
        h = F.linear(e, self.w)  # 5 * 8 * 12
        s = torch.matmul(h, h.transpose(1, 2))  # 5 * 12 * 5
        s = torch.einsum("bij,bjk->bik", s, h)  # 5 * 5 * 12
        q = h.view(1, 1, 5, 12)
        a = F.scaled_dot_product_attention(q, q, q)  # 5 * 5 * (12 + 12)
        a = F.layer_norm(a, (12,))
        a = F.gelu(a) + F.avg_pool1d(s, 3, stride=1, padding=1).view(1, 1, 5, 12)
        return torch.bmm(a.view(1, 5, 12), torch.ones(1, 12, 2))  # 5 * 12 * 2


def test_functional_calls_are_counted():
    ids = torch.randint(0, 100, (1, 5))
    counts = count(Functional(), ids)
    assert counts.total("macs")[0] == 5 * 8 * 12 + 5 * 12 * 5 + 5 * 5 * 12 + 5 * 5 * 24 + 5 * 12 * 2
    rec = by_name(counts)["(root)"]
    assert rec["ops"] > 0  # norms, activations, pooling, softmax
    assert rec["weight_bytes"] >= 5 * 8 * 4 + 12 * 8 * 4  # gathered rows + the F.linear weight


def test_embedding_reads_gathered_rows_without_macs():
    emb = nn.Embedding(1000, 16)
    rec = by_name(count(emb, torch.randint(0, 1000, (1, 7))))["(root)"]
    assert rec["macs"] == 0
    assert rec["weight_bytes"] == 7 * 16 * 4


def test_norms_pooling_and_activations_cost_ops_not_macs():
    model = nn.Sequential(nn.BatchNorm2d(4), nn.ReLU(), nn.MaxPool2d(2), nn.GroupNorm(2, 4), nn.SiLU(),
                          nn.AdaptiveAvgPool2d(1))
    counts = by_name(count(model.eval(), torch.randn(1, 4, 8, 8)))
    for name in ["0", "1", "2", "3", "4", "5"]:
        assert counts[name]["macs"] == 0 and counts[name]["ops"] > 0, name


# --- sparsity, precision, events -----------------------------------------------------------------------

def test_weight_density_and_2_4_pattern():
    layer = nn.Linear(16, 8, bias=False)
    with torch.no_grad():
        layer.weight.view(8, 4, 4)[:, :, :2] = 0  # exactly 2 of every 4 along the input dimension
    rec = by_name(count(layer, torch.randn(1, 16)))["(root)"]
    assert rec["weight_density"] == pytest.approx(0.5)
    assert rec["weight_pattern"] == "2:4"
    assert rec["effective_macs"] == pytest.approx(0.5 * rec["macs"])
    with torch.no_grad():
        layer.weight[0, :4] = 1.0  # one group of 4 non-zeros: no longer 2:4
    assert by_name(count(layer, torch.randn(1, 16)))["(root)"]["weight_pattern"] == "unstructured"


def test_activation_density_measured_on_the_example_batch():
    model = nn.Sequential(nn.ReLU(), nn.Linear(10, 4))
    x = torch.tensor([[1.0, -1, 1, -1, 1, -1, 1, -1, -1, -1]])
    rec = by_name(count(model, x))["1"]
    assert rec["act_density"] == pytest.approx(0.4)
    assert rec["events"] == pytest.approx(0.4 * 40)  # non-zero inputs x fan-out


def test_precision_is_read_from_module_attributes_and_dtypes():
    model = nn.Sequential(nn.Linear(8, 8), nn.Linear(8, 8))
    model[0].wattless_weight_precision = "int4"
    model[0].wattless_act_precision = "int8"
    recs = by_name(count(model, torch.randn(1, 8)))
    assert (recs["0"]["weight_precision"], recs["0"]["act_precision"]) == ("int4", "int8")
    assert recs["0"]["weight_bytes"] == 64 * 0.5 + 8 * 4  # int4 weights, int32 biases
    assert recs["1"]["weight_precision"] == "fp32"
    half = nn.Linear(8, 8).to(torch.bfloat16)
    assert by_name(count(half, torch.randn(1, 8, dtype=torch.bfloat16)))["(root)"]["weight_precision"] == "bf16"
    set_precision(model, "int8", "int8")
    assert {r["weight_precision"] for r in count(model, torch.randn(1, 8)).mean_records()} == {"int8"}


def test_per_input_counts_follow_the_path_each_input_takes():
    torch.manual_seed(0)
    x = torch.randn(8, 32)
    x[:3, 0] = 1.0  # three easy inputs exit early
    x[3:, 0] = -1.0
    counts = count(EarlyExitToy(), x)
    macs = counts.total("macs")
    assert len(macs) == 8
    assert macs[:3] == [32 * 32 + 32 * 4] * 3
    assert all(m > 32 * 32 * 8 for m in macs[3:])
    recs = by_name(counts)
    assert recs["exit1"]["run_fraction"] == pytest.approx(3 / 8)


def test_tracing_leaves_the_model_as_it_was():
    model = nn.Sequential(nn.Linear(4, 4), nn.Dropout(0.5)).train()
    before = [p.clone() for p in model.parameters()]
    count(model, torch.randn(2, 4))
    assert model.training
    assert all(torch.equal(a, b) for a, b in zip(before, model.parameters()))


def test_structurally_removed_channels_cost_nothing_on_any_target():
    from wattless.energy import builtin_targets, estimate

    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 8))
    x = torch.randn(1, 16)
    dense = {n: estimate(count(model, x), t).energy_j for n, t in builtin_targets().items()}
    with torch.no_grad():
        model[0].weight[16:] = 0  # half the hidden neurons: producer rows...
        model[0].bias[16:] = 0
        model[2].weight[:, 16:] = 0  # ...and consumer columns
    recs = by_name(count(model, x))
    assert recs["0"]["kept_macs"] == pytest.approx(0.5 * recs["0"]["macs"])
    assert recs["2"]["kept_macs"] == pytest.approx(0.5 * recs["2"]["macs"])
    for name, target in builtin_targets().items():
        assert estimate(count(model, x), target).energy_j < dense[name], name


def test_transformer_encoder_fast_path_is_counted():
    layer = nn.TransformerEncoderLayer(d_model=16, nhead=2, dim_feedforward=32, batch_first=True).eval()
    macs = total_macs(layer, torch.randn(1, 5, 16))
    assert macs == 5 * (4 * 16 * 16 + 2 * 16 * 32) + 2 * 5 * 5 * 16


def test_element_ops_on_removed_channels_are_not_charged():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv1d(2, 8, 3, padding=1), nn.ReLU(), nn.Conv1d(8, 4, 3, padding=1))
    x = torch.randn(1, 2, 10)
    dense = by_name(count(model, x))["1"]
    with torch.no_grad():
        model[0].weight[4:] = 0  # half the channels removed: producer rows, bias, consumer columns
        model[0].bias[4:] = 0
        model[2].weight[:, 4:] = 0
    pruned = by_name(count(model, x))
    assert pruned["1"]["ops"] == pytest.approx(0.5 * dense["ops"])
    assert pruned["1"]["act_read_bytes"] == pytest.approx(0.5 * dense["act_read_bytes"])
    assert pruned["2"]["act_read_bytes"] == pytest.approx(0.5 * 8 * 10 * 4)


def test_weights_computed_in_forward_are_counted_per_layer_and_repeatably():
    class Masked(nn.Linear):
        def forward(self, x):
            return F.linear(x, self.weight * self.keep)  # a new weight tensor every call

    torch.manual_seed(0)
    layers = [Masked(32, 32) for _ in range(3)]
    for i, layer in enumerate(layers):
        keep = torch.ones(32, 32)
        keep[: 8 * i] = 0  # 0, 8 and 16 of the 32 output rows removed
        layer.register_buffer("keep", keep)
    model = nn.Sequential(*layers)
    x = torch.randn(4, 32)
    first, again = by_name(count(model, x)), by_name(count(model, x))
    assert [first[str(i)]["kept_macs"] / first[str(i)]["macs"] for i in range(3)] == pytest.approx([1.0, 0.75, 0.5])
    assert first == again


def test_group_scales_and_zero_points_are_read_beside_the_codes():
    model = nn.Sequential(nn.Linear(64, 8, bias=False))
    model[0].wattless_weight_precision = "int4"
    model[0].wattless_weight_group_bits = 1.0  # an fp16 scale and minimum per 32 weights (Q4_1)
    assert by_name(count(model, torch.randn(1, 64)))["0"]["weight_bytes"] == 512 * (4 + 1) / 8
