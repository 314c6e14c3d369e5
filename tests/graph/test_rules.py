"""Every registered op rule and module rule, each on a small model that uses it on prunable channels: the op is
followed (not opaque), removing channels keeps the output's shape and lowers parameters and MACs (counted by
``slimkit.analysis.profile``, independently of the graph), and removing channels whose parameters were zeroed keeps
the outputs exactly."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from slimkit.analysis import profile
from slimkit.graph import (
    apply_removal,
    dependency_graph,
    module_rule,
    module_rules,
    op_rule,
    op_rules,
    run_model,
)
from tests.graph._torchvision import RelativePositionalMultiHeadAttention, ShiftedWindowAttention


class Tokens(nn.Module):
    """(1, 5, 6) tokens → Linear to 16 channels → ``body`` → Linear head; ``body`` is the op under test."""

    def __init__(self, body: Callable, **layers: nn.Module) -> None:
        super().__init__()
        self.a = nn.Linear(6, 16)
        self.b = nn.Linear(6, 16)
        self.layers = nn.ModuleDict(layers)
        self.head = nn.Linear(16, 3)
        self.body = body

    def forward(self, x):
        return self.head(self.body(self, self.a(x), x))


class Maps(nn.Module):
    """(1, 2, 8, 8) maps → conv to 16 channels → ``body`` → conv head."""

    def __init__(self, body: Callable, **layers: nn.Module) -> None:
        super().__init__()
        self.a = nn.Conv2d(2, 16, 3, padding=1)
        self.layers = nn.ModuleDict(layers)
        self.head = nn.Conv2d(16, 3, 1)
        self.body = body

    def forward(self, x):
        return self.head(self.body(self, self.a(x), x))


class Heads(nn.Module):
    """Hand-written 4-head attention; ``attend(q, k, v)`` computes it (the op under test)."""

    def __init__(self, attend: Callable) -> None:
        super().__init__()
        self.q, self.k, self.v = nn.Linear(8, 16), nn.Linear(8, 16), nn.Linear(8, 16)
        self.o = nn.Linear(16, 8)
        self.attend = attend
        self.heads = 4  # pruning heads updates it

    def forward(self, x):
        b, n, _ = x.shape
        q, k, v = (p(x).view(b, n, self.heads, -1).transpose(1, 2) for p in (self.q, self.k, self.v))
        return self.o(self.attend(q, k, v).transpose(1, 2).reshape(b, n, -1))


class AddMM(nn.Module):
    """GPT-2's Conv1D: ``torch.addmm(b, x, W)`` with W of shape (in, out)."""

    def __init__(self) -> None:
        super().__init__()
        self.w, self.bias = nn.Parameter(torch.randn(6, 16)), nn.Parameter(torch.randn(16))
        self.head = nn.Linear(16, 3)

    def forward(self, x):
        return self.head(torch.addmm(self.bias, x.view(-1, 6), self.w).view(*x.shape[:-1], -1))


