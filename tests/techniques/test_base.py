"""The one door: prepare and convert found by the config's type, distillation through it, typed context."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.nn.utils import parametrize

from wattless.techniques import ApplyContext, DistillConfig, PruneConfig, QuantConfig, apply_, convert_
from wattless.techniques.distill import Distillation
from wattless.techniques.quantize import is_quantized


def _mlp() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 4))


def test_convert_bakes_masks_and_freezes_quantizers_without_changing_outputs():
    model, x = _mlp(), torch.randn(4, 8)
    context = ApplyContext(example_input=x)
    for config in (PruneConfig(pattern="unstructured", sparsity=0.5), QuantConfig()):
        apply_(model, config, context).finish(model, context)
    model.eval()
    before = model(x)
    convert_(model, [PruneConfig(pattern="unstructured", sparsity=0.5), QuantConfig()])
    assert not any(parametrize.is_parametrized(m) for m in model.modules())
    assert all(m.steps_frozen for m in model.modules() if is_quantized(m))
    assert torch.equal(model(x), before)


def test_convert_of_every_technique_does_nothing_where_none_was_applied():
    model, x = _mlp(), torch.randn(2, 8)
    before = model(x)
    convert_(model)
    assert torch.equal(model(x), before)


def test_distillation_goes_through_the_door_and_needs_a_teacher():
    teacher = _mlp()
    handle = apply_(_mlp(), DistillConfig(alpha=1.0), ApplyContext(example_input=None, teacher=teacher))
    assert isinstance(handle, Distillation)
    x = torch.randn(3, 8)
    with torch.no_grad():
        loss = handle.classifier_loss(teacher(x), torch.tensor(5.0), x)  # alpha 1: the task loss drops out
    assert float(loss) == pytest.approx(0.0, abs=1e-6)
    with pytest.raises(ValueError, match="teacher"):
        apply_(_mlp(), DistillConfig(), ApplyContext(example_input=None))


def test_the_context_has_typed_fields_and_extras_must_name_them():
    val = (torch.randn(2, 8), torch.tensor([0, 1]))
    assert ApplyContext(example_input=None, extras={"val": val}).val is val
    with pytest.raises(TypeError, match="no field 'vall'"):
        ApplyContext(example_input=None, extras={"vall": val})


def test_an_unknown_step_or_config_says_what_is_known():
    with pytest.raises(TypeError, match="known configs"):
        apply_(_mlp(), DistillConfig.__base__(), step="convert")
    with pytest.raises(TypeError, match="needs an ApplyContext"):
        apply_(_mlp(), QuantConfig())
