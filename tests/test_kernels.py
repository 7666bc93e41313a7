"""Integer exports are right on every CPU: no u8 x s8 product whose pairs of products can pass int16 (where
ONNX Runtime's AVX2 kernel without VNNI saturates), judged from the graph and its weight codes alone; the
portable and the fast form agree bit for bit; a file that needs VNNI is refused where the kernel saturates.

The last test runs the exports on an emulated AVX2 CPU without VNNI (qemu-x86_64 -cpu Haswell), so it is
meaningful whatever CPU runs the suite; it is skipped where qemu-user is not installed (.ci/run installs it).
"""

from __future__ import annotations

import copy
import json
import os
import platform
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch

from wattless import kernels
from wattless.errors import KernelError
from wattless.export import Tolerance, export_model
from wattless.runtime import load
from wattless.techniques import ApplyContext, QuantConfig, apply_
from wattless.techniques.quantize import integer_weights

from tests.int8_oracle import saturating_products
from tests.tiny_workload import tiny

def _quantized(wl, model, config):
    """``config`` applied to ``model`` with its steps calibrated on a batch, no training: enough for kernels."""
    context = ApplyContext(example_input=wl.train.inputs[:64], total_steps=1,
                           train_batches=lambda: iter([(wl.train.inputs[:64], wl.train.targets[:64])]))
    apply_(model, config, context).finish(model, context)
    model.train()
    with torch.no_grad():
        model(wl.train.inputs[:256])
    return model.eval()


def _saturating_model():
    """The tiny MLP, int8 weights and activations, its first layer's codes at +-127 and inputs big enough to
    put every activation code at its end: the sums vpmaddubsw gets wrong."""
    wl = tiny()
    model = wl.build_model()
    context = ApplyContext(example_input=wl.train.inputs[:64], total_steps=1,
                           train_batches=lambda: iter([(wl.train.inputs[:64], wl.train.targets[:64])]))
    config = QuantConfig(weight_bits=8, act_bits=8, overrides={"4": {"weight_bits": 6}})  # a 6-bit head
    apply_(model, config, context).finish(model, context)
    model.eval()
    with torch.no_grad():
        model(wl.train.inputs[:64])
        first = model[0]
        _, step = integer_weights(first)
        signs = torch.where(torch.arange(first.weight.numel()).reshape(first.weight.shape) % 3 == 0, -1.0, 1.0)
        first.weight.copy_(signs * 127 * step.reshape(-1, 1))
    wl.test.inputs.mul_(25.0)
    wl.test.inputs.abs_()
    return wl, model


@pytest.fixture(scope="module")
def exports(tmp_path_factory):
    folder = tmp_path_factory.mktemp("kernels")
    wl, model = _saturating_model()
    out = {}
    for form in kernels.INT8_KERNELS:
        out[form] = folder / f"{form}.onnx"
        export_model(model, wl, out[form], int8_kernel=form, check=kernels.u8s8_exact() or form == "portable")
    x = wl.test.inputs[:32]
    with torch.no_grad():
        np.save(folder / "x.npy", x.numpy())
        np.save(folder / "torch.npy", model(x).numpy())
    return folder, out, wl, model


