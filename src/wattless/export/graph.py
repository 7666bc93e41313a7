"""An ONNX graph under construction, and what every emitter shares while it builds one."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np
import torch

if TYPE_CHECKING:
    from wattless.export.cut import Keep

__all__ = ["Graph", "Ctx", "value", "to_numpy", "inputs_deep", "all_nodes", "route_outputs", "MS", "F32", "I64",
           "U8", "I8", "OPSET"]

MS = "com.microsoft"
OPSET = 18  # the ONNX opset every export writes
F32, I64, U8, I8 = np.float32, np.int64, np.uint8, np.int8


class Graph:
    """Nodes of one (sub)graph; initializers and unique names are shared with the root graph."""

    def __init__(self, root: "Graph | None" = None) -> None:
        self.root = root or self
        self.nodes: list[Any] = []
        # values computed once per (sub)graph and shared by the layers reading them (Q, K, V's smoothed and
        # quantized input); per graph, as a subgraph's values are invisible to its parent and siblings
        self.memo: dict[tuple, Any] = {}
        if root is None:
            self.inits: list[Any] = []
            self.used: dict[str, int] = {}
            self.consts: dict[tuple, str] = {}
            self.qconv: dict[str, dict[str, Any]] = {}  # float output of an integer conv -> its parts
            self.fused: list[str] = []  # layers that became QLinearConv

    def name(self, hint: str) -> str:
        hint = hint.replace("/", ".") or "v"
        used = self.root.used
        n = used.get(hint, 0)
        used[hint] = n + 1
        return hint if n == 0 else f"{hint}_{n}"

    def const(self, value: Any, hint: str, dtype: Any = F32) -> str:
        from onnx import numpy_helper

        array = np.array(value, dtype=dtype, order="C")  # (ascontiguousarray would make scalars 1-D)
        key = (array.dtype.str, array.shape, array.tobytes()) if array.size <= 16 else None
        if key is not None and key in self.root.consts:
            return self.root.consts[key]
        name = self.name(hint)
        self.root.inits.append(numpy_helper.from_array(array, name))
        if key is not None:
            self.root.consts[key] = name
        return name

    def op(self, op_type: str, inputs: list[str], hint: str, *, outputs: int = 1, domain: str = "",
           **attrs: Any) -> Any:
        from onnx import helper

        names = [self.name(f"{hint}.{op_type}" if outputs == 1 else f"{hint}.{op_type}.{i}")
                 for i in range(outputs)]
        self.nodes.append(helper.make_node(op_type, inputs, names, name=names[0], domain=domain, **attrs))
        return names[0] if outputs == 1 else names

    def sub(self) -> "Graph":
        return Graph(self.root)


class Ctx:
    """What every emitter shares: the cut units, and what each layer became."""

    def __init__(self, keep: "Keep", fuse: bool = False) -> None:
        self.keep, self.fuse = keep, fuse
        self.layers: dict[str, str] = {}
        self.names: dict[int, str] = {}
        self.routes: dict[str, tuple[str, int]] = {}  # MoE block -> (output name, experts)
        self.ranks: dict[int, int] = {}  # module -> rank of its input
        self.examples: dict[int, torch.Tensor] = {}  # module -> its first input on the example forward
        self.shapes: dict[int, tuple] = {}  # module -> (input shape, output shape, output dtype) there


def value(name: str, elem: int, shape: list[Any] | None = None) -> Any:
    from onnx import helper

    return helper.make_tensor_value_info(name, elem, shape)


def to_numpy(t: torch.Tensor) -> np.ndarray:
    return t.detach().cpu().float().numpy() if t.is_floating_point() else t.detach().cpu().numpy()


def inputs_deep(node: Any) -> list[str]:
    """A node's inputs, and the outer values its subgraphs (If branches) read."""
    names = list(node.input)
    for attr in node.attribute:
        if attr.g is not None and attr.g.node:
            names += [i for n in attr.g.node for i in inputs_deep(n)]
    return names


def all_nodes(graph: Any) -> list[Any]:
    """The nodes of an ONNX graph and of its If branches, one level down."""
    return [m for n in graph.node for m in [n, *(k for a in n.attribute if a.g is not None for k in a.g.node)]]


def route_outputs(g: Graph, ctx: Ctx, outputs: list[Any]) -> dict[str, dict[str, Any]]:
    """An output ``route.<block>`` (the experts of each token) per MoE block; appends their value infos."""
    from onnx import TensorProto, helper

    routes = {}
    for block, (routed, experts) in ctx.routes.items():
        name = f"route.{block}"
        g.nodes.append(helper.make_node("Identity", [routed], [name], name=name))
        outputs.append(value(name, TensorProto.INT64, None))
        routes[block] = {"output": name, "experts": experts}
    return routes
