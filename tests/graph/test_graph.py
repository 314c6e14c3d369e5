"""The channel-dependency graph: coupled groups, exact removal of zero channels, hand-counted MACs, ONNX."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from slimkit import TraceError, models
from slimkit.analysis import profile
from slimkit.graph import apply_removal, dependency_graph


def _zero_units_(graph, group, chosen: np.ndarray) -> None:
    """Make the chosen units' channels exactly zero: zero their filters, biases and norm scales/shifts."""
    with torch.no_grad():
        for s in graph.slices(group):
            if "out" in s.roles:
                rows = torch.as_tensor(np.isin(s.positions, chosen))
                graph.tensor(s.param).index_fill_(s.dim, torch.nonzero(rows).reshape(-1), 0)


class BranchyNet(nn.Module):
    """Residual add, concat, depthwise and group conv, channel shuffle, split — everything but attention."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(1, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU())
        self.a = nn.Sequential(nn.Conv2d(16, 16, 3, padding=1, bias=False), nn.BatchNorm2d(16))
        self.dw = nn.Sequential(nn.Conv2d(16, 16, 3, padding=1, groups=16), nn.BatchNorm2d(16), nn.ReLU())
        self.b = nn.Conv2d(16, 8, 1)
        self.gconv = nn.Sequential(nn.Conv2d(24, 24, 3, padding=1, groups=4), nn.BatchNorm2d(24), nn.ReLU())
        self.head = nn.Linear(12 * 7 * 7, 10)

    def forward(self, x):
        x = self.stem(x)
        x = torch.relu(x + self.a(x))
        y = torch.cat([self.dw(x), self.b(x)], dim=1)
        y = self.gconv(y)
        y = y.unflatten(1, (4, -1)).transpose(1, 2).flatten(1, 2)  # channel shuffle
        left, right = y.chunk(2, dim=1)
        z = nn.functional.max_pool2d(left * right, 4)
        return self.head(z.flatten(1))


CONV_MODELS = ["lenet5", "resnet20", "mobilenet_v2", "shufflenet_v2", "squeezenet1_1"]


def _model(name: str) -> tuple[nn.Module, torch.Tensor]:
    if name == "branchy":
        return BranchyNet().eval(), torch.randn(1, 1, 28, 28)
    model = models.create(name).eval()
    return model, torch.randn(1, *models.default_input_shape(name))


def _randomise_bn_(model: nn.Module) -> None:
    gen = torch.Generator().manual_seed(1)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.normal_(0, 0.1, generator=gen)
            m.running_var.uniform_(0.5, 1.5, generator=gen)


@pytest.mark.parametrize("name", ["branchy", *CONV_MODELS])
def test_removing_zero_channels_keeps_outputs(name):
    model, x = _model(name)
    _randomise_bn_(model)
    graph = dependency_graph(model, x)
    assert graph.groups, "nothing prunable found"
    rng = np.random.default_rng(0)
    removed = []
    for group in graph.groups:
        k = len(group.units) // 3
        if k == 0:
            continue
        chosen = rng.choice(len(group.units), k, replace=False)
        _zero_units_(graph, group, chosen)
        removed.append(group.units[chosen])
    batch = torch.randn(3, *x.shape[1:])
    with torch.no_grad():
        reference = graph.model(batch)
    before = sum(p.numel() for p in graph.model.parameters())
    pruned = apply_removal(graph, np.concatenate(removed))
    with torch.no_grad():
        out = pruned(batch)
    assert sum(p.numel() for p in pruned.parameters()) < before
    torch.testing.assert_close(out, reference, atol=1e-5, rtol=1e-5)
    assert sum(p.numel() for p in model.parameters()) == before  # the caller's model is untouched


def test_resnet20_groups_follow_option_a_shortcuts():
    graph = dependency_graph(models.create("resnet20"), torch.zeros(1, 1, 28, 28))
    by_name = {g.name: g for g in graph.groups}
    stream = by_name["conv1"]  # stage-1 residual stream: conv1 + every layer1 conv2 (+ padded into later stages)
    out_layers = {n for n, side in stream.members if side == "out"}
    assert {"conv1", "layer1.0.conv2", "layer1.1.conv2", "layer1.2.conv2", "layer2.0.conv2"} <= out_layers
    assert len(stream.units) == 16
    # Each block's inner width is its own group of 16/32/64 channels.
    assert [len(by_name[f"layer{s}.0.conv1"].units) for s in (1, 2, 3)] == [16, 32, 64]
    # The output layer's outputs are never prunable.
    assert graph.uf.is_blocked(graph.uses["fc"].out_map).all()


def test_lenet5_pruned_macs_match_hand_count():
    model = models.create("lenet5")
    x = torch.zeros(1, 1, 28, 28)
    graph = dependency_graph(model, x)
    removed = np.concatenate([g.units[: len(g.units) // 2] for g in graph.groups])
    pruned = apply_removal(graph, removed)
    total = profile(pruned, x).total
    # conv1 10×(24·24)×25, conv2 25×(8·8)×(10·25), fc1 (25·16)×250, fc2 250×10
    assert total.macs == 10 * 576 * 25 + 25 * 64 * 250 + 400 * 250 + 250 * 10 == 646_500
    assert total.params == (10 * 25 + 10) + (25 * 250 + 25) + (400 * 250 + 250) + (250 * 10 + 10)


def test_branchy_pruned_model_matches_onnx(tmp_path):
    from slimkit.export import export_onnx, onnx_max_abs_diff

    model, x = _model("branchy")
    graph = dependency_graph(model, x)
    removed = np.concatenate([g.units[::3] for g in graph.groups if len(g.units) > 2])
    pruned = apply_removal(graph, removed).eval()
    path = export_onnx(pruned, x, tmp_path / "p.onnx")
    assert onnx_max_abs_diff(pruned, path, torch.randn(4, 1, 28, 28)) < 1e-4


class _DataDependent(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(8, 8, 3, padding=1)

    def forward(self, x):
        return self.conv(x) if x.sum() > 0 else x  # data-dependent control flow: torch.fx cannot trace it


class _HasBranch(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(1, 8, 3, padding=1)
        self.block = _DataDependent()
        self.head = nn.Conv2d(8, 4, 1)

    def forward(self, x):
        return self.head(self.block(self.stem(x)))


class _Broken(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(1, 8, 3, padding=1)
        self.block = nn.Sequential(nn.Conv2d(8, 8, 1))

    def forward(self, x):
        y = self.stem(x)
        return self.block[0](y).view(-1, 7)  # 8·8·8 elements do not split into rows of 7


def test_data_dependent_branches_are_captured_as_they_ran():
    x = torch.rand(1, 1, 8, 8) + 0.1
    graph = dependency_graph(_HasBranch(), x)
    assert [g.name for g in graph.groups] == ["stem", "block.conv"]
    pruned = apply_removal(graph, np.concatenate([g.units[:3] for g in graph.groups]))
    assert (pruned.stem.out_channels, pruned.block.conv.in_channels, pruned.block.conv.out_channels) == (5, 5, 5)
    assert type(pruned) is _HasBranch and pruned(x).shape == (1, 4, 8, 8)
    graph = dependency_graph(_HasBranch(), x, leaf_modules=["block"])
    assert [g.name for g in graph.groups] == []  # the opaque leaf blocks the only prunable channels
    assert graph.opaque_ops()[0]["froze"] == ["stem"]  # (the head's outputs are the model's: never pruned)


def test_a_failing_forward_names_the_module_and_the_op():
    with pytest.raises(TraceError, match=r"op 'Tensor.view' in module '<root>'.*RuntimeError: shape '\[-1, 7\]'"):
        dependency_graph(_Broken(), torch.zeros(1, 1, 8, 8))


def test_skip_protect_first_and_layer_selection():
    model, x = models.create("lenet5"), torch.zeros(1, 1, 28, 28)
    assert [g.name for g in dependency_graph(model, x).groups] == ["conv1", "conv2", "fc1"]
    assert [g.name for g in dependency_graph(model, x, protect_first=True).groups] == ["conv2", "fc1"]
    assert [g.name for g in dependency_graph(model, x, skip=["conv*"]).groups] == ["fc1"]
    assert [g.name for g in dependency_graph(model, x, layers="re:conv\\d").groups] == ["conv1", "conv2"]


class _MHANet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Linear(6, 32)
        self.attn = nn.MultiheadAttention(32, 4, batch_first=True)
        self.fc = nn.Linear(32, 3)

    def forward(self, x):
        h = self.embed(x)
        h = h + self.attn(h, h, h, need_weights=False)[0]
        return self.fc(h.mean(1))


def test_multihead_attention_leaf_prunes_head_dims():
    model, x = _MHANet().eval(), torch.randn(1, 5, 6)
    graph = dependency_graph(model, x)
    (group,) = graph.groups
    assert len(group.units) == 8  # head_dim slots, shared by all 4 heads and the residual
    pruned = apply_removal(graph, group.units[:2])
    assert pruned.attn.embed_dim == 24 and pruned.attn.num_heads == 4
    assert pruned(torch.randn(2, 5, 6)).shape == (2, 3)


def test_vit_units_are_whole_heads_mlp_width_and_embedding():
    graph = dependency_graph(models.create("vit_tiny"), torch.zeros(1, 1, 28, 28))
    sizes = {g.name: len(g.units) for g in graph.groups}
    assert sizes["patch_embed"] == 64  # embedding width: patch conv, cls token, pos embedding, residuals, norms
    assert all(sizes[f"blocks.{i}.attn.qkv"] == 4 for i in range(4))  # 4 heads
    assert all(sizes[f"blocks.{i}.fc1"] == 128 for i in range(4))  # MLP hidden width
    embed = next(g for g in graph.groups if g.name == "patch_embed")
    for name in ("cls_token", "pos_embed"):  # class token and position table are on the embedding width
        assert graph.unit_positions(graph.params[name].ids[2], embed.units).min() >= 0
