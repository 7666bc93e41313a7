"""Early exits: classifier heads part-way up a chain of blocks; an input stops at the first confident one.

    handle = apply_(model, ExitConfig(after=["relu1", "relu2"]), context)   # model becomes an EarlyExitModel
    ... loss = task_loss + handle.loss(model, inputs, {"logits": logits, "targets": targets})
    handle.finish(model, context)     # thresholds from context.val = (inputs, targets)
    model.eval(); model(x); model.last_exits   # (B,) exit index per input; len(after) = the final head

Thresholds are on the maximum softmax probability (BranchyNet, Teerapittayanon et al. 2016; the calibrated
variant of Schwartz et al. 2020). While training, the soft probability of exiting at j is
c_j = sigmoid((max softmax_j - threshold_j) / temperature), and the probability of reaching a unit behind
exits j < k is prod_j (1 - c_j), set on it as ``wattless_soft_prob``.
"""

from __future__ import annotations

import copy
import math
from collections import OrderedDict
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from statistics import NormalDist
from typing import Any, Literal

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import nn

from wattless.techniques.base import ApplyContext, Technique, TechniqueConfig, register

__all__ = ["ExitConfig", "ExitHead", "EarlyExitModel", "ExitTechnique", "greedy_thresholds"]

# Until finish() calibrates: the soft exit probabilities while training are measured against this.
_INITIAL_THRESHOLD = 0.9
_CHAIN_ATTRS = ("features", "blocks")


class ExitConfig(TechniqueConfig):
    """Exit heads after the named blocks; thresholds calibrated to lose at most ``target_accuracy_drop``."""

    kind = "early_exit"
    after: list[str] = Field(min_length=1)
    target_accuracy_drop: float = Field(0.01, ge=0.0, le=1.0)  # absolute, accuracy as a fraction 0..1
    loss_weight: float = Field(1.0, ge=0.0)
    head: Literal["linear", "mlp"] = "linear"
    temperature: float = Field(0.1, gt=0.0)
    # How sure the drop must be to hold beyond the calibration data (one-sided); 0.5: exactly on it.
    confidence: float = Field(0.9, ge=0.5, lt=1.0)


class ExitHead(nn.Module):
    """Global average pool over the dims after the channels (if any), then a linear or 2-layer classifier."""

    def __init__(self, channels: int, classes: int, kind: str = "linear") -> None:
        super().__init__()
        self.classifier = nn.Linear(channels, classes) if kind == "linear" else nn.Sequential(
            nn.Linear(channels, channels), nn.ReLU(), nn.Linear(channels, classes))

    def forward(self, h: torch.Tensor) -> torch.Tensor:  # (B, C, *spatial) or (B, C) -> (B, classes)
        return self.classifier(h.flatten(2).mean(-1) if h.dim() > 2 else h)


def greedy_thresholds(conf: torch.Tensor, correct: torch.Tensor, final_correct: torch.Tensor, max_drop: float,
                      confidence: float = 0.5) -> torch.Tensor:
    """Per exit, in order, the lowest threshold keeping accuracy >= final accuracy - max_drop.

    conf, correct: (K, N) max softmax probability and correctness of each exit head; final_correct: (N,).
    Later exits are off while an earlier one is chosen. A threshold of inf: the exit is never taken.
    The drop is (losses - gains) / N, losses (gains) being inputs the exits get wrong (right) and the final
    head right (wrong). With ``confidence`` > 0.5 it must hold with z * sqrt(losses + gains) to spare, a
    one-sided paired (McNemar) bound: the plain rule picks thresholds where the held-out data happens to be
    kind, and loses more than ``max_drop`` on new data.
    """
    n_exits, n = conf.shape
    z, budget = NormalDist().inv_cdf(confidence), max_drop * n + 1e-6
    thresholds = torch.full((n_exits,), math.inf)
    running, lost, gained = torch.ones(n, dtype=torch.bool), 0.0, 0.0
    for k in range(n_exits):
        c, order = conf[k][running].sort(descending=True)
        ok_exit, ok_final = correct[k][running][order], final_correct[running][order]
        zero = torch.zeros(1)
        # [m]: losses and gains when the m most confident running inputs exit here, the rest at the end
        losses = lost + torch.cat([zero, (~ok_exit & ok_final).float().cumsum(0)])
        gains = gained + torch.cat([zero, (ok_exit & ~ok_final).float().cumsum(0)])
        feasible = losses - gains + z * (losses + gains).sqrt() <= budget
        feasible[1:-1] &= c[:-1] > c[1:]  # a threshold cannot split equal confidences
        m = int(feasible.nonzero().max()) if bool(feasible.any()) else 0
        if m == 0:
            continue
        thresholds[k] = c[m - 1] if m == c.numel() else (c[m - 1] + c[m]) / 2  # the middle of the gap
        lost, gained = float(losses[m]), float(gains[m])
        running &= conf[k] < thresholds[k]
    return thresholds


