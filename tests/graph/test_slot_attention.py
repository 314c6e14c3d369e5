"""Attention modules whose per-head width is read from the input width (``nn.MultiheadAttention``, torchvision's
Swin and MaxViT attention): pruned by head-dim slots tied to the residual width, exactly.

torchvision is not a dependency, so its two classes are re-stated in ``_torchvision.py``; the engine benchmark prunes
the real ones."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from slimkit.analysis import profile
from slimkit.prune import PruneConfig, prune_channels, pruning_info
from tests.graph._torchvision import RelativePositionalMultiHeadAttention, ShiftedWindowAttention

WIDTH, HEADS = 24, 3


class _MHA(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.attn = nn.MultiheadAttention(WIDTH, HEADS, batch_first=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.attn(x, x, x, need_weights=False)[0]


class _Block(nn.Module):
    """input projection → residual attention → output projection"""

    def __init__(self, attn: nn.Module) -> None:
        super().__init__()
        self.inp, self.attn, self.out = nn.Linear(5, WIDTH), attn, nn.Linear(WIDTH, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.inp(x)
        return self.out(h + self.attn(h))


def _fused(block: _Block) -> tuple[torch.Tensor, torch.Tensor | None, nn.Module]:
    a = block.attn
    if isinstance(a, ShiftedWindowAttention):
        return a.qkv.weight, a.qkv.bias, a.proj
    if isinstance(a, RelativePositionalMultiHeadAttention):
        return a.to_qkv.weight, a.to_qkv.bias, a.merge
    return a.attn.in_proj_weight, a.attn.in_proj_bias, a.attn.out_proj


CASES = {
    "swin": (lambda: ShiftedWindowAttention(WIDTH, 4, HEADS), (2, 8, 8, 5)),
    "maxvit": (lambda: RelativePositionalMultiHeadAttention(WIDTH, WIDTH // HEADS, 16), (2, 3, 16, 5)),
    "multihead": (_MHA, (2, 10, 5)),
}


@pytest.mark.parametrize("case", CASES)
def test_a_dead_head_slot_is_removed_exactly_with_the_query_scale_kept(case):
    """Slot 5 of every head (q, k, v rows, output columns) and the residual channels it is tied to are zero: pruning
    it must not change the output, although the head width the attention scales q by drops from 8 to 7."""
    make, shape = CASES[case]
    torch.manual_seed(0)
    block = _Block(make()).eval()
    slot = [head * (WIDTH // HEADS) + 5 for head in range(HEADS)]
    qkv_w, qkv_b, proj = _fused(block)
    with torch.no_grad():
        for p in block.parameters():
            p.add_(0.3 * torch.randn_like(p))
        block.inp.weight[slot] = 0
        block.inp.bias[slot] = 0
        rows = [s * WIDTH + i for s in range(3) for i in slot]
        qkv_w[rows] = 0
        qkv_w[:, slot] = 0
        qkv_b[rows] = 0
        proj.weight[slot] = 0
        proj.weight[:, slot] = 0
        proj.bias[slot] = 0
        block.out.weight[:, slot] = 0
    x = torch.randn(*shape)
    pruned = prune_channels(block, x[:1], PruneConfig(ratio=1 / 8, criterion="l1")).eval()
    qkv_w, _, proj = _fused(pruned)
    assert tuple(qkv_w.shape) == (3 * (WIDTH - HEADS), WIDTH - HEADS) and proj.weight.shape[0] == WIDTH - HEADS
    torch.testing.assert_close(pruned(x), block(x), atol=2e-5, rtol=1e-5)
    assert type(pruned.attn) is type(block.attn)


@pytest.mark.parametrize("case", CASES)
def test_head_slots_prune_with_the_residual_width_and_macs_match_the_profile(case):
    make, shape = CASES[case]
    torch.manual_seed(1)
    block = _Block(make()).eval()
    x = torch.randn(*shape)
    pruned = prune_channels(block, x[:1], PruneConfig(ratio=0.25)).eval()
    kept = pruned.inp.out_features
    assert kept == WIDTH - 2 * HEADS  # 2 of 8 slots in each of the 3 heads
    assert pruned(x).shape == block(x).shape
    if case == "maxvit":
        assert pruned.attn.head_dim == kept // HEADS
    info = pruning_info(pruned)
    assert not info["opaque"] and not info["kept_whole"]
    # the graph's MAC count (what a MAC target searches with) is the profile's, before and after
    assert info["reduction"]["macs"] == [profile(block, x[:1]).total.macs, profile(pruned, x[:1]).total.macs]


def test_a_projection_two_attention_modules_share_is_rescaled_once_and_stays_shared():
    class Twice(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.inp, self.out = nn.Linear(5, WIDTH), nn.Linear(WIDTH, 3)
            self.first = ShiftedWindowAttention(WIDTH, 4, HEADS)
            self.second = ShiftedWindowAttention(WIDTH, 4, HEADS)
            self.second.qkv = self.first.qkv

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            h = self.inp(x)
            h = h + self.first(h)
            return self.out(h + self.second(h))

    torch.manual_seed(2)
    model = Twice().eval()
    slot = [head * (WIDTH // HEADS) + 5 for head in range(HEADS)]
    with torch.no_grad():
        model.inp.weight[slot] = 0
        model.inp.bias[slot] = 0
        rows = [s * WIDTH + i for s in range(3) for i in slot]
        model.first.qkv.weight[rows] = 0
        model.first.qkv.bias[rows] = 0
        for attn in (model.first, model.second):
            attn.proj.weight[slot] = 0
            attn.proj.bias[slot] = 0
    x = torch.randn(2, 8, 8, 5)
    pruned = prune_channels(model, x[:1], PruneConfig(ratio=1 / 8, criterion="l1")).eval()
    assert pruned.second.qkv is pruned.first.qkv and pruned.first.qkv.out_features == 3 * (WIDTH - HEADS)
    torch.testing.assert_close(pruned(x), model(x), atol=2e-5, rtol=1e-5)


def test_cross_attention_macs_count_key_and_value_widths():
    class Cross(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.q, self.kv = nn.Linear(5, WIDTH), nn.Linear(5, 10)
            self.attn = nn.MultiheadAttention(WIDTH, HEADS, kdim=10, vdim=10, batch_first=True)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            memory = self.kv(x[:, :4])
            return self.attn(self.q(x), memory, memory, need_weights=False)[0]

    model, x = Cross().eval(), torch.randn(1, 7, 5)
    pruned = prune_channels(model, x, PruneConfig(ratio=0.5))
    macs = 7 * 5 * WIDTH + 4 * 5 * 10 + 7 * WIDTH * WIDTH * 2 + 4 * WIDTH * 10 * 2 + 2 * 7 * 4 * WIDTH
    assert pruning_info(pruned)["reduction"]["macs"][0] == profile(model, x).total.macs == macs


@pytest.mark.parametrize("case", CASES)
def test_wanda_scales_the_attention_inputs_columns_by_the_attention_inputs_norms(case):
    """Activation-aware scores (Sun et al. 2024) of the residual width: Σ |W[:, c]| · ‖X_c‖ over the layers that read
    channel c — here the q/k/v projection inside the attention module (X = the attention's input) and the output
    layer — summed over the channels c of each head-dim slot."""
    from slimkit.graph import dependency_graph
    from slimkit.prune import CRITERIA, PruneContext

    make, shape = CASES[case]
    torch.manual_seed(3)
    block = _Block(make()).eval()
    x = torch.randn(*shape)
    graph = dependency_graph(block, x[:1])
    group = next(g for g in graph.groups if any(name == "inp" for name, _ in g.members))
    criterion = CRITERIA.get("wanda")()
    criterion.prepare(ctx := PruneContext(graph, data=[(x, None)], batches=1))
    seen = {}
    hooks = [block.attn.register_forward_pre_hook(lambda m, a: seen.setdefault("attn", a[0])),
             block.out.register_forward_pre_hook(lambda m, a: seen.setdefault("out", a[0]))]
    with torch.no_grad():
        block(x)
    for h in hooks:
        h.remove()
    qkv_w, _, _ = _fused(block)
    per_channel = sum(w.detach().abs().sum(0) * seen[k].reshape(-1, WIDTH).norm(dim=0)
                      for k, w in (("attn", qkv_w), ("out", block.out.weight)))
    out_columns = next(s for s in graph.slices(group) if s.param == "out.weight")
    expected = np.zeros(len(group.units))
    np.add.at(expected, out_columns.positions, per_channel.double().numpy())
    np.testing.assert_allclose(criterion.scores(ctx, group), expected, rtol=1e-5)
