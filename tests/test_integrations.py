"""wattless inside a Hugging Face Trainer: prepare, the Trainer's own loop with the callback, export."""

from __future__ import annotations

import pytest
import torch

import wattless
from wattless.errors import TrainingError

transformers = pytest.importorskip("transformers")
pytest.importorskip("accelerate")


class Images(torch.utils.data.Dataset):
    def __init__(self, n: int = 24) -> None:
        gen = torch.Generator().manual_seed(0)
        self.x, self.y = torch.randn(n, 3, 16, 16, generator=gen), torch.randint(0, 3, (n,), generator=gen)

    def __len__(self) -> int:
        return len(self.x)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        return {"pixel_values": self.x[i], "labels": self.y[i]}


def _vit() -> torch.nn.Module:
    torch.manual_seed(0)
    config = transformers.ViTConfig(hidden_size=16, num_hidden_layers=1, num_attention_heads=2, intermediate_size=32,
                                    image_size=16, patch_size=8, num_labels=3)
    return transformers.ViTForImageClassification(config)


def _trainer(model, callback, tmp_path, steps=3):
    from wattless.integrations.hf import WattlessCallback  # noqa: F401

    args = transformers.TrainingArguments(output_dir=str(tmp_path / "hf"), max_steps=steps, per_device_train_batch_size=8,
                                          learning_rate=1e-3, report_to=[], save_strategy="no", logging_strategy="no",
                                          use_cpu=True, disable_tqdm=True)
    return transformers.Trainer(model=model, args=args, train_dataset=Images(), callbacks=[callback],
                                compute_loss_func=callback.compute_loss)


def test_a_trainer_trains_a_prepared_model_with_the_energy_term_and_it_exports(tmp_path):
    from wattless.integrations.hf import WattlessCallback

    model = _vit()
    data = Images()
    recipe = {"name": "hf", "quantize": {"weight_bits": 8, "act_bits": 8}, "objective": {"energy_weight": 0.1}}
    prepared = wattless.prepare(model, recipe, data.x[:4], total_steps=3)
    callback = WattlessCallback(convert_at_end=True)
    _trainer(model, callback, tmp_path).train()
    assert prepared.step == 3 and prepared.converted
    assert prepared.soft_energy_j is not None and prepared.soft_energy_j > 0  # priced during the Trainer's steps
    report = wattless.export(model, data.x, tmp_path / "vit.onnx")
    assert report.parity.passed and report.integer_products


def test_an_unprepared_model_is_refused_naming_the_call(tmp_path):
    from wattless.integrations.hf import WattlessCallback

    callback = WattlessCallback()
    with pytest.raises(TrainingError, match="wattless.prepare"):
        _trainer(_vit(), callback, tmp_path).train()