def _first_exit(conf: torch.Tensor, thresholds: torch.Tensor) -> torch.Tensor:
    """conf (K, N) -> (N,) index of the first exit whose threshold is met; K where none is."""
    met = conf >= thresholds[:, None].to(conf.device)
    return torch.where(met.any(0), met.float().argmax(0), conf.shape[0])


class EarlyExitModel(nn.Module):
    """A chain of ``blocks``, ``exits`` heads after some of them, and an optional ``tail`` (the final head).

    Training: every block and head runs; returns the final logits, keeps ``exit_logits`` for the loss, sets
    ``wattless_soft_prob``. Eval: each input stops at its first exit with max softmax >= its threshold; later
    blocks run only on the inputs still going. ``wattless_full_path``: everything runs, same output.
    ``last_exits`` (B,): the exit each input took (``len(exits)`` = the final head).
    """

    def __init__(self, blocks: nn.Sequential, exits: dict[str, nn.Module], tail: nn.Module | None,
                 *, temperature: float = 0.1, prefix: str = "") -> None:
        super().__init__()
        self.blocks = blocks
        order = [name for name, _ in blocks.named_children() if name in exits]
        self.exits = nn.ModuleDict(OrderedDict((name, exits[name]) for name in order))
        self.tail = tail
        self.temperature, self.prefix = temperature, prefix
        self.register_buffer("thresholds", torch.full((len(order),), _INITIAL_THRESHOLD))
        self.exit_logits: list[torch.Tensor] | None = None  # (B, classes) per exit, last full forward
        self.last_exits: torch.Tensor | None = None
        self.calibration: dict[str, Any] | None = None

    @property
    def exit_names(self) -> list[str]:
        """The original names of the blocks the exits follow, in order."""
        return [f"{self.prefix}{name}" for name in self.exits]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.training:
            exit_logits, final = self._run_all(x)
            self.exit_logits = exit_logits
            conf = torch.stack([logits.softmax(-1).amax(-1) for logits in exit_logits])  # (K, B)
            self.set_soft_probs(conf)
            self.last_exits = _first_exit(conf.detach(), self.thresholds)
            return final
        self.set_soft_probs(None)  # they describe the last training forward only
        if getattr(self, "wattless_full_path", False):
            return self._forward_full_eval(x)
        self.exit_logits = None
        return self._forward_hard(x)

    def _run_all(self, x: torch.Tensor) -> tuple[list[torch.Tensor], torch.Tensor]:
        exit_logits, h = [], x
        for name, block in self.blocks.named_children():
            h = block(h)
            if name in self.exits:
                exit_logits.append(self.exits[name](h))
        return exit_logits, (self.tail(h) if self.tail is not None else h)

    def _forward_full_eval(self, x: torch.Tensor) -> torch.Tensor:
        exit_logits, final = self._run_all(x)
        self.exit_logits = exit_logits
        stacked = torch.stack([*exit_logits, final])  # (K + 1, B, classes)
        conf = stacked[:-1].softmax(-1).amax(-1)  # (K, B)
        self.last_exits = _first_exit(conf, self.thresholds)
        return stacked[self.last_exits, torch.arange(x.shape[0], device=x.device)]

    def _forward_hard(self, x: torch.Tensor) -> torch.Tensor:
        n = x.shape[0]
        idx = torch.arange(n, device=x.device)  # rows of the batch still running
        taken = torch.full((n,), len(self.exits), dtype=torch.long, device=x.device)
        out, h, k = None, x, 0
        for name, block in self.blocks.named_children():
            h = block(h)
            if name not in self.exits:
                continue
            logits = self.exits[name](h)
            out = logits.new_empty(n, logits.shape[-1]) if out is None else out
            done = logits.softmax(-1).amax(-1) >= self.thresholds[k]
            k += 1
            if bool(done.any()):
                out[idx[done]], taken[idx[done]] = logits[done], k - 1
                idx, h = idx[~done], h[~done]
                if idx.numel() == 0:
                    break
        if idx.numel():
            final = self.tail(h) if self.tail is not None else h
            out = final.new_empty(n, final.shape[-1]) if out is None else out
            out[idx] = final
        self.last_exits = taken
        return out

    def set_soft_probs(self, conf: torch.Tensor | None) -> None:
        """conf (K, B) max softmax per exit; None clears the probabilities."""
        exiting = None if conf is None else torch.sigmoid((conf - self.thresholds[:, None]) / self.temperature)
        reach, k = None, 0  # None: runs for every input
        for name, block in self.blocks.named_children():
            block.wattless_soft_prob = reach
            if name in self.exits:
                self.exits[name].wattless_soft_prob = reach
                if exiting is not None:
                    reach = 1 - exiting[k] if reach is None else reach * (1 - exiting[k])
                k += 1
        if self.tail is not None:
            self.tail.wattless_soft_prob = reach

    @torch.no_grad()
    def calibrate(self, inputs: torch.Tensor, targets: torch.Tensor, max_drop: float, *,
                  confidence: float = 0.9, batch_size: int = 256) -> dict[str, Any]:
        """Set the thresholds from labelled held-out data; returns (and keeps) the calibration stats."""
        device = self.thresholds.device
        with _eval(self):
            chunks = [self._run_all(inputs[i : i + batch_size].to(device))
                      for i in range(0, len(inputs), batch_size)]
        exit_logits = torch.stack([torch.cat([c[0][k] for c in chunks]) for k in range(len(self.exits))])
        final = torch.cat([c[1] for c in chunks])  # (N, classes)
        targets = targets.to(final.device)
        conf = exit_logits.softmax(-1).amax(-1).cpu()  # (K, N)
        correct = (exit_logits.argmax(-1) == targets).cpu()  # (K, N)
        final_correct = (final.argmax(-1) == targets).cpu()
        self.thresholds.copy_(greedy_thresholds(conf, correct, final_correct, max_drop, confidence))
        self.calibration = self._stats(conf, torch.cat([correct, final_correct[None]]))
        return self.calibration

    def _stats(self, conf: torch.Tensor, correct: torch.Tensor) -> dict[str, Any]:
        """conf (K, N); correct (K + 1, N), the final head last."""
        taken = _first_exit(conf, self.thresholds.cpu())
        n_paths, n = correct.shape
        counts = torch.bincount(taken, minlength=n_paths)
        took = correct[taken, torch.arange(n)]
        return {
            "exit_fraction": [float(c) / n for c in counts],
            "exit_accuracy": [float(took[taken == k].float().mean()) if counts[k] else None
                              for k in range(n_paths)],
            "head_accuracy": [float(row.float().mean()) for row in correct],
            "val_accuracy": float(took.float().mean()),
            "val_accuracy_full": float(correct[-1].float().mean()),
            "val_inputs": n,
        }

    @classmethod
    def from_chain(cls, model: nn.Module, after: list[str], example_input: torch.Tensor, *,
                   head: str = "linear", temperature: float = 0.1) -> "EarlyExitModel":
        """Wrap a chain classifier (nn.Sequential, or a module with a Sequential ``features``/``blocks``)."""
        try:
            container, prefix, tail = _chain(model)
        except ValueError:  # not a chain of blocks: cut the traced forward after the named modules instead
            container, prefix, tail = split_traced(model, after), "", None
            after = [_segment_name(a) for a in after]
        chosen = _validate_after(container, prefix, after, has_tail=tail is not None)
        if not isinstance(example_input, torch.Tensor):
            raise ValueError(f"early exits need a tensor example input, got {type(example_input).__name__}: "
                             "they wrap chain classifiers whose forward takes one tensor")
        outputs, classes = _trace_chain(model, container, tail, example_input)
        exits = _build_heads(outputs, chosen, classes, head)
        wrapper = cls(nn.Sequential(OrderedDict(container.named_children())), exits, tail,
                      temperature=temperature, prefix=prefix)
        return wrapper.train(model.training)