@pytest.fixture(scope="module")
def other_kernels(tmp_path_factory):
    """Exports whose products run ConvInteger, QLinearConv (requantized, codes spread to 8 bits) and
    per-token MatMulInteger, per-token symmetric MatMulIntegerToFloat (8-bit weights: u8 x u8 in the portable
    file; 7-bit: u8 x s8 that cannot saturate), per-call DynamicQuantizeMatMul; their inputs beside them."""
    from tests.test_export import _conv_net, _signals, _workload

    folder = tmp_path_factory.mktemp("other-kernels")
    conv = _workload("conv", _conv_net, [_signals(n, s) for n, s in ((512, 0), (128, 1), (128, 2))])
    token = tiny()
    cases = {"conv-int8": (conv, QuantConfig(weight_bits=8, act_bits=8), False),
             "conv-int4-requantized": (conv, QuantConfig(weight_bits=4, act_bits=4), True),
             "per-token": (token, QuantConfig(act_granularity="token", smooth=0.5, weight_step_init="max"), False),
             "per-token-symmetric": (token, QuantConfig(act_granularity="token", act_grid="symmetric", smooth=0.5,
                                                        weight_step_init="max"), False),
             "per-token-symmetric-w7": (token, QuantConfig(weight_bits=7, act_granularity="token", act_grid="symmetric",
                                                           smooth=0.5, weight_step_init="max"), False),
             "dynamic": (token, QuantConfig(act_granularity="dynamic", smooth=0.5, weight_step_init="max"), False)}
    for name, (wl, config, fuse) in cases.items():
        model = _quantized(wl, wl.build_model(), config)
        export_model(model, wl, folder / f"{name}.onnx", requantize=fuse, tolerance=Tolerance(min_agree=0.9))
        np.save(folder / f"{name}.npy", wl.test.inputs[:32].numpy())
    # a one-layer MiniLM on the per-call dynamic grid: QAttention and DynamicQuantizeMatMul, u8 portable weights
    from tests.serve.tiny_encoder import workload as encoder

    enc = encoder()
    model, context = enc.build_model(), ApplyContext(example_input=enc.prepare_inputs(enc.train.take(slice(0, 16)).inputs))
    apply_(model, QuantConfig(act_granularity="dynamic", smooth=0.5, weight_step_init="max"), context).finish(model, context)
    export_model(model, enc, folder / "dynamic-encoder.onnx")
    np.save(folder / "dynamic-encoder.npy", enc.prepare_inputs(enc.test.inputs[:1])["input_ids"].numpy())
    return folder, [*cases, "dynamic-encoder"]


def test_portable_export_has_no_product_that_can_saturate(exports):
    _, out, _, _ = exports
    assert saturating_products(out["portable"]) == []
    assert all(p.exact_everywhere for p in kernels.integer_products(out["portable"]))
    forms = {p.weight_form for p in kernels.integer_products(out["portable"])}
    assert forms == {"u8", "s8"}  # 8-bit weights in u8; the 6-bit head keeps s8: no pair of it can saturate


def test_the_oracle_sees_what_the_vnni_form_risks(exports):
    _, out, _, _ = exports
    bad = saturating_products(out["vnni"])
    assert bad and bad == [p.node for p in kernels.integer_products(out["vnni"]) if not p.exact_everywhere]


def test_small_weight_codes_stay_s8_because_no_pair_can_saturate():
    w = np.array([[64, -64, 3], [-64, 64, -2]], np.int8).T  # (K=3, N=2): 255 * 128 = 32640 <= 32767
    node = onnx.helper.make_node("MatMulInteger", ["A", "W"], ["Y"], name="mm")
    judged = kernels._judge(node, w)
    assert judged.exact_everywhere and judged.worst_pair == 32640
    assert not kernels._judge(node, np.array([[65], [64]], np.int8)).exact_everywhere


def test_portable_and_fast_forms_agree_bit_for_bit(exports):
    folder, out, _, _ = exports
    x = np.load(folder / "x.npy")
    written = load(out["portable"], kernels="as-written")(x)
    model = onnx.load(str(out["portable"]))
    assert kernels.to_fast(model) > 0 and kernels.to_portable(model) > 0  # there and back
    again = folder / "again.onnx"
    onnx.save(model, str(again))
    assert np.array_equal(written, load(again, kernels="as-written")(x))
    if kernels.u8s8_exact():
        fast = load(out["portable"])
        assert fast.kernels.form == "u8s8" and fast.kernels.converted > 0
        assert np.array_equal(written, fast(x))
    np.testing.assert_allclose(written, np.load(folder / "torch.npy"), rtol=1e-3, atol=1e-3)


def test_a_vnni_file_is_refused_where_the_kernel_saturates(exports, monkeypatch):
    _, out, _, _ = exports
    monkeypatch.setattr(kernels, "u8s8_exact", lambda: False)
    with pytest.raises(KernelError, match="--int8-kernel portable") as info:
        load(out["vnni"])
    assert "VNNI" in str(info.value) or "saturation probe" in str(info.value)
    assert load(out["portable"]).kernels.form == "portable"  # the portable one runs as written


