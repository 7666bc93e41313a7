"""One-shot 2:4 and unstructured sparsity (Wanda, magnitude), kept exactly by 4-bit weight-only codes."""

from __future__ import annotations

import pytest
import torch

from wattless.energy.decode import count_decode
from wattless.techniques.base import ApplyContext, apply_
from wattless.techniques.llm_sparsity import SparsifyConfig, importance, sparsity_mask
from wattless.techniques.weight_only import WeightOnlyConfig
from wattless.testing import tiny_llama

IDS = torch.randint(0, 96, (4, 32), generator=torch.Generator().manual_seed(0))
CONTEXT = ApplyContext(example_input=IDS[:1], train_batches=lambda: iter([(IDS, None)]))


def test_masks_keep_two_of_four_or_a_rows_share():
    score = torch.rand(6, 16, generator=torch.Generator().manual_seed(0))
    keep = sparsity_mask(score, "2:4", 0.5)
    assert (keep.view(6, 4, 4).sum(-1) == 2).all()
    kept_scores = torch.where(keep, score, torch.inf).view(6, 4, 4).amin(-1)
    dropped = torch.where(keep, -torch.inf, score).view(6, 4, 4).amax(-1)
    assert (kept_scores >= dropped).all()
    assert (sparsity_mask(score, "unstructured", 0.75).sum(1) == 4).all()


def test_wanda_beats_magnitude_when_inputs_differ_in_scale():
    g = torch.Generator().manual_seed(1)
    x = torch.randn(512, 32, generator=g) * torch.exp(1.5 * torch.randn(32, generator=g))  # outlier features
    w = torch.randn(16, 32, generator=g)
    norms = x.pow(2).sum(0).sqrt()

    def error(keep):
        return float((x @ (w * keep - w).T).norm())

    wanda = error(sparsity_mask(importance(w, norms), "2:4", 0.5))
    magnitude = error(sparsity_mask(importance(w, None), "2:4", 0.5))
    assert wanda < 0.8 * magnitude


def test_sparsity_then_int4_keeps_the_zeros_and_the_energy_core_sees_two_four():
    model = tiny_llama()
    embedding = model.get_input_embeddings().weight.detach().clone()
    handle = apply_(model, SparsifyConfig(pattern="2:4"), CONTEXT)
    assert handle.report(model)["mean_weight_density"] == 0.5
    apply_(model, WeightOnlyConfig(bits=4, group_size=32, calibration_windows=4), CONTEXT)
    w = model.model.layers[0].mlp.down_proj.weight
    assert ((w.view(w.shape[0], -1, 4) != 0).sum(-1) <= 2).all()
    assert torch.equal(model.get_input_embeddings().weight, embedding)
    records = [u.record() for u in count_decode(model, IDS[:1, :8], new_tokens=2).steps.samples[0].values()
               if u.name.endswith("down_proj")]
    assert records and all(r["weight_pattern"] == "2:4" for r in records)
    other = tiny_llama()
    apply_(other, SparsifyConfig(pattern="unstructured", sparsity=0.3, method="magnitude"), CONTEXT)
    with pytest.raises(ValueError, match="float-zero-point"):
        apply_(other, WeightOnlyConfig(zero_point="float", group_size=32, method="rtn"), CONTEXT)


def test_two_four_is_half():
    with pytest.raises(ValueError, match="exactly half"):
        SparsifyConfig(pattern="2:4", sparsity=0.6)