# --- building ---------------------------------------------------------------------------------------

def _chain(model: nn.Module) -> tuple[nn.Sequential, str, nn.Module | None]:
    """The chain's container, the prefix of its blocks' names, and the rest of the forward (None: nothing)."""
    if isinstance(model, nn.Sequential):
        return model, "", None
    for attr in _CHAIN_ATTRS:
        if isinstance(getattr(model, attr, None), nn.Sequential):
            return getattr(model, attr), f"{attr}.", _tail_of(model, attr)
    children = [name for name, _ in model.named_children()]
    raise ValueError(
        f"early exits need a chain of blocks, but {type(model).__name__} is not an nn.Sequential and has no "
        f"nn.Sequential named {' or '.join(_CHAIN_ATTRS)} (its children: {children}); put the backbone in "
        "`self.features = nn.Sequential(...)` with the classifier after it"
    )


def _segment_name(path: str) -> str:
    return path.replace(".", "_")


class _ExitTracer(torch.fx.Tracer):
    """torch.fx with the exits' modules and wattless's own modules (experts, quantized layers) as leaves."""

    def __init__(self, cuts: set[str]) -> None:
        super().__init__()
        self.cuts = cuts

    def is_leaf_module(self, m: nn.Module, qualname: str) -> bool:
        return (qualname in self.cuts or type(m).__module__.startswith("wattless.")
                or super().is_leaf_module(m, qualname))