def test_the_probe_finds_saturation_in_a_kernel_that_has_it(monkeypatch):
    import onnxruntime as ort

    real = ort.InferenceSession

    class Saturating:  # what AVX2 without VNNI returns for the probe (measured on AMD EPYC, Zen 3)
        def __init__(self, *a, **k):
            self._s = real(*a, **k)

        def run(self, *a, **k):
            y, c = self._s.run(*a, **k)
            return np.full_like(y, 1_048_544), c

    kernels.u8s8_exact.cache_clear()
    monkeypatch.setattr(ort, "InferenceSession", Saturating)
    try:
        assert kernels.u8s8_exact() is False
    finally:
        kernels.u8s8_exact.cache_clear()


def test_cpu_features_are_reported():
    assert set(kernels.cpu_features()) == {"avx2", "avx512_vnni", "avx_vnni", "amx_int8"}
    zen3 = "model name\t: AMD EPYC 7B13\nflags\t\t: fpu sse2 avx avx2 fma\n"
    assert kernels.cpu_features(zen3) == {"avx2": True, "avx512_vnni": False, "avx_vnni": False, "amx_int8": False}
    assert kernels.cpu_name(zen3) == "AMD EPYC 7B13"


_EMULATED = r"""
import json, sys
import numpy as np
import onnxruntime as ort
runs, folder = json.loads(sys.argv[1]), sys.argv[2]
for model, inputs, outputs in runs:  # each file as written, in plain ONNX Runtime
    s = ort.InferenceSession(model, providers=["CPUExecutionProvider"])
    np.save(outputs, s.run(None, {s.get_inputs()[0].name: np.load(inputs)})[0])
from wattless import kernels
from wattless.errors import KernelError
from wattless.runtime import load
out = {"probe_exact": kernels.u8s8_exact()}
np.save(f"{folder}/emulated-runtime.npy", load(f"{folder}/portable.onnx")(np.load(f"{folder}/x.npy")))
try:
    load(f"{folder}/vnni.onnx")
    out["refused"] = None
except KernelError as exc:
    out["refused"] = str(exc)
print(json.dumps(out))
"""


@pytest.mark.skipif(shutil.which("qemu-x86_64") is None or platform.machine() != "x86_64",
                    reason="needs qemu-user (qemu-x86_64) on x86-64 to emulate AVX2 without VNNI")
def test_exports_are_exact_on_avx2_without_vnni(exports, other_kernels):
    folder, _, _, _ = exports
    other, names = other_kernels
    runs = [(str(folder / f"{f}.onnx"), str(folder / "x.npy"), str(folder / f"emulated-{f}.npy"))
            for f in kernels.INT8_KERNELS]
    runs += [(str(other / f"{n}.onnx"), str(other / f"{n}.npy"), str(other / f"emulated-{n}.npy")) for n in names]
    env = {k: v for k, v in os.environ.items() if not k.startswith("OMP")} | {"OMP_NUM_THREADS": "1"}
    done = subprocess.run(["qemu-x86_64", "-cpu", "Haswell-v4", sys.executable, "-c", _EMULATED, json.dumps(runs),
                           str(folder)], capture_output=True, text=True, timeout=600, env=env)
    assert done.returncode == 0, done.stderr[-2000:]
    seen = json.loads(done.stdout.strip().splitlines()[-1])
    assert seen["probe_exact"] is False  # the emulated CPU saturates, as AMD Zen 3 does
    for model, inputs, emulated in runs[:1] + runs[2:]:  # bit for bit the host's answers, every kernel
        assert np.array_equal(np.load(emulated), load(model, kernels="as-written")(np.load(inputs))), model
    ref, host = np.load(folder / "torch.npy"), np.load(runs[0][2])
    assert np.array_equal(np.load(folder / "emulated-runtime.npy"), host)
    np.testing.assert_allclose(host, ref, rtol=1e-3, atol=1e-3)
    vnni = np.load(folder / "emulated-vnni.npy")  # what the s8 form gives there: why portable is the default
    assert np.abs(vnni - ref).max() > 100 * (1e-3 + 1e-3 * np.abs(ref).max())
    assert seen["refused"] and "--int8-kernel portable" in seen["refused"]


def test_other_kernels_are_portable(other_kernels):
    other, names = other_kernels
    ops = set()
    for n in names:
        assert saturating_products(other / f"{n}.onnx") == []
        ops |= {p.op_type for p in kernels.integer_products(other / f"{n}.onnx")}
    assert {"ConvInteger", "QLinearConv", "MatMulInteger", "MatMulIntegerToFloat", "DynamicQuantizeMatMul",
            "QAttention"} <= ops
