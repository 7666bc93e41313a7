"""Why the residual SE-CNN's integer export is slower than ONNX Runtime fp32 at batch 1: what each graph form
costs on ONNX Runtime's CPU provider, measured side by side in one process (1 and 2 intra-op threads).

The SE-CNN (wattless.testing.SECNN, 32 channels, length 40) is about 0.25 M MACs: at batch 1 ONNX Runtime's
time goes to calling operators, not to multiplying. Rows:

- ``ort-fp32``: torch.onnx's fp32 graph as ONNX Runtime optimizes it (BatchNorm folded, SiLU fused to QuickGelu,
  Gemm with its activation).
- ``wattless``: the wattless integer export (ConvInteger / MatMulIntegerToFloat; int8 weights and activations).
- ``qlinear``: the same network written fully in ONNX Runtime's integer operators (QLinearConv,
  QLinearSigmoid + QLinearMul for SiLU, QLinearGlobalAveragePool, QGemm, QLinearMul, QLinearAdd: every
  tensor between layers 8-bit), random codes: the operator count a fully integer graph needs; timing only.
- single operators on the block's (1, 32, 40) tensor: Conv fp32, ConvInteger, QLinearConv (u8), a one-node
  graph (the fixed cost of one ``session.run``), and the cost per extra operator of a chain.

    python bench/secnn_limits.py [--json bench/out/secnn_limits.json]

Nodes are counted after ONNX Runtime's own graph optimizations (what it runs). Every session's idle threads
sleep (allow_spinning 0), since the rows' sessions live side by side.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort
import torch
from onnx import TensorProto as T
from onnx import helper as h
from onnx import numpy_helper as nh
from rich.console import Console
from rich.table import Table

import wattless
from wattless.kernels import cpu_features
from wattless.testing import SECNN

RNG = np.random.default_rng(0)


def _session(model: bytes, threads: int, optimized: str | None = None) -> ort.InferenceSession:
    options = ort.SessionOptions()
    options.intra_op_num_threads, options.log_severity_level = threads, 3
    # idle pool threads sleep: the rows' sessions live side by side, and a spinning pool of one would take
    # the cores from the next (the same for every row)
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    if optimized:
        options.optimized_model_filepath = optimized
    return ort.InferenceSession(model, options, providers=["CPUExecutionProvider"])


def _timed(calls: dict[str, Callable[[], Any]], blocks: int = 25, per_block: int = 300) -> dict[str, float]:
    """Median over blocks of the mean microseconds per call; the rows' blocks interleave, so a change in the
    machine's load falls on every row alike."""
    for call in calls.values():
        for _ in range(200):
            call()
    times: dict[str, list[float]] = {name: [] for name in calls}
    for _ in range(blocks):
        for name, call in calls.items():
            start = time.perf_counter()
            for _ in range(per_block):
                call()
            times[name].append((time.perf_counter() - start) / per_block * 1e6)
    return {name: statistics.median(t) for name, t in times.items()}


def _nodes_run(model: bytes) -> int:
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "opt.onnx")
        _session(model, 1, path)
        return len(onnx.load(path).graph.node)


def _fp32(net: torch.nn.Module, x: torch.Tensor) -> bytes:
    with tempfile.TemporaryDirectory() as tmp, torch.no_grad():
        path = os.path.join(tmp, "fp32.onnx")
        torch.onnx.export(net, (x,), path, dynamo=True, input_names=["x"], output_names=["logits"],
                          dynamic_shapes={"x": {0: "batch"}}, verbose=False)
        return onnx.load(path).SerializeToString()  # external data read back in


def _wattless(net: torch.nn.Module, x: torch.Tensor) -> bytes:
    wattless.prepare(net, {"name": "int8", "quantize": {"weight_bits": 8, "act_bits": 8}}, x[:8])
    net.eval()
    wattless.convert(net)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "int8.onnx"
        wattless.export(net, x, path, requantize=False)
        return path.read_bytes()