def _cut_nodes(graph: torch.fx.Graph, after: list[str]) -> list[torch.fx.Node]:
    calls = {a: [n for n in graph.nodes if n.op == "call_module" and n.target == a] for a in after}
    missing = [a for a, nodes in calls.items() if not nodes]
    twice = [a for a, nodes in calls.items() if len(nodes) > 1]
    if missing or twice:
        what = f"{missing} never called by forward" if missing else f"{twice} called more than once"
        raise ValueError(f"ExitConfig.after: {what}; name modules the forward calls once (e.g. the repeated "
                         "blocks' paths such as 'blocks.0')")
    order = {n: i for i, n in enumerate(graph.nodes)}
    return sorted((nodes[0] for nodes in calls.values()), key=order.__getitem__)


def _crossing(graph: torch.fx.Graph, cut: torch.fx.Node) -> list[str]:
    """Values computed up to ``cut`` (inclusive) and read after it, other than cut's output and attributes."""
    nodes = list(graph.nodes)
    i = nodes.index(cut)
    before = {n for n in nodes[: i + 1] if n.op != "get_attr"}
    return sorted({a.name for n in nodes[i + 1 :] for a in n.all_input_nodes if a in before and a is not cut})


def _segment(root: nn.Module, graph: torch.fx.Graph, start: torch.fx.Node | None,
             stop: torch.fx.Node | None) -> torch.fx.GraphModule:
    """The nodes after ``start`` up to ``stop`` (None: to the output) as a module of one input."""
    nodes = list(graph.nodes)
    first = nodes.index(start) + 1 if start is not None else 0
    last = nodes.index(stop) if stop is not None else len(nodes) - 1
    sub, env = torch.fx.Graph(), {}
    x = sub.placeholder("x")
    if start is not None:
        env[start] = x
    for node in nodes[first : last + 1]:
        if node.op == "placeholder":
            env[node] = x
        elif node.op == "output":
            sub.output(env[node.args[0]] if isinstance(node.args[0], torch.fx.Node) else node.args[0])
        else:
            for attr in (a for a in node.all_input_nodes if a not in env and a.op == "get_attr"):
                env[attr] = sub.node_copy(attr)
            env[node] = sub.node_copy(node, env.__getitem__)
    if stop is not None:
        sub.output(env[stop])
    return torch.fx.GraphModule(root, sub)