class Lookup(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Embedding(20, 16)
        self.head = nn.Linear(16, 3)

    def forward(self, ids):
        return self.head(self.embed(ids))


TOKENS, MAPS, IDS = torch.randn(1, 5, 6), torch.randn(1, 2, 8, 8), torch.tensor([[1, 4, 2, 7]])
SEQ = torch.randn(1, 5, 8)


def _scores(q, k, v):
    return torch.softmax(q @ k.transpose(-2, -1) * 0.5, dim=-1) @ v


def _baddbmm(q, k, v):
    b, h, n, d = q.shape
    s = torch.baddbmm(torch.empty(b * h, n, n), q.reshape(b * h, n, d), k.reshape(b * h, n, d).transpose(1, 2),
                      beta=0)
    return torch.bmm(torch.softmax(s, -1), v.reshape(b * h, n, d)).view(b, h, n, d)


def _einsum(q, k, v):
    return torch.einsum("bhij,bhjd->bhid", torch.softmax(torch.einsum("bhid,bhjd->bhij", q, k), -1), v)


def _setitem(m, h, x):
    h = h.clone()
    h[:, 0] = 0
    return h


#: rule name → (model factory, example input, whether removing zeroed channels keeps outputs exactly)
EXAMPLES: dict[str, tuple[Callable[[], nn.Module], torch.Tensor, bool]] = {
    "elementwise": (lambda: Tokens(lambda m, h, x: torch.relu(h) * torch.sigmoid(h)), TOKENS, True),
    "add": (lambda: Tokens(lambda m, h, x: h + m.b(x)), TOKENS, True),
    "passthrough": (lambda: Tokens(lambda m, h, x: h.float().contiguous() + torch.zeros_like(h)), TOKENS, True),
    "constant": (lambda: Tokens(lambda m, h, x: h * torch.ones(1, 5, 1)), TOKENS, True),
    "reduction": (lambda: Tokens(lambda m, h, x: h * h.mean(1, keepdim=True)), TOKENS, True),
    "along": (lambda: Tokens(lambda m, h, x: torch.softmax(h, dim=1) * h), TOKENS, True),
    "reshape": (lambda: Tokens(lambda m, h, x: h.view(*h.shape[:-1], 4, -1).reshape(*h.shape[:-1], -1)),
                TOKENS, True),
    "unflatten": (lambda: Tokens(lambda m, h, x: h.unflatten(-1, (4, -1)).flatten(-2)), TOKENS, True),
    "split": (lambda: Tokens(lambda m, h, x: torch.cat(h.chunk(2, dim=-1)[::-1], dim=-1)), TOKENS, True),
    "narrow": (lambda: Tokens(lambda m, h, x: h.narrow(1, 0, 3)), TOKENS, True),
    "movement": (lambda: Tokens(lambda m, h, x: torch.roll(h.transpose(1, 2), 1, 2).transpose(1, 2)), TOKENS, True),
    "getitem": (lambda: Tokens(lambda m, h, x: h[:, 1:]), TOKENS, True),
    "setitem": (lambda: Tokens(_setitem), TOKENS, True),
    "pad": (lambda: Maps(lambda m, h, x: F.pad(h, (1, 1, 1, 1))), MAPS, True),
    "spatial": (lambda: Maps(lambda m, h, x: F.adaptive_avg_pool2d(h, 1)), MAPS, True),
    "linear": (lambda: Tokens(lambda m, h, x: h), TOKENS, True),
    "addmm": (AddMM, TOKENS, True),
    "scaled_dot_product_attention": (lambda: Heads(F.scaled_dot_product_attention), SEQ, True),
    "matmul": (lambda: Heads(_scores), SEQ, True),
    "baddbmm": (lambda: Heads(_baddbmm), SEQ, True),
    "einsum": (lambda: Heads(_einsum), SEQ, True),
    "conv": (lambda: Maps(lambda m, h, x: m.layers["dw"](h), dw=nn.Conv2d(16, 16, 3, padding=1, groups=16)), MAPS,
             True),
    "batch_norm": (lambda: Maps(lambda m, h, x: m.layers["bn"](h), bn=nn.BatchNorm2d(16)), MAPS, True),
    "layer_norm": (lambda: Maps(lambda m, h, x: F.layer_norm(h, (8,))), MAPS, True),
    "group_norm": (lambda: Maps(lambda m, h, x: m.layers["gn"](h), gn=nn.GroupNorm(16, 16)), MAPS, True),
    "prelu": (lambda: Maps(lambda m, h, x: m.layers["act"](h), act=nn.PReLU(16)), MAPS, True),
    "embedding": (Lookup, IDS, True),
}

#: module rule → (factory, input, module name whose size attributes are checked)
MODULE_EXAMPLES: dict[str, tuple[Callable[[], nn.Module], torch.Tensor, str]] = {
    "Linear": (lambda: Tokens(lambda m, h, x: h), TOKENS, "a"),
    "Conv": (*EXAMPLES["conv"][:2], "layers.dw"),
    "BatchNorm": (*EXAMPLES["batch_norm"][:2], "layers.bn"),
    "GroupNorm": (*EXAMPLES["group_norm"][:2], "layers.gn"),
    "LayerNorm": (lambda: Tokens(lambda m, h, x: m.layers["ln"](h), ln=nn.LayerNorm(16)), TOKENS, "layers.ln"),
    "Embedding": (Lookup, IDS, "embed"),
    "PReLU": (*EXAMPLES["prelu"][:2], "layers.act"),
    "MultiheadAttention": (lambda: Tokens(lambda m, h, x: h + m.layers["mha"](h, h, h, need_weights=False)[0],
                                          mha=nn.MultiheadAttention(16, 4, batch_first=True)), TOKENS, "layers.mha"),
    "Conv1D (transformers)": (None, TOKENS, "h.0.mlp.c_fc"),
    "ShiftedWindowAttention (torchvision)": (
        lambda: Tokens(lambda m, h, x: h + m.layers["attn"](h.unsqueeze(2)).squeeze(2),
                       attn=ShiftedWindowAttention(16, 1, 4)), TOKENS, "layers.attn"),
    "RelativePositionalMultiHeadAttention (torchvision)": (
        lambda: Tokens(lambda m, h, x: h + m.layers["attn"](h.unsqueeze(1)).squeeze(1),
                       attn=RelativePositionalMultiHeadAttention(16, 4, 5)), TOKENS, "layers.attn"),
}


def _zero_units_(graph, group, chosen: np.ndarray) -> None:
    """Zero everything the chosen units own as outputs (rows, biases, norm scales and shifts)."""
    with torch.no_grad():
        for s in graph.slices(group):
            if "out" in s.roles:
                rows = torch.as_tensor(np.flatnonzero(np.isin(s.positions, chosen)))
                graph.tensor(s.param).index_fill_(s.dim, rows, 0)


def _prune_a_third(model: nn.Module, x: torch.Tensor, zero: bool = True):
    graph = dependency_graph(model, x)
    assert graph.groups, "nothing prunable"
    rng = np.random.default_rng(0)
    removed = []
    for group in graph.groups:
        if len(group.units) < 2:
            continue
        chosen = rng.choice(len(group.units), max(1, len(group.units) // 3), replace=False)
        if zero:
            _zero_units_(graph, group, chosen)
        removed.append(group.units[chosen])
    with torch.no_grad():
        reference = run_model(graph.model, x)
    pruned = apply_removal(graph, np.concatenate(removed))
    return graph, reference, pruned


@pytest.mark.parametrize("name", sorted(op_rules()))
def test_every_op_rule_is_followed_and_exact(name):
    assert name in EXAMPLES, f"add an example for the op rule '{name}' to EXAMPLES"
    factory, x, exact = EXAMPLES[name]
    torch.manual_seed(0)
    graph, reference, pruned = _prune_a_third(factory().eval(), x)
    used = {op_rule(c.target).name for c in graph.capture.calls if c.module is None and op_rule(c.target)}
    assert name in used and not graph.opaque_ops()
    assert sum(p.numel() for p in pruned.parameters()) < sum(p.numel() for p in graph.model.parameters())
    assert profile(pruned, x).total.macs < profile(graph.model, x).total.macs
    with torch.no_grad():
        out = run_model(pruned, x)
    assert out.shape == reference.shape
    if exact:
        torch.testing.assert_close(out, reference, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("name", sorted(module_rules()))
def test_every_module_rule_sets_its_size_attributes(name):
    assert name in MODULE_EXAMPLES, f"add an example for the module rule '{name}' to MODULE_EXAMPLES"
    factory, x, layer = MODULE_EXAMPLES[name]
    if factory is None:
        transformers = pytest.importorskip("transformers")
        config = transformers.GPT2Config(vocab_size=20, n_embd=16, n_head=4, n_layer=1, n_positions=8)
        model, x = transformers.GPT2Model(config).eval(), {"input_ids": IDS}
    else:
        torch.manual_seed(0)
        model = factory().eval()
    graph, reference, pruned = _prune_a_third(model, x, zero=False)
    assert sum(p.numel() for p in pruned.parameters()) < sum(p.numel() for p in graph.model.parameters())
    assert profile(pruned, x).total.macs < profile(graph.model, x).total.macs
    module = pruned.get_submodule(layer)
    assert module_rule(module).name == name
    checks = (("in_features", lambda m: m.weight.shape[1]), ("out_features", lambda m: m.weight.shape[0]),
              ("num_features", lambda m: m.weight.shape[0]), ("num_channels", lambda m: m.weight.shape[0]),
              ("embedding_dim", lambda m: m.weight.shape[1]), ("num_parameters", lambda m: m.weight.numel()),
              ("embed_dim", lambda m: m.out_proj.weight.shape[0]), ("nf", lambda m: m.weight.shape[1]))
    for attr, shape_of in checks:
        if hasattr(module, attr):
            assert getattr(module, attr) == shape_of(module), attr
    if isinstance(module, nn.LayerNorm):
        assert module.normalized_shape == tuple(module.weight.shape)
    if isinstance(module, RelativePositionalMultiHeadAttention):
        assert module.n_heads * module.head_dim == module.merge.weight.shape[1] < 16
    if isinstance(module, nn.Conv2d):
        assert (module.in_channels, module.groups) == (module.weight.shape[0], module.weight.shape[0])  # depthwise
    with torch.no_grad():
        out = run_model(pruned, x)
    ref = reference if isinstance(reference, torch.Tensor) else reference[0]
    got = out if isinstance(out, torch.Tensor) else out[0]
    assert got.shape == ref.shape
