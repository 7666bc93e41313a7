"""Mixture of experts from a dense model (MoEfication; Zhang et al., "MoEfication: Transformer Feed-forward
Layers are Mixtures of Experts", Findings of ACL 2022).

An MLP block fc1 (d -> h) -> activation -> fc2 (h -> d) is split into experts: fc1's h neurons are clustered
(balanced k-means on the normalised rows of fc1's weight) into groups; expert e holds fc1's rows and fc2's
columns of its neurons. The sum of all experts plus fc2's bias is the dense block, exactly. A router picks the
top-k experts per token, so a token runs about k/E of the block.

    handle = apply_(model, MoEConfig(experts=4, top_k=1), context)
    ... loss = task_loss + handle.loss(model, inputs, outputs)     # load balancing
    handle.report(model)                                             # expert load, router entropy

Gates carry the value 1 and the gradient of the router's probability (straight through): the experts are
slices of one trained layer, so weighting them by gates would change what the dense layer computed.
"""

from __future__ import annotations

import copy
import fnmatch
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from pydantic import Field, model_validator
from torch import nn
from torch.utils._python_dispatch import _get_current_dispatch_mode

from wattless.energy.count import run_model
from wattless.techniques.base import ApplyContext, Technique, TechniqueConfig, register

__all__ = ["MoEConfig", "MoEMLP", "MoETechnique", "MLPBlock", "cluster_neurons", "find_mlp_blocks", "moefy"]

_KMEANS_ITERS = 20
_ROUTER_FIT_BATCHES = 4  # batches of context.train_batches used to fit the routers at apply time
_ROUTER_FIT_TOKENS = 4096  # tokens per block kept for the fit
_ROUTER_FIT_STEPS = 100
_ROUTER_FIT_LR = 1e-2


class MoEConfig(TechniqueConfig):
    """Split MLP blocks into experts and route each token to ``top_k`` of them."""

    kind = "moe"
    experts: int = Field(4, ge=1)
    top_k: int = Field(1, ge=1)
    blocks: list[str] = ["auto"]  # globs over MLP block names (find_mlp_blocks); "auto": all of them
    balance_weight: float = Field(0.01, ge=0.0)
    router_hidden: int | None = Field(None, ge=1)

    @model_validator(mode="after")
    def _top_k_within_experts(self) -> "MoEConfig":
        if self.top_k > self.experts:
            raise ValueError(f"top_k={self.top_k} exceeds experts={self.experts}: use top_k <= experts")
        return self


# --- clustering ---------------------------------------------------------------------------------------