def split_traced(model: nn.Module, after: list[str]) -> nn.Sequential:
    """Any model whose forward torch.fx can trace, as a chain cut after the modules named in ``after``:
    segment k runs from the previous cut to the module after[k] (named after it), the last to the output."""
    try:
        graph = _ExitTracer(set(after)).trace(model)
    except Exception as exc:  # noqa: BLE001 - forwards with control flow on values
        raise ValueError(f"early exits need a chain of blocks or a forward torch.fx can trace; {type(model).__name__}"
                         f" is neither ({type(exc).__name__}: {exc}); name modules of a traceable forward") from None
    cuts = _cut_nodes(graph, after)
    for cut in cuts:
        crossing = _crossing(graph, cut)
        if crossing:
            raise ValueError(f"ExitConfig.after: {cut.target!r} is not a cut of {type(model).__name__}'s forward: "
                             f"{crossing} computed before it are read after it (a skip across it); name the block "
                             "that contains the skip instead")
    segments = OrderedDict()
    for start, stop in zip([None, *cuts], [*cuts, None]):
        name = _segment_name(stop.target) if stop is not None else "rest"
        segments[name] = _segment(model, graph, start, stop)
    return nn.Sequential(segments)


def _tail_of(model: nn.Module, attr: str) -> nn.Module:
    """The model with its chain replaced by Identity: its forward then runs only what follows the chain."""
    tail = copy.copy(model)  # shallow: shares the head's modules and parameters
    modules = dict(model._modules)
    modules[attr] = nn.Identity()
    tail.__dict__.update(_modules=modules, _parameters=dict(model._parameters), _buffers=dict(model._buffers))
    for key, value in vars(tail).items():
        if "hooks" in key:  # the root's hooks belong to the whole model, not to its tail
            tail.__dict__[key] = type(value)()
    return tail


def _validate_after(container: nn.Sequential, prefix: str, after: list[str], *, has_tail: bool) -> list[str]:
    names = [name for name, _ in container.named_children()]
    allowed = names if has_tail else names[:-1]  # no exit after the final classifier itself
    valid = [f"{prefix}{name}" for name in allowed]
    chosen = [a[len(prefix):] if prefix and a.startswith(prefix) else a for a in after]
    bad = [a for a, c in zip(after, chosen) if c not in allowed]
    if bad:
        raise ValueError(f"ExitConfig.after names {bad} that are not blocks an exit can follow; "
                         f"valid names: {valid}")
    if len(set(chosen)) != len(chosen):
        raise ValueError(f"ExitConfig.after names a block twice ({after}): give each block once")
    return chosen


@contextmanager
def _eval(model: nn.Module) -> Iterator[None]:
    modes = [(m, m.training) for m in model.modules()]
    model.eval()
    try:
        yield
    finally:
        for m, training in modes:
            m.training = training


@torch.no_grad()
def _trace_chain(model: nn.Module, container: nn.Sequential, tail: nn.Module | None,
                 x: torch.Tensor) -> tuple[dict[str, torch.Tensor], int]:
    """Each block's output on x and the number of classes, after checking that blocks then tail give the
    model's own output."""
    problem = ""
    with _eval(model):
        expected = model(x)
        try:
            outputs, h = {}, x
            for name, block in container.named_children():
                h = outputs[name] = block(h)
            final = tail(h) if tail is not None else h
            if final.shape != expected.shape or not torch.allclose(final, expected, rtol=1e-4, atol=1e-5):
                problem = "its blocks then the rest of forward give a different output"
        except Exception as exc:  # the chain alone cannot even run
            problem = f"its blocks alone fail ({type(exc).__name__}: {exc})"
    if problem:
        raise ValueError(
            f"{type(model).__name__}.forward does more than run its blocks then its head: {problem}; "
            "early exits need forward = head(features(x)), so move any preprocessing into the chain"
        )
    if expected.dim() != 2:
        raise ValueError(f"early exits need a classifier with (B, classes) logits, but the model returns "
                         f"shape {tuple(expected.shape)}")
    return outputs, expected.shape[-1]


