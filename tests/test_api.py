"""wattless.prepare -> the user's own loop (energy_loss, step) -> convert -> export, on tiny models."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import wattless
from wattless.errors import RecipeError, TrainingError
from wattless.recipe import check_recipe, parse_recipe
from wattless.techniques.base import ApplyContext

QUANT = {"quantize": {"weight_bits": 8, "act_bits": 8}}
TWO_FOUR = {"prune": {"pattern": "n:m", "n": 2, "m": 4}}
CHANNELS = {"prune": {"pattern": "structured", "sparsity": 0.5, "granularity": "channel"}}
RECIPES = {"int8": QUANT, "2:4": TWO_FOUR, "channels": CHANNELS}


def mlp() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 32), nn.ReLU(), nn.Linear(32, 4))


def convnet() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(4, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 8, 3, padding=1), nn.ReLU(),
                         nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 4))


MODELS = {"mlp": (mlp, (16,)), "conv": (convnet, (4, 8, 8))}


def data(shape: tuple[int, ...], n: int = 32) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(1)
    return torch.randn(n, *shape, generator=gen), torch.randint(0, 4, (n,), generator=gen)


def user_loop(model: nn.Module, x: torch.Tensor, y: torch.Tensor, steps: int = 3) -> list[float]:
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    model.train()
    losses = []
    for i in range(steps):
        xb, yb = x[i * 8 : (i + 1) * 8], y[i * 8 : (i + 1) * 8]
        loss = F.cross_entropy(model(xb), yb) + wattless.energy_loss(model, targets=yb)
        opt.zero_grad()
        loss.backward()
        opt.step()
        wattless.step(model)
        losses.append(float(loss.detach()))
    return losses


@pytest.mark.parametrize("arch", list(MODELS))
@pytest.mark.parametrize("name", list(RECIPES))
def test_prepare_train_convert_export(arch, name, tmp_path):
    build, shape = MODELS[arch]
    model = build()
    x, y = data(shape)
    recipe = {**RECIPES[name], "objective": {"energy_weight": 0.1}}
    prepared = wattless.prepare(model, recipe, x[:8], total_steps=3)
    assert [t.name for t in prepared.techniques] and prepared.energy is not None
    losses = user_loop(model, x, y)
    assert prepared.step == 3 and all(torch.isfinite(torch.tensor(losses)))
    assert prepared.soft_energy_j is not None and prepared.soft_energy_j > 0
    wattless.convert(model)
    assert not model.training
    report = wattless.export(model, x, tmp_path / "model.onnx")
    assert report.parity.passed and (tmp_path / "model.onnx").stat().st_size > 0
    if name == "int8":
        assert report.integer_products
    if name == "2:4":
        weights = [m.weight for m in model.modules() if isinstance(m, (nn.Linear, nn.Conv2d))]
        assert any(float((w == 0).float().mean()) >= 0.45 for w in weights)
    if name == "channels":
        assert report.removed  # whole channels or neurons cut out of the ONNX tensors


def test_energy_term_changes_the_loss_and_its_gradient():
    x, y = data((16,))
    plain, weighted = mlp(), mlp()
    wattless.prepare(plain, QUANT, x[:8])
    wattless.prepare(weighted, {**QUANT, "objective": {"energy_weight": 1.0}}, x[:8])
    grads, extras = [], []
    for model in (plain, weighted):
        model.train()
        out = model(x)
        extra = wattless.energy_loss(model, targets=y)
        loss = F.cross_entropy(out, y) + extra
        loss.backward()
        extras.append(float(extra.detach()))
        grads.append(torch.cat([p.grad.flatten() for p in model.parameters() if p.grad is not None]))
    assert extras[0] == 0.0 and extras[1] > 0.0
    assert grads[0].shape == grads[1].shape and not torch.allclose(grads[0], grads[1])


def test_budget_moves_the_multiplier():
    x, y = data((16,))
    model = mlp()
    prepared = wattless.prepare(model, {**QUANT, "objective": {"energy_budget_uj": 1e-9}}, x[:8])
    assert prepared.energy_lambda == 0.0
    user_loop(model, x, y, steps=2)
    assert prepared.energy_lambda > 0.0  # far over budget: dual ascent raises lambda


def test_gradual_prune_follows_the_users_steps():
    x, y = data((16,))
    model = mlp()
    recipe = {"prune": {"pattern": "unstructured", "sparsity": 0.5, "schedule": {"start": 0.0, "end": 1.0}}}
    prepared = wattless.prepare(model, recipe, x[:8], total_steps=4)
    (tech,) = prepared.techniques
    assert tech.current_sparsity == 0.0
    user_loop(model, x, y, steps=2)
    assert 0.0 < tech.current_sparsity < 0.5
    wattless.convert(model)
    assert tech.current_sparsity == 0.5


def test_recipe_from_a_toml_file(tmp_path):
    path = tmp_path / "r.toml"
    path.write_text('[quantize]\nweight_bits = 8\nact_bits = 8\n')
    model = mlp()
    prepared = wattless.prepare(model, path, data((16,))[0][:8])
    assert prepared.recipe.quantize is not None


@pytest.mark.parametrize("bad", [
    {"quantize": {"weight_bits": 8, "color": 1}},  # unknown key
    {"prune": {"pattern": "structured"}},  # sparsity missing
    {"prune": {"pattern": "n:m", "n": 2, "m": 4, "layers": ["0"]}, "target": "mobile-npu"},
])
def test_bad_recipe_is_the_same_error_as_optimize(bad):
    model = nn.Sequential(nn.Linear(6, 8), nn.ReLU(), nn.Linear(8, 4))  # 6 inputs: 2:4 cannot apply
    x = torch.randn(4, 6)
    with pytest.raises(RecipeError) as ours:
        wattless.prepare(model, bad, x)
    with pytest.raises(RecipeError) as theirs:
        check_recipe(parse_recipe(bad), model, ApplyContext(example_input=x))
    assert str(ours.value) == str(theirs.value)
    assert "wattless_prepared" not in model.__dict__


def test_bad_recipe_leaves_the_model_untouched():
    model = nn.Sequential(nn.Linear(6, 8), nn.ReLU(), nn.Linear(8, 4))
    before = copy.deepcopy(model.state_dict())
    with pytest.raises(RecipeError):
        wattless.prepare(model, {"prune": {"pattern": "n:m", "layers": ["0", "2"]}}, torch.randn(4, 6))  # '0': 6 inputs
    assert model.state_dict().keys() == before.keys()


def test_verbs_need_a_prepared_model():
    with pytest.raises(TrainingError, match="prepare"):
        wattless.energy_loss(mlp())
    model = mlp()
    x, y = data((16,))
    wattless.prepare(model, QUANT, x[:8])
    with pytest.raises(TrainingError, match="already prepared"):
        wattless.prepare(model, QUANT, x[:8])
    with pytest.raises(TrainingError, match="no training forward"):
        wattless.energy_loss(model)
    wattless.convert(model)
    with pytest.raises(TrainingError, match="already converted"):
        wattless.step(model)


def test_distill_is_refused_by_name():
    with pytest.raises(RecipeError, match="distill"):
        wattless.prepare(mlp(), {"distill": {}, **QUANT}, data((16,))[0][:8])
