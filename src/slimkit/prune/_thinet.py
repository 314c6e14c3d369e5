"""ThiNet (Luo et al. 2017, "ThiNet: A Filter Level Pruning Method for Deep Neural Network Compression").

Channels of layer i are chosen by layer i+1: sample outputs ŷ of the next layer on calibration data, write each
as a sum of per-input-channel contributions x̂_c (Eq. 2-3), greedily build the set T of channels to remove whose
summed contribution is smallest, argmin_T Σ_samples (Σ_{c∈T} x̂_c)² (Eq. 5, Algorithm 1), then rescale the kept
channels' weights by least squares, ŵ = argmin_w Σ (ŷ − wᵀ x̂_kept)² (Eq. 7), so the next layer's output is
reconstructed. Here a "channel" is a unit of a coupled group, and the next layer is every dense Conv/Linear that
consumes the group (samples of all of them are stacked; the rescaling is solved per consumer).
"""

from __future__ import annotations

import logging

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from slimkit.graph import run_model
from slimkit.prune._criteria import Criterion, L1Criterion, PruneContext, register_criterion

log = logging.getLogger(__name__)


def thinet_greedy(contrib: np.ndarray, n_remove: int) -> np.ndarray:
    """Luo et al. Algorithm 1 on ``contrib`` (samples × channels): indices of the ``n_remove`` channels picked
    one at a time, each minimising ‖Σ_{c∈T} x̂_c‖² given the ones already picked."""
    a = np.asarray(contrib, dtype=np.float64)
    current = np.zeros(a.shape[0])
    chosen: list[int] = []
    free = np.ones(a.shape[1], dtype=bool)
    for _ in range(min(n_remove, a.shape[1])):
        cost = ((current[:, None] + a) ** 2).sum(0)
        cost[~free] = np.inf
        best = int(np.argmin(cost))
        chosen.append(best)
        free[best] = False
        current += a[:, best]
    return np.array(sorted(chosen), dtype=np.int64)


def thinet_scales(contrib: np.ndarray, removed: np.ndarray, ridge: float = 1e-6) -> np.ndarray:
    """Luo et al. Eq. 7: per kept channel, the scale w minimising ‖ŷ − x̂_kept w‖² with ŷ = Σ_all x̂_c.
    Returns one scale per channel (1 for removed ones, which are dropped anyway)."""
    a = np.asarray(contrib, dtype=np.float64)
    kept = np.ones(a.shape[1], dtype=bool)
    kept[np.asarray(removed, dtype=np.int64)] = False
    keep = np.flatnonzero(kept)  # np.setdiff1d imports numpy.ma (10 ms here) for this
    scales = np.ones(a.shape[1])
    if len(keep) == 0:
        return scales
    x, y = a[:, keep], a.sum(1)
    gram = x.T @ x + ridge * np.trace(x.T @ x) / max(len(keep), 1) * np.eye(len(keep))
    w = np.linalg.solve(gram, x.T @ y)
    # Least squares with a tiny ridge can, in degenerate cases, be marginally worse than no rescaling: keep 1s then.
    if ((y - x @ w) ** 2).sum() <= ((y - x.sum(1)) ** 2).sum():
        scales[keep] = w
    return scales


def _contributions(module: nn.Module, inputs: torch.Tensor, samples: int, rng: np.random.Generator) -> np.ndarray:
    """(samples × in_channels) per-input-channel contributions to random outputs of a dense Conv/Linear."""
    w = module.weight.detach()
    if isinstance(module, nn.Linear):
        x = inputs.detach().reshape(-1, inputs.shape[-1])
        rows = torch.as_tensor(rng.integers(0, x.shape[0], samples))
        outs = torch.as_tensor(rng.integers(0, w.shape[0], samples))
        return (x[rows] * w[outs]).double().numpy()
    x = inputs.detach()
    patches = F.unfold(x, module.kernel_size, module.dilation, module.padding, module.stride) if x.dim() == 4 else None
    if patches is None:
        raise ValueError("ThiNet supports Conv2d and Linear consumers")
    n, _, locations = patches.shape
    cin, k = w.shape[1], w.shape[2] * w.shape[3]
    imgs = torch.as_tensor(rng.integers(0, n, samples))
    locs = torch.as_tensor(rng.integers(0, locations, samples))
    outs = torch.as_tensor(rng.integers(0, w.shape[0], samples))
    p = patches[imgs, :, locs].reshape(samples, cin, k)
    return (p * w[outs].reshape(samples, cin, k)).sum(-1).double().numpy()