def _capacities(n: int, groups: int) -> torch.Tensor:
    """Group sizes as equal as possible: n // groups, the first n % groups one larger."""
    return torch.tensor([n // groups + (1 if g < n % groups else 0) for g in range(groups)])


def _balanced_assign(sim: torch.Tensor, caps: torch.Tensor) -> torch.Tensor:
    """sim (n, G): each point goes to its most similar group with room; groups take their best proposers."""
    n, groups = sim.shape
    assign = torch.full((n,), -1, dtype=torch.long)
    left = caps.clone()
    while bool((assign < 0).any()):
        free = assign < 0
        score = sim.masked_fill(~free[:, None] | (left == 0)[None, :], -math.inf)
        best = score.argmax(1)
        for g in range(groups):
            cand = (free & (best == g)).nonzero().squeeze(1)
            room = int(left[g])
            if cand.numel() == 0 or room == 0:
                continue
            take = cand[score[cand, g].topk(min(room, cand.numel())).indices]
            assign[take] = g
            left[g] -= take.numel()
    return assign


def cluster_neurons(fc1_weight: torch.Tensor, groups: int, *, seed: int = 0) -> list[torch.Tensor]:
    """Balanced spherical k-means of fc1's rows (h, d): ``groups`` index tensors of sizes h//groups (+1)."""
    h = fc1_weight.shape[0]
    if groups > h:
        raise ValueError(f"cannot split {h} neurons into {groups} experts: use experts <= {h}")
    rows = F.normalize(fc1_weight.detach().to("cpu", torch.float32), dim=1)  # (h, d)
    caps = _capacities(h, groups)
    gen = torch.Generator().manual_seed(seed)
    centroids = rows[torch.randperm(h, generator=gen)[:groups]]  # (G, d)
    assign = _balanced_assign(rows @ centroids.T, caps)
    for _ in range(_KMEANS_ITERS):
        centroids = F.normalize(torch.zeros_like(centroids).index_add(0, assign, rows), dim=1)
        new = _balanced_assign(rows @ centroids.T, caps)
        if torch.equal(new, assign):
            break
        assign = new
    return [(assign == g).nonzero().squeeze(1) for g in range(groups)]


# --- the module ---------------------------------------------------------------------------------------

class _Fn(nn.Module):
    """A plain activation function as a module, so experts can hold it."""

    def __init__(self, fn: Callable[[torch.Tensor], torch.Tensor]) -> None:
        super().__init__()
        self.fn = fn

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fn(x)


class _Expert(nn.Module):
    """One slice of the dense block: fc1 rows and fc2 columns of its neurons (fc2's bias stays outside)."""

    def __init__(self, fc1: nn.Linear, act: nn.Module, fc2: nn.Linear, dropout: nn.Module | None) -> None:
        super().__init__()
        self.fc1, self.act = fc1, act
        self.dropout = dropout if dropout is not None else nn.Identity()
        self.fc2 = fc2

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (n, d) -> (n, d_out)
        return self.fc2(self.dropout(self.act(self.fc1(x))))


class _Router(nn.Module):
    def __init__(self, d: int, experts: int, hidden: int | None) -> None:
        super().__init__()
        self.hidden = nn.Sequential(nn.Linear(d, hidden), nn.ReLU()) if hidden else nn.Identity()
        self.proj = nn.Linear(hidden or d, experts)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (n, d) -> (n, E) logits
        return self.proj(self.hidden(x))


class MoEMLP(nn.Module):
    """Experts cut from a dense MLP block, with a top-k router.

    Eval: each expert runs only on the tokens routed to it. Training: the same, with straight-through gates
    so the router learns; sets ``expert.wattless_soft_prob`` (B,) and ``last_balance_loss``. With
    ``wattless_full_path`` every expert runs on every token (for costing) and the output is unchanged.
    Input (B, ..., d), or (B, d, L) when cut from Conv1d kernel-1 layers (``channels_first``).
    """

    def __init__(self, experts: list[_Expert], bias: torch.Tensor | None, router: _Router, top_k: int,
                 channels_first: bool = False) -> None:
        super().__init__()
        self.experts = nn.ModuleList(experts)
        self.router = router
        self.bias = nn.Parameter(bias.detach().clone()) if bias is not None else None
        self.top_k, self.channels_first = top_k, channels_first
        self.d_in = experts[0].fc1.in_features
        self.last_balance_loss: torch.Tensor | None = None
        n = len(experts)
        self.register_buffer("load_tokens", torch.zeros(n), persistent=False)  # (E,) routed tokens, eval
        self.register_buffer("entropy_sum", torch.zeros(()), persistent=False)  # router entropy, nats
        self.register_buffer("tokens_seen", torch.zeros(()), persistent=False)

    @classmethod
    def from_dense(cls, fc1: nn.Linear, act: nn.Module, fc2: nn.Linear, *, experts: int, top_k: int,
                   dropout: nn.Module | None = None, router_hidden: int | None = None,
                   channels_first: bool = False, seed: int = 0) -> "MoEMLP":
        """Cut ``experts`` experts from fc1 -> act -> [dropout] -> fc2 (Linear layers, weights copied)."""
        w1, w2 = fc1.weight.detach(), fc2.weight.detach()  # (h, d), (d_out, h)
        parts = []
        for neurons in cluster_neurons(w1, experts, seed=seed):
            neurons = neurons.to(w1.device)
            e1 = nn.Linear(w1.shape[1], neurons.numel(), bias=fc1.bias is not None)
            e2 = nn.Linear(neurons.numel(), w2.shape[0], bias=False)
            with torch.no_grad():
                e1.weight.copy_(w1[neurons])
                e2.weight.copy_(w2[:, neurons])
                if fc1.bias is not None:
                    e1.bias.copy_(fc1.bias[neurons])
            expert = _Expert(e1, copy.deepcopy(act), e2, copy.deepcopy(dropout))
            expert.register_buffer("neurons", neurons.clone())  # (h_e,) indices into the dense hidden layer
            parts.append(expert.to(w1.device, w1.dtype))
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            router = _Router(w1.shape[1], experts, router_hidden).to(w1.device, w1.dtype)
        return cls(parts, fc2.bias, router, top_k, channels_first)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        xt = x.transpose(1, -1) if self.channels_first else x  # (B, ..., d)
        tokens = xt.reshape(-1, self.d_in)  # (N, d)
        probs = self.router(tokens).softmax(-1)  # (N, E)
        routed = torch.zeros_like(probs).scatter(1, probs.topk(self.top_k, dim=-1).indices, 1.0)  # (N, E)
        out = self._dispatch(tokens, routed, probs)  # (N, d_out)
        if self.bias is not None:
            out = out + self.bias
        if self.training:
            self._training_stats(routed, probs, batch=xt.shape[0] if xt.dim() > 2 else tokens.shape[0])
        else:
            self.clear_training_state()
            # A traced run (the energy core counting work) is no eval batch: its bookkeeping is neither work
            # nor load.
            if _get_current_dispatch_mode() is None:
                self._eval_stats(routed.detach(), probs.detach())
        out = out.reshape(*xt.shape[:-1], -1)
        return out.transpose(1, -1) if self.channels_first else out

    def _dispatch(self, tokens: torch.Tensor, routed: torch.Tensor, probs: torch.Tensor) -> torch.Tensor:
        n = tokens.shape[0]
        out = tokens.new_zeros(n, self.experts[0].fc2.out_features)
        # Gates are 1 in value with the router probability's gradient (straight through).
        gates = routed + probs - probs.detach() if self.training else routed  # (N, E)
        full = bool(getattr(self, "wattless_full_path", False))
        for e, expert in enumerate(self.experts):
            sel = routed[:, e].nonzero().squeeze(1)  # (n_e,) tokens routed to expert e
            if full or sel.numel() == n:
                y = expert(tokens)  # (N, d_out)
                out = out + (y * gates[:, e : e + 1] if full or self.training else y)
            elif sel.numel():
                y = expert(tokens.index_select(0, sel))  # (n_e, d_out)
                out = out.index_add(0, sel, y * gates[sel, e : e + 1] if self.training else y)
        return out

    def _training_stats(self, routed: torch.Tensor, probs: torch.Tensor, batch: int) -> None:
        k, n_experts = self.top_k, routed.shape[1]
        # Switch Transformer balance loss: E * sum_e (fraction of routed slots) * (mean router probability).
        self.last_balance_loss = n_experts * (routed.mean(0) / k * probs.mean(0)).sum()
        soft = routed + k * probs - (k * probs).detach()  # value: the hard routing; gradient: k * probs
        per_input = soft.reshape(batch, -1, n_experts).mean(1)  # (B, E), sums to k
        for e, expert in enumerate(self.experts):
            expert.wattless_soft_prob = per_input[:, e]

    def clear_training_state(self) -> None:
        # Graph tensors of the last training forward would also stop copy.deepcopy of the model.
        self.last_balance_loss = None
        for expert in self.experts:
            expert.wattless_soft_prob = None

    def _eval_stats(self, routed: torch.Tensor, probs: torch.Tensor) -> None:
        self.load_tokens += routed.sum(0)
        self.entropy_sum += -(probs * probs.clamp_min(1e-12).log()).sum()
        self.tokens_seen += routed.shape[0]

    def reset_stats(self) -> None:
        for stat in (self.load_tokens, self.entropy_sum, self.tokens_seen):
            stat.zero_()

    def stats(self) -> dict[str, Any]:
        """Fraction of routed tokens per expert and mean router entropy over the eval forwards so far."""
        seen = float(self.tokens_seen)
        if not seen:
            return {"expert_load": None, "router_entropy_nats": None, "tokens": 0}
        load = self.load_tokens / self.load_tokens.sum()
        entropy = float(self.entropy_sum) / seen
        return {"expert_load": [float(v) for v in load], "router_entropy_nats": entropy, "tokens": int(seen)}

    def expert_mass(self, tokens: torch.Tensor) -> torch.Tensor:
        """(N, d) -> (N, E): each expert's summed absolute activation, what the router learns to predict."""
        return torch.stack([e.act(e.fc1(tokens)).abs().sum(-1) for e in self.experts], dim=-1)


# --- finding the blocks -------------------------------------------------------------------------------

@dataclass
class MLPBlock:
    """One dense MLP block and how to put a MoEMLP in its place."""

    name: str
    fc1: nn.Module
    act: nn.Module
    fc2: nn.Module
    dropout: nn.Module | None
    install: Callable[[MoEMLP], None]
    channels_first: bool = False


def _is_activation(m: Any) -> bool:
    if not isinstance(m, nn.Module) or any(True for _ in m.parameters()):
        return False
    name = type(m).__name__
    is_torch_act = type(m).__module__ == "torch.nn.modules.activation" and "Softmax" not in name
    return is_torch_act or name.endswith("Activation")


def _pointwise(m: nn.Module) -> bool:
    return isinstance(m, nn.Conv1d) and (m.kernel_size, m.stride, m.padding, m.dilation, m.groups) == (
        (1,), (1,), (0,), (1,), 1)


def _as_linear(m: nn.Module) -> nn.Linear:
    """A Linear as is; a Conv1d kernel-1 layer as the equal Linear."""
    if isinstance(m, nn.Linear):
        return m
    lin = nn.Linear(m.in_channels, m.out_channels, bias=m.bias is not None)
    lin = lin.to(m.weight.device, m.weight.dtype)
    with torch.no_grad():
        lin.weight.copy_(m.weight[..., 0])
        if m.bias is not None:
            lin.bias.copy_(m.bias)
    return lin


def _pair(fc1: nn.Module, fc2: nn.Module) -> bool:
    if isinstance(fc1, nn.Linear) and isinstance(fc2, nn.Linear):
        return fc2.in_features == fc1.out_features
    return _pointwise(fc1) and _pointwise(fc2) and fc2.in_channels == fc1.out_channels


def _sequential_sites(prefix: str, seq: nn.Sequential) -> list[MLPBlock]:
    children = list(seq.named_children())
    sites, i = [], 0
    while i + 2 < len(children):
        (n1, fc1), (_, act) = children[i], children[i + 1]
        drop = children[i + 2][1] if isinstance(children[i + 2][1], nn.Dropout) else None
        j = i + 3 if drop is not None else i + 2
        if j < len(children) and _is_activation(act) and _pair(fc1, children[j][1]):
            names = [c[0] for c in children[i : j + 1]]
            sites.append(MLPBlock(f"{prefix}{n1}", fc1, act, children[j][1], drop, _installer(seq, names),
                                  channels_first=isinstance(fc1, nn.Conv1d)))
            i = j + 1
        else:
            i += 1
    return sites


def _installer(seq: nn.Sequential, names: list[str]) -> Callable[[MoEMLP], None]:
    # Identity in the other places keeps the container's names and indices stable.
    def install(moe: MoEMLP) -> None:
        setattr(seq, names[0], moe)
        for name in names[1:]:
            setattr(seq, name, nn.Identity())

    return install


def _transformer_site(name: str, layer: nn.Module) -> MLPBlock | None:
    """A BERT-style layer: ``intermediate.dense`` (+ act) and ``output.dense``; norm and residual stay."""
    inter, output = getattr(layer, "intermediate", None), getattr(layer, "output", None)
    fc1, fc2 = getattr(inter, "dense", None), getattr(output, "dense", None)
    if not (isinstance(fc1, nn.Linear) and isinstance(fc2, nn.Linear)) or fc2.in_features != fc1.out_features:
        return None
    act = getattr(inter, "intermediate_act_fn", None)
    if act is None:
        return None
    act = act if isinstance(act, nn.Module) else _Fn(act)

    def install(moe: MoEMLP) -> None:
        layer.intermediate = moe
        output.dense = nn.Identity()

    return MLPBlock(f"{name}.intermediate" if name else "intermediate", fc1, act, fc2, None, install)


_ACT_CALLS = {F.relu, F.gelu, F.silu, F.relu6, F.leaky_relu, F.elu, F.mish, F.hardswish, torch.relu,
              torch.sigmoid, torch.tanh, F.sigmoid, F.tanh}
_ACT_METHODS = {"relu", "sigmoid", "tanh"}


def _chain_of(graph: Any) -> list[Any] | None:
    """The nodes between input and output of a forward that is one straight chain, else None."""
    nodes = [n for n in graph.nodes if n.op not in ("placeholder", "output")]
    placeholders = [n for n in graph.nodes if n.op == "placeholder"]
    if len(placeholders) != 1 or not nodes:
        return None
    prev = placeholders[0]
    for node in nodes:
        if len(node.all_input_nodes) != 1 or node.all_input_nodes[0] is not prev or node.args[0] is not prev:
            return None
        prev = node
    out = next(n for n in graph.nodes if n.op == "output")
    return nodes if out.args[0] is prev else None


def _traced_site(name: str, module: nn.Module, root: nn.Module) -> MLPBlock | None:
    """A module whose own forward is fc1 -> activation (a module or a function) -> [dropout] -> fc2, written in
    any way torch.fx can trace (a custom forward); MoEMLP then takes the module's place."""
    if isinstance(module, nn.Sequential) or not name or sum(isinstance(c, nn.Linear) for c in module.children()) != 2:
        return None
    try:
        nodes = _chain_of(torch.fx.symbolic_trace(module).graph)
    except Exception:  # noqa: BLE001 - forwards fx cannot trace are not this kind of block
        return None
    if nodes is None or len(nodes) not in (3, 4):
        return None
    subs = dict(module.named_modules())
    fc1, fc2 = (subs.get(n.target) if n.op == "call_module" else None for n in (nodes[0], nodes[-1]))
    act_node, drop_node = nodes[1], nodes[2] if len(nodes) == 4 else None
    if not (isinstance(fc1, nn.Linear) and isinstance(fc2, nn.Linear) and _pair(fc1, fc2)):
        return None
    act = _activation_of(act_node, subs)
    drop = subs.get(drop_node.target) if drop_node is not None and drop_node.op == "call_module" else None
    if act is None or (drop_node is not None and not isinstance(drop, nn.Dropout)):
        return None
    parent, _, child = name.rpartition(".")

    def install(moe: MoEMLP) -> None:
        setattr(root.get_submodule(parent) if parent else root, child, moe)

    return MLPBlock(name, fc1, act, fc2, drop, install)


def _activation_of(node: Any, subs: dict[str, nn.Module]) -> nn.Module | None:
    if node.op == "call_module" and _is_activation(subs.get(node.target)):
        return subs[node.target]
    if node.op == "call_function" and node.target in _ACT_CALLS and not node.kwargs and len(node.args) == 1:
        return _Fn(node.target)
    if node.op == "call_method" and node.target in _ACT_METHODS and len(node.args) == 1:
        return _Fn(getattr(torch, node.target))
    return None


def find_mlp_blocks(model: nn.Module) -> list[MLPBlock]:
    """Every dense MLP block MoEfication can split, named where its MoEMLP will live: Linear -> activation ->
    Linear in an nn.Sequential, BERT-style intermediate/output, or any module whose traced forward is that chain."""
    sites: list[MLPBlock] = []
    for name, module in model.named_modules():
        if isinstance(module, nn.Sequential):
            sites += _sequential_sites(f"{name}." if name else "", module)
        site = _transformer_site(name, module) or _traced_site(name, module, model)
        if site is not None:
            sites.append(site)
    return sites


def _select(sites: list[MLPBlock], globs: list[str]) -> list[MLPBlock]:
    names = [s.name for s in sites]
    if not sites:
        raise ValueError(
            "found no MLP block to split into experts: MoEfication needs Linear -> activation -> Linear (or "
            "Conv1d kernel-1 pairs) inside an nn.Sequential, BERT-style intermediate.dense/output.dense, or a "
            "module whose forward is exactly fc2(act(fc1(x))) (dropout allowed)"
        )
    if "auto" in globs:
        return sites
    for glob in globs:
        if not any(fnmatch.fnmatchcase(n, glob) for n in names):
            raise ValueError(f"MoEConfig.blocks glob {glob!r} matches no MLP block; blocks found: {names}")
    return [s for s in sites if any(fnmatch.fnmatchcase(s.name, g) for g in globs)]


# --- router initialisation ----------------------------------------------------------------------------

def _to_device(obj: Any, device: torch.device) -> Any:
    if isinstance(obj, torch.Tensor):
        return obj.to(device)
    if isinstance(obj, dict):
        return {k: _to_device(v, device) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(_to_device(v, device) for v in obj)
    return obj


def _fit_batches(context: ApplyContext) -> list[Any]:
    if context.train_batches is None:
        return [context.example_input] if context.example_input is not None else []
    batches = []
    for inputs, _targets in context.train_batches():
        batches.append(inputs)
        if len(batches) == _ROUTER_FIT_BATCHES:
            break
    return batches


def _capture_tokens(model: nn.Module, sites: list[MLPBlock], batches: list[Any]) -> dict[str, torch.Tensor]:
    """The tokens (N, d) that reach each block's fc1 on ``batches``, at most _ROUTER_FIT_TOKENS each."""
    seen: dict[str, list[torch.Tensor]] = {s.name: [] for s in sites}

    def hook_for(site: MLPBlock):
        def hook(_module, args, _out):
            x = args[0].detach()
            x = x.transpose(1, -1) if site.channels_first else x
            seen[site.name].append(x.reshape(-1, x.shape[-1]))

        return hook

    handles = [s.fc1.register_forward_hook(hook_for(s)) for s in sites]
    modes = [(m, m.training) for m in model.modules()]
    device = next((p.device for p in model.parameters()), torch.device("cpu"))
    try:
        model.eval()
        with torch.no_grad():
            for batch in batches:
                run_model(model, _to_device(batch, device))
    finally:
        for h in handles:
            h.remove()
        for m, training in modes:
            m.training = training
    gen = torch.Generator().manual_seed(0)
    out = {}
    for name, chunks in seen.items():
        if chunks:
            tokens = torch.cat(chunks)
            keep = torch.randperm(tokens.shape[0], generator=gen)[:_ROUTER_FIT_TOKENS].to(tokens.device)
            out[name] = tokens[keep]
    return out


def _fit_router(moe: MoEMLP, tokens: torch.Tensor) -> None:
    """Train the router to pick the experts with the largest activation mass (MoEfication's router)."""
    with torch.no_grad():
        top = moe.expert_mass(tokens).topk(moe.top_k, dim=-1).indices  # (N, k)
        target = torch.zeros(tokens.shape[0], len(moe.experts), device=tokens.device, dtype=tokens.dtype)
        target.scatter_(1, top, 1.0 / moe.top_k)  # (N, E)
    opt = torch.optim.Adam(moe.router.parameters(), lr=_ROUTER_FIT_LR)
    with torch.enable_grad():
        for _ in range(_ROUTER_FIT_STEPS):
            loss = -(target * moe.router(tokens).log_softmax(-1)).sum(-1).mean()
            opt.zero_grad()
            loss.backward()
            opt.step()


# --- the technique ------------------------------------------------------------------------------------

def moefy(model: nn.Module, config: MoEConfig, context: ApplyContext | None = None) -> dict[str, MoEMLP]:
    """Replace the selected MLP blocks by MoEMLPs in place; fit the routers on the context's data."""
    sites = _select(find_mlp_blocks(model), config.blocks)
    batches = _fit_batches(context) if context is not None else []
    tokens = _capture_tokens(model, sites, batches) if batches else {}
    blocks = {}
    for site in sites:
        fc1, fc2 = _as_linear(site.fc1), _as_linear(site.fc2)
        moe = MoEMLP.from_dense(fc1, site.act, fc2, experts=config.experts, top_k=config.top_k,
                                dropout=site.dropout, router_hidden=config.router_hidden,
                                channels_first=site.channels_first)
        moe.train(site.fc1.training)
        if site.name in tokens:
            _fit_router(moe, tokens[site.name])
        site.install(moe)
        blocks[site.name] = moe
    return blocks


def _moe_blocks(model: nn.Module) -> dict[str, MoEMLP]:
    return {name: m for name, m in model.named_modules() if isinstance(m, MoEMLP)}


class MoETechnique(Technique):
    """Live handle: the load-balancing loss of the last training forward, and per-block routing stats."""

    name = "moe"

    def __init__(self, config: MoEConfig) -> None:
        self.config = config

    def loss(self, model: nn.Module, inputs: Any = None, outputs: Any = None) -> torch.Tensor | None:
        """balance_weight x the blocks' mean Switch load-balancing loss (1 when perfectly balanced)."""
        losses = [m.last_balance_loss for m in _moe_blocks(model).values() if m.last_balance_loss is not None]
        if not losses or self.config.balance_weight == 0:
            return None
        return self.config.balance_weight * torch.stack(losses).mean()

    def report(self, model: nn.Module) -> dict[str, Any]:
        blocks = _moe_blocks(model)
        return {"experts": self.config.experts, "top_k": self.config.top_k,
                "blocks": {name: m.stats() for name, m in blocks.items()}}


@register(MoEConfig, step="convert")
def _convert_moe(model: nn.Module, config: MoEConfig | None) -> None:
    """The routed form export reads: each MoEMLP as it is, without the last training forward's state."""
    for m in _moe_blocks(model).values():
        m.clear_training_state()


@register(MoEConfig)
def _apply_moe(model: nn.Module, config: MoEConfig, context: ApplyContext) -> MoETechnique:
    moefy(model, config, context)
    return MoETechnique(config)