def _build_heads(outputs: dict[str, torch.Tensor], chosen: list[str], classes: int,
                 kind: str) -> dict[str, nn.Module]:
    heads = {}
    for name in chosen:
        h = outputs[name]  # (B, C, *spatial) or (B, C)
        heads[name] = ExitHead(h.shape[1], classes, kind).to(h.device, h.dtype)
    return heads


def _become(model: nn.Module, wrapper: EarlyExitModel) -> None:
    """apply_ works in place and the forward itself changes, so the model object becomes the wrapper."""
    kept = {key: value for key, value in vars(model).items() if key.startswith("wattless_")}
    object.__setattr__(model, "__class__", EarlyExitModel)
    object.__setattr__(model, "__dict__", {**vars(wrapper), **kept})


# --- the technique ----------------------------------------------------------------------------------

def _exit_model(model: nn.Module) -> EarlyExitModel:
    for module in model.modules():
        if isinstance(module, EarlyExitModel):
            return module
    raise ValueError(f"{type(model).__name__} has no early exits: pass the model that apply_(model, "
                     "ExitConfig(...), context) transformed")


def _labelled(val: Any) -> tuple[torch.Tensor, torch.Tensor]:
    if isinstance(val, (tuple, list)) and len(val) == 2:
        return val[0], val[1]
    if getattr(val, "targets", None) is not None:  # a workloads Split
        return val.inputs, val.targets
    raise ValueError("early-exit calibration needs labelled held-out data: set context.val = "
                     f"(inputs, targets) tensors, or a Split with targets; got {type(val).__name__}")


class ExitTechnique(Technique):
    """Live handle: the exit heads' loss, threshold calibration, and the exit distribution."""

    name = "early_exit"

    def __init__(self, config: ExitConfig) -> None:
        self.config = config

    def loss(self, model: nn.Module, inputs: Any, outputs: Any) -> torch.Tensor | None:
        """loss_weight x mean cross-entropy of the exit heads on the last training forward.

        ``outputs``: {"logits": ..., "targets": (B,) class indices}; only the targets are read.
        """
        exit_logits = _exit_model(model).exit_logits
        if not exit_logits or not model.training or self.config.loss_weight == 0:
            return None
        if not isinstance(outputs, Mapping) or "targets" not in outputs:
            raise ValueError("the early-exit loss needs the labels: call loss(model, inputs, "
                             "{'logits': logits, 'targets': targets})")
        targets = outputs["targets"]
        losses = torch.stack([F.cross_entropy(logits, targets) for logits in exit_logits])
        return self.config.loss_weight * losses.mean()

    def finish(self, model: nn.Module, context: ApplyContext) -> None:
        """Calibrate the thresholds on context.val (inputs, targets)."""
        if context.val is None:
            raise ValueError("early-exit calibration needs held-out data: give the context val=(inputs, targets) "
                             "(ApplyContext(val=...), or extras['val']) before finish()")
        inputs, targets = _labelled(context.val)
        _exit_model(model).calibrate(inputs, targets, self.config.target_accuracy_drop,
                                      confidence=self.config.confidence)

    def report(self, model: nn.Module) -> dict[str, Any]:
        """Thresholds (None: never exits) and, once calibrated, per path on the val data (the exits in order,
        the final head last): exit_fraction, exit_accuracy (of the inputs taking it), head_accuracy (on all)."""
        exits = _exit_model(model)
        thresholds = [None if math.isinf(t) else float(t) for t in exits.thresholds.tolist()]
        return {"after": exits.exit_names, "thresholds": thresholds,
                "calibrated": exits.calibration is not None, **(exits.calibration or {})}


@register(ExitConfig, step="convert")
def _convert_exits(model: nn.Module, config: ExitConfig | None) -> None:
    """The form export reads: each EarlyExitModel with its calibrated thresholds and no training state."""
    for m in model.modules():
        if isinstance(m, EarlyExitModel):
            m.exit_logits = None
            m.set_soft_probs(None)


@register(ExitConfig)
def _apply_exits(model: nn.Module, config: ExitConfig, context: ApplyContext) -> ExitTechnique:
    wrapper = EarlyExitModel.from_chain(model, config.after, context.example_input, head=config.head,
                                        temperature=config.temperature)
    _become(model, wrapper)
    return ExitTechnique(config)
