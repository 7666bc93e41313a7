"""The converted SmolLM2 cache: written beside whatever the folder already holds (the tokenizer cache)."""

from __future__ import annotations

import json
import types
from pathlib import Path

import torch
from safetensors.torch import load_file

from wattless.models import _convert_gguf
from wattless.testing import tiny_llama


def _fake_transformers(model: torch.nn.Module) -> types.SimpleNamespace:
    loader = types.SimpleNamespace(from_pretrained=lambda *a, **k: model)
    return types.SimpleNamespace(AutoModelForCausalLM=loader)


def test_conversion_lands_in_a_folder_the_tokenizer_cache_already_made(tmp_path: Path):
    model = tiny_llama()
    out = tmp_path / "smollm2-135m" / "abc"
    (out / "tokenizer").mkdir(parents=True)
    (out / "tokenizer" / "tokenizer.json").write_text("{}")
    _convert_gguf(_fake_transformers(model), tmp_path / "model.gguf", out)
    assert json.loads((out / "config.json").read_text())["num_hidden_layers"] == model.config.num_hidden_layers
    weights = load_file(str(out / "model.safetensors"))
    assert torch.equal(weights["model.embed_tokens.weight"], model.model.embed_tokens.weight)
    assert (out / "tokenizer" / "tokenizer.json").read_text() == "{}"  # untouched
    assert sorted(p.name for p in out.parent.iterdir()) == ["abc"]  # no temporary folder left behind
