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


# --- PyTorch Lightning -------------------------------------------------------------------------------------

def _lightning_module(net: torch.nn.Module, calls: list[int] | None = None):
    lightning = pytest.importorskip("lightning")
    import torch.nn.functional as F

    class Classifier(lightning.LightningModule):
        def __init__(self) -> None:
            super().__init__()
            self.net = net

        def training_step(self, batch, batch_idx):
            x, y = batch
            if calls is not None:
                calls.append(batch_idx)
            return F.cross_entropy(self.net(x), y)  # the user's loss only: the callback adds wattless's

        def configure_optimizers(self):
            return torch.optim.Adam(self.parameters(), 1e-3)

    return Classifier()


def _fit(module, callback, steps=3, accumulate=1):
    lightning = pytest.importorskip("lightning")
    from wattless.testing import SECNN  # noqa: F401

    gen = torch.Generator().manual_seed(0)
    data = torch.utils.data.TensorDataset(torch.randn(48, 40, generator=gen), torch.randint(0, 3, (48,), generator=gen))
    trainer = lightning.Trainer(max_steps=steps, accelerator="cpu", devices=1, logger=False, enable_checkpointing=False,
                                enable_progress_bar=False, enable_model_summary=False,
                                callbacks=callback if isinstance(callback, list) else [callback],
                                accumulate_grad_batches=accumulate)
    trainer.fit(module, torch.utils.data.DataLoader(data, batch_size=4))
    return trainer


def test_a_lightning_trainer_trains_a_prepared_submodule_with_the_energy_term_and_it_exports(tmp_path):
    pytest.importorskip("lightning")
    from wattless.integrations.lightning import WattlessCallback
    from wattless.testing import SECNN

    torch.manual_seed(0)
    net, x = SECNN(classes=3, channels=16), torch.randn(32, 40)
    recipe = {"name": "pl", "quantize": {"weight_bits": 8, "act_bits": 8}, "objective": {"energy_weight": 0.1}}
    prepared = wattless.prepare(net, recipe, x[:4], total_steps=6)
    module = _lightning_module(net)
    original = type(module).training_step
    _fit(module, WattlessCallback(convert_at_end=True), steps=3, accumulate=2)  # 6 batches, 3 optimizer steps
    assert prepared.step == 3 and prepared.converted
    assert prepared.soft_energy_j is not None and prepared.soft_energy_j > 0  # priced in Lightning's steps
    assert module.training_step.__func__ is original  # the wrapped training_step is gone after fit
    report = wattless.export(net, x, tmp_path / "secnn.onnx")
    assert report.parity.passed and report.integer_products


def test_lightning_without_a_prepared_module_is_refused_naming_the_call():
    pytest.importorskip("lightning")
    from wattless.integrations.lightning import WattlessCallback
    from wattless.testing import SECNN

    with pytest.raises(TrainingError, match="wattless.prepare"):
        _fit(_lightning_module(SECNN(classes=3, channels=16)), WattlessCallback())


def test_lightning_backpropagates_the_users_loss_plus_the_energy_term():
    """The loss Lightning back-propagates is the user's training_step loss + wattless.energy_loss (the energy
    objective's term, > 0); with add_loss=False it is the user's loss unchanged."""
    lightning = pytest.importorskip("lightning")
    from wattless.integrations.lightning import WattlessCallback
    from wattless.testing import SECNN

    class Probe(lightning.Callback):
        def __init__(self) -> None:
            self.losses: list[float] = []

        def on_before_backward(self, trainer, pl_module, loss):
            self.losses.append(float(loss))

    for add_loss in (True, False):
        torch.manual_seed(0)
        net = SECNN(classes=3, channels=16)
        wattless.prepare(net, {"name": "pl", "quantize": {"weight_bits": 8, "act_bits": 8},
                               "objective": {"energy_weight": 0.5}}, torch.randn(4, 40), total_steps=2)
        user: list[float] = []
        module = _lightning_module(net)
        step = module.training_step
        module.training_step = lambda batch, batch_idx: user.append(float((loss := step(batch, batch_idx)).detach())) or loss
        probe = Probe()
        _fit(module, [WattlessCallback(add_loss=add_loss), probe], steps=2)
        extra = [a - b for a, b in zip(probe.losses, user)]
        assert len(extra) == 2
        assert all(e > 1e-4 for e in extra) if add_loss else all(e == 0 for e in extra)