def _is_dense(module: nn.Module) -> bool:
    return isinstance(module, nn.Linear) or (isinstance(module, nn.Conv2d) and module.groups == 1)


@register_criterion("thinet")
class ThiNetCriterion(Criterion):
    """Greedy next-layer reconstruction selection + least-squares rescaling (Luo et al. 2017). Groups with no
    dense consumer (e.g. only the network output) fall back to L1 filter norms."""

    needs_data = True

    def prepare(self, ctx: PruneContext) -> None:
        samples = int((ctx.options or {}).get("samples", 4096))
        rng = ctx.rng or np.random.default_rng(0)
        consumers = {name for g in ctx.graph.groups for name, side in g.members
                     if side == "in" and _is_dense(ctx.graph.uses[name].module)}
        per_batch = {name: [] for name in consumers}
        batches = ctx.calibration_batches("thinet")
        hooks = []
        for name in consumers:
            module = ctx.graph.uses[name].module

            def hook(mod, args, out, name=name):
                per_batch[name].append(_contributions(mod, args[0], max(1, samples // len(batches)), rng))

            hooks.append(module.register_forward_hook(hook))
        try:
            with torch.no_grad():
                for x, _ in batches:
                    run_model(ctx.graph.model, x)
        finally:
            for h in hooks:
                h.remove()
        self._contrib = {name: np.concatenate(v) for name, v in per_batch.items() if v}

    def _unit_contrib(self, ctx: PruneContext, group, name: str) -> np.ndarray:
        a = self._contrib[name]
        pos = ctx.graph.unit_positions(ctx.graph.uses[name].in_map, group.units)
        out = np.zeros((a.shape[0], len(group.units)))
        hit = pos >= 0
        np.add.at(out.T, pos[hit], a[:, hit].T)
        return out

    def _consumers(self, ctx, group) -> list[str]:
        return [n for n, side in group.members if side == "in" and n in self._contrib]

    def scores(self, ctx, group):
        names = self._consumers(ctx, group)
        if not names:
            return L1Criterion().scores(ctx, group)
        a = np.concatenate([self._unit_contrib(ctx, group, n) for n in names])
        return (a ** 2).sum(0)  # each unit's own reconstruction cost, for global ranking

    def select(self, ctx, group, n_remove):
        names = self._consumers(ctx, group)
        if n_remove <= 0:
            return np.zeros(0, dtype=np.int64)
        if not names:
            log.info("thinet: group '%s' has no dense consumer; using L1 filter norms", group.name)
            return L1Criterion().select(ctx, group, n_remove)
        return thinet_greedy(np.concatenate([self._unit_contrib(ctx, group, n) for n in names]), n_remove)

    def update_(self, ctx, group, removed, model):
        if len(removed) == 0 or (ctx.options or {}).get("rescale", True) is False:
            return
        for name in self._consumers(ctx, group):
            scales = thinet_scales(self._unit_contrib(ctx, group, name), removed)
            use = ctx.graph.uses[name]
            pos = ctx.graph.unit_positions(use.in_map, group.units)
            column = np.where(pos >= 0, scales[np.maximum(pos, 0)], 1.0)
            module = model.get_submodule(use.name)
            weight = module.weight
            shape = [1, -1] + [1] * (weight.dim() - 2)
            scaled = weight.detach() * torch.as_tensor(column, dtype=weight.dtype).reshape(shape)
            module.weight = nn.Parameter(scaled, requires_grad=weight.requires_grad)  # never write into a shared one
