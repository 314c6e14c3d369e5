"""Cross-layer equalization (Nagel et al. 2019, "Data-Free Quantization", §4.1): for two layers with only a
positively homogeneous op between them (ReLU, max pooling, identity), ``f(W2 · relu(W1 x))`` is unchanged by
``W1 ← S⁻¹ W1, b1 ← S⁻¹ b1, W2 ← W2 S``; choosing ``s_i = sqrt(r1_i / r2_i)`` (their Eq. 12, with ``r`` the per-channel
weight ranges) gives both layers the same per-channel range ``sqrt(r1_i r2_i)``, which helps per-tensor weight grids.
"""

from __future__ import annotations

import torch
from torch import nn

#: ops that commute with a positive per-channel scale: relu(s·x) = s·relu(x), maxpool(s·x) = s·maxpool(x)
_HOMOGENEOUS = (nn.ReLU, nn.Identity, nn.MaxPool2d, nn.Dropout)


def equalization_pairs(model: nn.Module) -> list[tuple[str, str]]:
    """Consecutive (layer, next layer) pairs, Conv2d/Linear with ``groups == 1``, linked by a chain of single-use
    ReLU/identity/max-pool modules (found with torch.fx; an untraceable model has none)."""
    try:
        graph = torch.fx.symbolic_trace(model).graph
    except Exception:
        return []
    modules = dict(model.named_modules())
    calls: dict[str, int] = {}
    for node in graph.nodes:
        if node.op == "call_module":
            calls[node.target] = calls.get(node.target, 0) + 1

    def layer(node) -> nn.Module | None:
        if node.op != "call_module" or calls[node.target] != 1:
            return None
        module = modules[node.target]
        ok = isinstance(module, nn.Linear) or (isinstance(module, nn.Conv2d) and module.groups == 1)
        return module if ok else None

    pairs = []
    for node in graph.nodes:
        first = layer(node)
        if first is None:
            continue
        current = node
        while len(current.users) == 1:
            nxt = next(iter(current.users))
            if layer(nxt) is not None:
                second = modules[nxt.target]
                out_features = first.weight.shape[0]
                if second.weight.shape[1] == out_features:
                    pairs.append((node.target, nxt.target))
                break
            if nxt.op != "call_module" or calls.get(nxt.target) != 1 or not isinstance(modules[nxt.target],
                                                                                         _HOMOGENEOUS):
                break
            current = nxt
    return pairs


def equalize_(
    model: nn.Module, pairs: list[tuple[str, str]] | None = None, iterations: int = 4
) -> list[tuple[str, str]]:
    """Equalize ``pairs`` (default: :func:`equalization_pairs`) in place, ``iterations`` sweeps (chains converge
    over repeated sweeps); returns the pairs."""
    pairs = equalization_pairs(model) if pairs is None else pairs
    with torch.no_grad():
        for _ in range(iterations):
            for first_name, second_name in pairs:
                first, second = model.get_submodule(first_name), model.get_submodule(second_name)
                w1, w2 = first.weight, second.weight
                r1 = w1.abs().reshape(w1.shape[0], -1).amax(dim=1)
                r2 = w2.abs().transpose(0, 1).reshape(w2.shape[1], -1).amax(dim=1)
                scale = torch.where((r1 > 0) & (r2 > 0), torch.sqrt(r1 / r2.clamp(min=1e-12)), torch.ones_like(r1))
                w1.div_(scale.reshape(-1, *([1] * (w1.dim() - 1))))
                if first.bias is not None:
                    first.bias.div_(scale)
                w2.mul_(scale.reshape(1, -1, *([1] * (w2.dim() - 2))))
    return pairs


def equalize(model: nn.Module) -> nn.Module:
    """A copy of ``model`` (eval mode, BN folded first) with cross-layer equalization applied."""
    from slimkit.quantize._fold import fold_bn

    folded = fold_bn(model)
    equalize_(folded)
    return folded
