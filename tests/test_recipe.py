"""Recipes: validated on load (errors name the key and the file), checked against the model before training."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import nn

from wattless.errors import RecipeError
from wattless.recipe import apply_recipe, check_recipe, load_recipe, parse_recipe
from wattless.techniques.base import ApplyContext

RECIPES = Path(__file__).parents[1] / "recipes"


@pytest.mark.parametrize("path", sorted(RECIPES.glob("*.toml")), ids=lambda p: p.name)
def test_shipped_recipes_load(path):
    recipe = load_recipe(path)
    assert recipe.techniques() or recipe.train.epochs == 0  # mnist1d-fp32: the baseline itself, as a run


def test_unknown_key_wrong_type_and_bad_value_name_key_and_file(tmp_path):
    bad = tmp_path / "r.toml"
    bad.write_text('name = "x"\n[quantize]\nweight_bitz = 4\n')
    with pytest.raises(RecipeError, match=r"r\.toml.*quantize\.weight_bitz.*unknown key"):
        load_recipe(bad)
    bad.write_text('[train]\nepochs = "many"\n')
    with pytest.raises(RecipeError, match=r"train\.epochs"):
        load_recipe(bad)
    bad.write_text("[quantize]\nweight_bits = 1\n")
    with pytest.raises(RecipeError, match=r"quantize\.weight_bits"):
        load_recipe(bad)
    bad.write_text("[objective]\nenergy_weight = 0.1\nenergy_budget_uj = 3.0\n")
    with pytest.raises(RecipeError, match="either energy_weight or energy_budget_uj"):
        load_recipe(bad)
    bad.write_text("name = [")
    with pytest.raises(RecipeError, match="not valid TOML"):
        load_recipe(bad)
    with pytest.raises(RecipeError, match="does not exist"):
        load_recipe(tmp_path / "missing.toml")


def _model() -> nn.Module:
    return nn.Sequential(nn.Linear(10, 16), nn.ReLU(), nn.Linear(16, 4))


def test_impossible_combination_fails_before_training_and_leaves_the_model_alone():
    model = _model()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    recipe = parse_recipe({"prune": {"pattern": "n:m", "n": 2, "m": 4, "layers": ["0", "2"]}})
    context = ApplyContext(example_input=torch.randn(4, 10))
    with pytest.raises(RecipeError, match=r"key `prune`.*0"):  # the first Linear has 10 inputs
        check_recipe(recipe, model, context, "r.toml")
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    with pytest.raises(RecipeError, match="early_exit"):
        check_recipe(parse_recipe({"early_exit": {"after": ["0"]}}), model, context, labelled=False)


def test_techniques_compose_in_one_model():
    model = nn.Sequential(nn.Linear(16, 32), nn.GELU(), nn.Linear(32, 32), nn.ReLU(), nn.Linear(32, 4))
    recipe = parse_recipe({
        "quantize": {"weight_bits": 4, "act_bits": 8},
        "prune": [{"pattern": "n:m", "layers": ["2"]}],
        "act_sparsity": {"l1": 1e-4},
    })
    context = ApplyContext(example_input=torch.randn(8, 16))
    check_recipe(recipe, model, context)
    handles = apply_recipe(model, recipe, context)
    for h in handles:
        h.on_step(10, 10)
    out = model(torch.randn(3, 16))
    assert out.shape == (3, 4) and isinstance(model[1], nn.ReLU)
    assert {h.name for h in handles} >= {"act_sparsity"}
