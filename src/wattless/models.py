"""Built-in models for profiling, each a factory that takes no arguments.

Image and text models are built from Hugging Face transformers' config classes (random weights, no
download; the `hf` extra). The keyword-spotting DS-CNN is the MLPerf Tiny reference architecture.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import nn

__all__ = ["BUILTIN_MODELS", "DSCNN", "ds_cnn"]


class DSCNN(nn.Module):
    """MLPerf Tiny keyword spotting DS-CNN (ARM's 'DS-CNN small'): 49x10 MFCC in, 12 classes out.

    conv 10x4 stride 2 (64 ch), then 4 x (depthwise 3x3 + pointwise 1x1, 64 ch), average pool, linear.
    About 2.66 M MACs and 24 k parameters (Banbury et al., MLPerf Tiny, 2021).
    """

    def __init__(self, n_classes: int = 12, channels: int = 64) -> None:
        super().__init__()
        layers: list[nn.Module] = [
            nn.Conv2d(1, channels, (10, 4), stride=2, padding=(5, 1)), nn.BatchNorm2d(channels), nn.ReLU()
        ]
        for _ in range(4):
            layers += [
                nn.Conv2d(channels, channels, 3, padding=1, groups=channels), nn.BatchNorm2d(channels), nn.ReLU(),
                nn.Conv2d(channels, channels, 1), nn.BatchNorm2d(channels), nn.ReLU(),
            ]
        self.features = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Linear(channels, n_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # x: (B, 1, 49, 10)
        return self.classifier(self.pool(self.features(x)).flatten(1))


def ds_cnn() -> tuple[nn.Module, torch.Tensor]:
    return DSCNN(), torch.randn(1, 1, 49, 10)


def _hf() -> Any:
    try:
        import transformers
    except ImportError:
        from wattless.errors import SpecError

        raise SpecError("this built-in model needs transformers: pip install 'wattless[hf]'") from None
    transformers.logging.set_verbosity_error()
    return transformers


def _build(tf: Any, cls: Any, config: Any) -> nn.Module:
    """Build without transformers' slow per-module init, then draw weights once, seeded: uniform with the
    BERT/GPT-2 initialiser's std 0.02 (uniform draws several times faster than normal), norms at 1, biases
    at 0. Counting needs real, non-zero weights; their distribution does not change a count."""
    try:
        from transformers.initialization import no_init_weights
    except ImportError:  # transformers 4.x
        from transformers.modeling_utils import no_init_weights
    with no_init_weights():
        model = cls(config)
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.dim() > 1:
                p.uniform_(-0.02 * 3**0.5, 0.02 * 3**0.5, generator=gen)
            else:
                p.fill_(1.0 if name.endswith("weight") else 0.0)
        for name, b in model.named_buffers():
            if name.endswith("running_var"):
                b.fill_(1.0)
            elif name.endswith("running_mean"):
                b.zero_()
    return model


def resnet50() -> tuple[nn.Module, torch.Tensor]:
    tf = _hf()
    config = tf.ResNetConfig(
        depths=[3, 4, 6, 3], hidden_sizes=[256, 512, 1024, 2048], embedding_size=64, layer_type="bottleneck",
        num_labels=1000,
    )
    return _build(tf, tf.ResNetForImageClassification, config), torch.randn(1, 3, 224, 224)


def mobilenet_v2() -> tuple[nn.Module, torch.Tensor]:
    tf = _hf()
    config = tf.MobileNetV2Config(depth_multiplier=1.0, image_size=224, num_labels=1001)
    return _build(tf, tf.MobileNetV2ForImageClassification, config), torch.randn(1, 3, 224, 224)


def _tokens(vocab: int, seq: int) -> dict[str, torch.Tensor]:
    ids = torch.randint(1000, vocab, (1, seq), generator=torch.Generator().manual_seed(0))
    return {"input_ids": ids, "attention_mask": torch.ones_like(ids)}


def bert_base() -> tuple[nn.Module, dict[str, torch.Tensor]]:
    tf = _hf()
    config = tf.BertConfig()  # bert-base-uncased: 12 layers, hidden 768, 12 heads, FFN 3072
    return _build(tf, tf.BertModel, config), _tokens(config.vocab_size, 128)


def gpt2() -> tuple[nn.Module, dict[str, torch.Tensor]]:
    tf = _hf()
    config = tf.GPT2Config()  # GPT-2 small: 12 layers, hidden 768
    return _build(tf, tf.GPT2LMHeadModel, config), _tokens(config.vocab_size, 128)


def tiny_mlp() -> tuple[nn.Module, torch.Tensor]:
    model = nn.Sequential(nn.Linear(64, 128), nn.ReLU(), nn.Linear(128, 128), nn.ReLU(), nn.Linear(128, 10))
    return model, torch.randn(1, 64)


BUILTIN_MODELS: dict[str, tuple[Callable[[], Any], str]] = {
    "ds-cnn": (ds_cnn, "MLPerf Tiny keyword-spotting DS-CNN, input 1x1x49x10 (about 2.66 M MACs)"),
    "resnet50": (resnet50, "ResNet-50 (transformers ResNetConfig), input 1x3x224x224 (4.09 G MACs)"),
    "mobilenetv2": (mobilenet_v2, "MobileNetV2 1.0 (transformers MobileNetV2Config), 1x3x224x224 (about 300 M)"),
    "bert-base": (bert_base, "BERT-base encoder (transformers BertConfig), 128 tokens (about 11.2 G MACs)"),
    "gpt2": (gpt2, "GPT-2 small decoder (transformers GPT2Config), 128 tokens"),
    "tiny-mlp": (tiny_mlp, "a 3-layer MLP on 64 features (for quick checks)"),
}