class _Builder:
    """A fully integer (QLinear*) SE-CNN with random codes: every tensor between operators is uint8."""

    def __init__(self) -> None:
        self.inits: dict[str, np.ndarray] = {}
        self.nodes: list[Any] = []

    def const(self, value: np.ndarray) -> str:
        name = f"c{len(self.inits)}"
        self.inits[name] = value
        return name

    def qparams(self) -> list[str]:
        return [self.const(np.array(0.05, np.float32)), self.const(np.array(128, np.uint8))]

    def node(self, op: str, inputs: list[str], domain: str = "", **attrs: Any) -> str:
        out = f"t{len(self.nodes)}"
        self.nodes.append(h.make_node(op, inputs, [out], domain=domain, **attrs))
        return out

    def conv(self, x: str, cin: int, cout: int, k: int) -> str:
        w = self.const(RNG.integers(-127, 127, (cout, cin, k)).astype(np.int8))
        return self.node("QLinearConv", [x, *self.qparams(), w, self.const(np.full(cout, 0.01, np.float32)),
                                         self.const(np.zeros(cout, np.int8)), *self.qparams(),
                                         self.const(np.zeros(cout, np.int32))], pads=[k // 2, k // 2])

    def silu(self, x: str) -> str:
        s = self.node("QLinearSigmoid", [x, *self.qparams(), *self.qparams()], "com.microsoft")
        return self.node("QLinearMul", [x, *self.qparams(), s, *self.qparams(), *self.qparams()], "com.microsoft")

    def gemm(self, x: str, cin: int, cout: int, out_float: bool = False) -> str:
        w = self.const(RNG.integers(-127, 127, (cout, cin)).astype(np.int8))
        ins = [x, *self.qparams(), w, self.const(np.array(0.01, np.float32)), self.const(np.array(0, np.int8)),
               self.const(np.zeros(cout, np.int32))]
        return self.node("QGemm", ins + ([] if out_float else self.qparams()), "com.microsoft", transB=1)

    def pool(self, x: str, channels: int) -> str:
        p = self.node("QLinearGlobalAveragePool", [x, *self.qparams(), *self.qparams()], "com.microsoft",
                      channels_last=0)
        return self.node("Reshape", [p, self.const(np.array([-1, channels], np.int64))])

    def model(self, channels: int = 32, depth: int = 2, classes: int = 10) -> bytes:
        x = self.node("Unsqueeze", ["x", self.const(np.array([1], np.int64))])
        x = self.node("QuantizeLinear", [x, *self.qparams()])
        hidden = self.silu(self.conv(x, 1, channels, 5))
        for _ in range(depth):
            h1 = self.silu(self.conv(hidden, channels, channels, 3))
            gate = self.gemm(self.silu(self.gemm(self.pool(h1, channels), channels, channels // 2)),
                             channels // 2, channels)
            gate = self.node("QLinearSigmoid", [gate, *self.qparams(), *self.qparams()], "com.microsoft")
            gate = self.node("Unsqueeze", [gate, self.const(np.array([2], np.int64))])
            scaled = self.node("QLinearMul", [h1, *self.qparams(), gate, *self.qparams(), *self.qparams()],
                               "com.microsoft")
            hidden = self.node("QLinearAdd", [hidden, *self.qparams(), scaled, *self.qparams(), *self.qparams()],
                               "com.microsoft")
        out = self.gemm(self.pool(hidden, channels), channels, classes, out_float=True)
        graph = h.make_graph(self.nodes, "qlinear_secnn", [h.make_tensor_value_info("x", T.FLOAT, ["batch", 40])],
                             [h.make_tensor_value_info(out, T.FLOAT, None)],
                             [nh.from_array(v, k) for k, v in self.inits.items()])
        opsets = [h.make_opsetid("", 18), h.make_opsetid("com.microsoft", 1)]
        return h.make_model(graph, opset_imports=opsets).SerializeToString()


def _single(op: str, x: np.ndarray, inits: dict[str, np.ndarray], inputs: list[str], out_type: int,
            **attrs: Any) -> bytes:
    elem = {np.dtype(np.float32): T.FLOAT, np.dtype(np.uint8): T.UINT8}[x.dtype]
    graph = h.make_graph([h.make_node(op, ["x", *inputs], ["y"], **attrs)], op,
                         [h.make_tensor_value_info("x", elem, list(x.shape))], [h.make_tensor_value_info("y", out_type, None)],
                         [nh.from_array(v, k) for k, v in inits.items()])
    return h.make_model(graph, opset_imports=[h.make_opsetid("", 18)]).SerializeToString()


def _chain(n: int, x: np.ndarray) -> bytes:
    nodes = [h.make_node("Relu", [f"v{i}"], [f"v{i + 1}"]) for i in range(n)]
    graph = h.make_graph(nodes, "chain", [h.make_tensor_value_info("v0", T.FLOAT, list(x.shape))],
                         [h.make_tensor_value_info(f"v{n}", T.FLOAT, None)])
    return h.make_model(graph, opset_imports=[h.make_opsetid("", 18)]).SerializeToString()


def operators() -> dict[str, tuple[bytes, dict[str, np.ndarray]]]:
    x = RNG.standard_normal((1, 32, 40)).astype(np.float32)
    xq = RNG.integers(0, 255, (1, 32, 40)).astype(np.uint8)
    wq = RNG.integers(-127, 127, (32, 32, 3)).astype(np.int8)
    scale, zero = np.array(0.05, np.float32), np.array(128, np.uint8)
    return {
        "one Identity (fixed cost of a run)": (_single("Identity", x, {}, [], T.FLOAT), {"x": x}),
        "Conv fp32 32x32x3": (_single("Conv", x, {"w": RNG.standard_normal((32, 32, 3)).astype(np.float32),
                                                  "b": np.zeros(32, np.float32)}, ["w", "b"], T.FLOAT, pads=[1, 1]),
                              {"x": x}),
        "ConvInteger u8 x u8": (_single("ConvInteger", xq, {"w": (wq.astype(np.int16) + 128).astype(np.uint8),
                                                            "z": zero}, ["w", "z"], T.INT32, pads=[1, 1]), {"x": xq}),
        "QLinearConv u8 x s8": (_single("QLinearConv", xq, {"s": scale, "z": zero, "w": wq,
                                                           "ws": np.full(32, 0.01, np.float32),
                                                           "wz": np.zeros(32, np.int8), "b": np.zeros(32, np.int32)},
                                        ["s", "z", "w", "ws", "wz", "s", "z", "b"], T.UINT8, pads=[1, 1]), {"x": xq}),
        "1 Relu": (_chain(1, x), {"v0": x}),
        "21 Relu": (_chain(21, x), {"v0": x}),
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--json", default="bench/out/secnn_limits.json")
    args = parser.parse_args()
    console = Console(width=max(Console().width, 120))
    torch.manual_seed(0)
    x = torch.randn(256, 40)
    graphs = {"ort-fp32": _fp32(SECNN(classes=10, channels=32).eval(), x[:1]),
              "wattless": _wattless(SECNN(classes=10, channels=32), x),
              "qlinear": _Builder().model()}
    feed = {"x": x[:1].numpy()}
    rows = []
    for threads in (1, 2):
        calls = {}
        for name, model in graphs.items():
            session = _session(model, threads)
            names = session.get_inputs()[0].name
            calls[name] = (lambda s=session, n=names: s.run(None, {n: feed["x"]}))
        times = _timed(calls)
        for name, model in graphs.items():
            rows.append({"graph": name, "threads": threads, "nodes_run": _nodes_run(model),
                         "us_per_call": times[name], "vs_ort_fp32": times["ort-fp32"] / times[name]})
    op_calls = {name: (lambda s=_session(model, 1), f=op_feed: s.run(None, f))
                for name, (model, op_feed) in operators().items()}
    ops = [{"operator": name, "threads": 1, "us_per_call": us} for name, us in _timed(op_calls).items()]
    chain = {o["operator"]: o["us_per_call"] for o in ops}
    per_node = (chain["21 Relu"] - chain["1 Relu"]) / 20

    table = Table(title="SE-CNN at batch 1 on ONNX Runtime (measured here)")
    for col in ("graph", "threads", "nodes run", "us / call", "x ort-fp32 speed"):
        table.add_column(col, justify="right" if col != "graph" else "left")
    for r in rows:
        table.add_row(r["graph"], str(r["threads"]), str(r["nodes_run"]), f"{r['us_per_call']:.1f}",
                      f"{r['vs_ort_fp32']:.2f}x")
    console.print(table)
    ops_table = Table(title="single operators on (1, 32, 40), 1 thread")
    ops_table.add_column("operator")
    ops_table.add_column("us / call", justify="right")
    for o in ops:
        ops_table.add_row(o["operator"], f"{o['us_per_call']:.2f}")
    console.print(ops_table)
    console.print(f"each extra operator in a chain: {per_node:.2f} us (Relu on 1280 floats)")
    result = {"bench": "secnn_limits", "machine": {"cpu_features": cpu_features(), "cores": os.cpu_count(),
                                                   "onnxruntime": ort.__version__, "torch": torch.__version__,
                                                   "load_average": os.getloadavg()},
              "rows": rows, "operators": ops, "us_per_extra_operator": per_node}
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps(result, indent=2))
    console.print(f"written to {args.json}")


if __name__ == "__main__":
    main()
