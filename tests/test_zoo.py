"""Users' own models, from constructors (no downloads): prepare -> three steps of a user loop -> convert ->
export with parity, for int8 weights and activations, then 2:4 on top, then structured channels on top.

Hugging Face vision and text classifiers are built from their config classes at small sizes, and the residual
squeeze-and-excitation CNN (SiLU, BatchNorm1d, ``unsqueeze``, a skip: wattless.testing.SECNN) is the model issue 12's user brought.
Every one of them goes through torch.onnx (dynamo) with the techniques' translations; BatchNorm is folded."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import wattless
from wattless.export import Tolerance
from wattless.export.classifier import logits_of
from wattless.testing import SECNN
from tests.int8_oracle import saturating_products

transformers = pytest.importorskip("transformers")

INT8 = {"quantize": {"weight_bits": 8, "act_bits": 8}}
RECIPES = {"int8": INT8, "int8+2:4": {**INT8, "prune": {"pattern": "n:m"}},
           "int8+channels": {**INT8, "prune": {"pattern": "structured", "sparsity": 0.5}}}


def _images(size: int) -> torch.Tensor:
    return torch.randn(32, 3, size, size)


def build(name: str) -> tuple[nn.Module, torch.Tensor]:
    t = transformers
    if name == "se-cnn":
        return SECNN(classes=3, channels=16), torch.randn(32, 40)
    if name == "resnet":
        config = t.ResNetConfig(embedding_size=8, hidden_sizes=[8, 16], depths=[1, 1], num_labels=3, layer_type="basic")
        return t.ResNetForImageClassification(config), _images(32)
    if name == "mobilenetv2":
        # TF-style padding (the default) branches on the input's shape: torch.fx cannot trace it, so the
        # structured-channel finder reads torch.export's graph
        config = t.MobileNetV2Config(depth_multiplier=0.35, image_size=32, num_labels=3)
        return t.MobileNetV2ForImageClassification(config), _images(32)
    if name == "efficientnet":  # a wider init than the default keeps a random 32-layer net's activations alive
        config = t.EfficientNetConfig(width_coefficient=0.25, depth_coefficient=0.25, image_size=64, num_labels=3,
                                      hidden_dim=320, initializer_range=0.3)
        return t.EfficientNetForImageClassification(config), _images(64)
    if name == "convnext":
        config = t.ConvNextConfig(num_stages=2, hidden_sizes=[8, 16], depths=[1, 1], num_labels=3)
        return t.ConvNextForImageClassification(config), _images(32)
    if name == "vit":
        config = t.ViTConfig(hidden_size=16, num_hidden_layers=1, num_attention_heads=2, intermediate_size=32,
                             image_size=16, patch_size=8, num_labels=3)
        return t.ViTForImageClassification(config), _images(16)
    config = t.DistilBertConfig(vocab_size=50, dim=16, n_layers=1, n_heads=2, hidden_dim=32, num_labels=3,
                                max_position_embeddings=32)
    return t.DistilBertForSequenceClassification(config), torch.randint(0, 50, (32, 12))


# Deep int8 nets at random init: a quantizer input within float rounding of a code boundary can round the other
# way in ONNX Runtime (Tolerance's docstring) and each such flip moves that input's logits past 1e-3. Integer
# layers evaluate the integer kernels' own arithmetic, so the convs and linears match to the bit (MobileNetV2
# 2:4: worst 0.0, where the float path had flips on up to 4 of 32 inputs); flips remain possible only behind
# float operators ONNX Runtime computes in another order (GELU, LayerNorm, attention), so 9/10 of 32.
TOLERANCE = Tolerance(min_within=0.9, min_agree=0.9)
MODELS = ["se-cnn", "resnet", "mobilenetv2", "efficientnet", "convnext", "vit", "distilbert"]


def settle(model: nn.Module, x: torch.Tensor) -> None:
    """BatchNorm running statistics of the data, as a pretrained model has them (not the init's 0 and 1, under
    which a random deep net amplifies one rounding step of a quantizer into its logits)."""
    norms = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    for m in norms:
        m.reset_running_stats()
        m.momentum = None  # a cumulative average over the batches below
    model.train()
    with torch.no_grad():
        for i in range(0, len(x), 4):
            model(x[i : i + 4])
    for m in norms:
        m.momentum = 0.1


def user_loop(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> None:
    opt = torch.optim.Adam(model.parameters(), 1e-3)
    model.train()
    for i in range(3):
        xb, yb = x[4 * i : 4 * i + 4], y[4 * i : 4 * i + 4]
        loss = F.cross_entropy(logits_of(model(xb)), yb) + wattless.energy_loss(model, targets=yb)
        opt.zero_grad()
        loss.backward()
        opt.step()
        wattless.step(model)


CASES = [(m, r) for m in MODELS for r in RECIPES]


@pytest.mark.parametrize("name, recipe", CASES)
def test_a_users_model_trains_in_its_loop_and_exports_with_parity(name, recipe, tmp_path):
    torch.manual_seed(0)
    model, x = build(name)
    y = torch.randint(0, 3, (len(x),))
    settle(model, x)
    prepared = wattless.prepare(model, {"name": recipe, **RECIPES[recipe]}, x[:4], total_steps=3)
    user_loop(model, x, y)
    assert prepared.step == 3
    wattless.convert(model)
    report = wattless.export(model, x, tmp_path / "model.onnx", tolerance=TOLERANCE, requantize=False)
    assert report.parity.passed
    assert report.integer_products and any(v.startswith("int8") for v in report.layers.values())
    if name in ("se-cnn", "resnet"):  # every BatchNorm follows a conv: folded into it
        assert not any("BatchNormalization" in v for v in report.layers.values())
        assert any("BatchNorm layers folded" in n for n in report.notes)
    assert saturating_products(tmp_path / "model.onnx") == []
    if recipe == "int8+2:4":
        weights = [m.weight for m in model.modules() if isinstance(m, (nn.Linear, nn.Conv1d, nn.Conv2d))]
        assert any(float((w == 0).float().mean()) >= 0.45 for w in weights)
    if recipe == "int8+channels":
        assert report.removed or any(n.startswith("zero") or "structurally" in n for n in report.notes)


# --- techniques find their places in any module ---------------------------------------------------------------

class CustomMLP(nn.Module):
    def __init__(self, d: int, hidden: int) -> None:
        super().__init__()
        self.fc1, self.fc2 = nn.Linear(d, hidden), nn.Linear(hidden, d)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # a custom forward, not an nn.Sequential
        return self.fc2(F.gelu(self.fc1(x)))


class PreNormBlock(nn.Module):
    def __init__(self, d: int) -> None:
        super().__init__()
        self.norm, self.mlp = nn.LayerNorm(d), CustomMLP(d, 4 * d)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.mlp(self.norm(x))


class BlocksInAList(nn.Module):
    """Repeated blocks in an nn.ModuleList and a forward of its own: no `features` Sequential anywhere."""

    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Linear(12, 16)
        self.blocks = nn.ModuleList([PreNormBlock(16) for _ in range(3)])
        self.head = nn.Linear(16, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.embed(x)
        for block in self.blocks:
            h = block(h)
        return self.head(h)


def test_moe_finds_a_custom_forward_mlp_and_exits_cut_a_module_list_and_both_export_with_parity(tmp_path):
    from wattless.runtime import load
    from wattless.techniques.moe import MoEMLP

    torch.manual_seed(0)
    model, x = BlocksInAList(), torch.randn(64, 12)
    y = torch.randint(0, 3, (64,))
    recipe = {"name": "moe+exits", **INT8, "moe": {"experts": 4, "top_k": 1},
              "early_exit": {"after": ["blocks.0", "blocks.1"]}}
    wattless.prepare(model, recipe, x[:8], total_steps=3, val=(x, y))
    assert sum(isinstance(m, MoEMLP) for m in model.modules()) == 3  # every block's custom-forward MLP
    user_loop(model, x, y)
    wattless.convert(model)
    report = wattless.export(model, x, tmp_path / "m.onnx", tolerance=TOLERANCE)
    assert report.parity.passed and [e["after"] for e in report.exits] == ["blocks_0", "blocks_1"]
    assert report.routes  # the first segment's experts, reported per input
    result = load(tmp_path / "m.onnx").run(x[:8].numpy())
    with torch.no_grad():
        model(x[:8])
    assert [p.exit for p in result.paths] == model.last_exits.tolist()


def test_an_exit_across_a_skip_is_refused_before_training_naming_the_value():
    from wattless.errors import RecipeError

    class Skip(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.a, self.b, self.head = nn.Linear(8, 8), nn.Linear(8, 8), nn.Linear(8, 3)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            h = self.a(x)
            return self.head(self.b(h) + x)  # x crosses the cut after `a`

    with pytest.raises(RecipeError, match=r"'a' is not a cut.*\['x'\]"):
        wattless.prepare(Skip(), {"name": "e", "early_exit": {"after": ["a"]}}, torch.randn(4, 8),
                         val=(torch.randn(8, 8), torch.randint(0, 3, (8,))))


def test_moe_without_an_mlp_is_refused_before_any_training():
    from wattless.errors import RecipeError

    with pytest.raises(RecipeError, match="found no MLP block"):
        wattless.prepare(SECNN(), {"name": "m", "moe": {"experts": 2}}, torch.randn(4, 40))
