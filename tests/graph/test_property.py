"""Property test: on random nets with residual adds, concats, splits, shuffles, depthwise and group convs,
pruning any ratio with any selection never breaks the forward pass."""

from __future__ import annotations

import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from slimkit.prune import PruneConfig, prune_channels

KINDS = ["conv", "res", "cat", "dw", "dw2", "group", "shuffle", "split"]


def _cbr(cin: int, cout: int, groups: int = 1) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, 3, padding=1, groups=groups, bias=False), nn.BatchNorm2d(cout), nn.ReLU())


class RandomNet(nn.Module):
    def __init__(self, blocks: list[tuple[str, int]]) -> None:
        super().__init__()
        self.kinds = [k for k, _ in blocks]
        c = 8
        self.stem = _cbr(1, c)
        layers = []
        for kind, width in blocks:
            if kind == "conv":
                layers.append(_cbr(c, width))
                c = width
            elif kind == "res":
                layers.append(nn.Sequential(nn.Conv2d(c, c, 3, padding=1), nn.BatchNorm2d(c)))
            elif kind == "cat":
                layers.append(nn.ModuleList([_cbr(c, width), _cbr(c, 4)]))
                c = width + 4
            elif kind == "dw":
                layers.append(_cbr(c, c, groups=c))
            elif kind == "dw2":
                layers.append(_cbr(c, 2 * c, groups=c))
                c = 2 * c
            elif kind == "group":
                layers.append(_cbr(c, width, groups=2))
                c = width
            elif kind == "split":
                layers.append(_cbr(c // 2, c // 2))
            else:
                layers.append(nn.Identity())
        self.layers = nn.ModuleList(layers)
        self.head = nn.Linear(c, 5)

    def forward(self, x):
        x = self.stem(x)
        for kind, layer in zip(self.kinds, self.layers, strict=True):
            if kind == "res":
                x = torch.relu(x + layer(x))
            elif kind == "cat":
                x = torch.cat([layer[0](x), layer[1](x)], dim=1)
            elif kind == "shuffle":
                x = x.unflatten(1, (2, -1)).transpose(1, 2).flatten(1, 2)
            elif kind == "split":
                a, b = x.chunk(2, dim=1)
                x = torch.cat([layer(b), a], dim=1)
            else:
                x = layer(x)
        return self.head(torch.flatten(nn.functional.adaptive_avg_pool2d(x, 1), 1))


blocks = st.lists(st.tuples(st.sampled_from(KINDS), st.sampled_from([4, 8, 12, 16])), min_size=1, max_size=6)


@settings(max_examples=25, deadline=None)
@given(blocks=blocks, ratio=st.floats(0.0, 0.9), scope=st.sampled_from(["layer", "global"]),
       round_to=st.sampled_from([1, 2]), seed=st.integers(0, 10))
def test_pruning_never_breaks_the_forward(blocks, ratio, scope, round_to, seed):
    model = RandomNet(blocks).eval()
    x = torch.randn(1, 1, 12, 12)
    pruned = prune_channels(model, x, PruneConfig(ratio=ratio, criterion="random", scope=scope,
                                                  round_to=round_to, seed=seed))
    out = pruned(torch.randn(3, 1, 12, 12))
    assert out.shape == (3, 5) and torch.isfinite(out).all()
    assert sum(p.numel() for p in pruned.parameters()) <= sum(p.numel() for p in model.parameters())
