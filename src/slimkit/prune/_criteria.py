"""Importance criteria for structured pruning, in a registry (``CRITERIA.get("l1")``).

A criterion scores every unit of a :class:`~slimkit.graph.ChannelGroup` (low = prune first). A unit's
parameters are the rows it owns in *every* layer of its group (a residual stream's unit owns a filter in each conv
that writes the stream, plus their BN entries), so coupled channels are scored together as in Torch-Pruning.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn

from slimkit._errors import ConfigError
from slimkit._registry import Registry
from slimkit.graph import ChannelGroup, DependencyGraph, handler_for

CRITERIA: Registry[type] = Registry("criterion")
_NORMS = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d, nn.GroupNorm, nn.LayerNorm)


@dataclass
class PruneContext:
    """What a criterion may look at: the graph (its ``gm`` is a private copy it may modify), calibration data,
    the loss for gradient criteria and a seeded generator."""

    graph: DependencyGraph
    data: Any = None
    loss: Any = None
    batches: int = 4
    rng: np.random.Generator | None = None
    options: dict | None = None

    def calibration_batches(self, name: str) -> list[tuple[torch.Tensor, torch.Tensor]]:
        if self.data is None:
            raise ConfigError(f"criterion '{name}' needs calibration data: pass data=<loader of (inputs, targets)> "
                              "(e.g. create_data('mnist').calibration)")
        out = []
        for batch in self.data:
            out.append((batch[0], batch[1]) if isinstance(batch, (tuple, list)) else (batch, None))
            if len(out) >= self.batches:
                break
        return out


def register_criterion(name: str):
    """Decorator: ``@register_criterion("mine")`` on a :class:`Criterion` subclass."""
    return CRITERIA.register(name)


def unit_rows(graph: DependencyGraph, group: ChannelGroup, *, norms_only: bool = False,
              transform=None) -> list[np.ndarray]:
    """Per member layer, a (units × k) matrix: the parameters each unit owns in that layer's outputs
    (rows of units with several channels, e.g. depthwise-repeated ones, are summed)."""
    mats = []
    for name, side in group.members:
        if side != "out":
            continue
        use = graph.uses[name]
        module = use.module if transform is None else transform(use.module)
        if norms_only and not isinstance(use.module, _NORMS):
            continue
        pos = graph.unit_positions(use.out_map, group.units)
        for rows in handler_for(use.module).out_weights(module):
            rows = rows.detach().double().numpy()
            if rows.shape[0] != len(pos):
                continue
            mat = np.zeros((len(group.units), rows.shape[1]))
            hit = pos >= 0
            np.add.at(mat, pos[hit], rows[hit])
            mats.append(mat)
    return mats


class Criterion:
    """Scores units (``scores``), picks the ones to remove (``select``: lowest scores by default) and may adjust
    the kept weights before slicing (``update_``, used by ThiNet's least-squares rescaling)."""

    needs_data = False

    def prepare(self, ctx: PruneContext) -> None:
        """Called once per pruning with the full context (data-driven criteria collect statistics here)."""

    def scores(self, ctx: PruneContext, group: ChannelGroup) -> np.ndarray:
        raise NotImplementedError

    def select(self, ctx: PruneContext, group: ChannelGroup, n_remove: int) -> np.ndarray:
        if n_remove <= 0:
            return np.zeros(0, dtype=np.int64)
        order = np.argsort(self.scores(ctx, group), kind="stable")
        return np.sort(order[:n_remove])

    def update_(self, ctx: PruneContext, group: ChannelGroup, removed: np.ndarray) -> None:
        """Adjust ``ctx.graph.gm`` weights given the units to remove (index into ``group.units``)."""


@register_criterion("l1")
class L1Criterion(Criterion):
    """Sum of absolute filter weights (Li et al. 2017, §3.1)."""

    def scores(self, ctx, group):
        return sum((np.abs(m).sum(1) for m in unit_rows(ctx.graph, group)), np.zeros(len(group.units)))


@register_criterion("l2")
class L2Criterion(Criterion):
    """Euclidean norm of the filter weights (Li et al. 2017 compare it with L1)."""

    def scores(self, ctx, group):
        return np.sqrt(sum(((m ** 2).sum(1) for m in unit_rows(ctx.graph, group)), np.zeros(len(group.units))))


@register_criterion("random")
class RandomCriterion(Criterion):
    """Uniformly random scores (the baseline every paper compares against)."""

    def scores(self, ctx, group):
        return ctx.rng.random(len(group.units))


@register_criterion("bn_scale")
class BNScaleCriterion(Criterion):
    """|γ| of the normalisation layers holding the unit (Liu et al. 2017, network slimming); train with
    :class:`BNScaleL1` first for sparse γ. Groups without a norm layer fall back to L1 filter norms."""

    def scores(self, ctx, group):
        gammas = []
        for name, side in group.members:
            use = ctx.graph.uses[name]
            if side == "out" and isinstance(use.module, _NORMS) and use.module.weight is not None:
                pos = ctx.graph.unit_positions(use.out_map, group.units)
                g = np.zeros(len(group.units))
                np.add.at(g, pos[pos >= 0], np.abs(use.module.weight.detach().double().numpy())[pos >= 0])
                gammas.append(g)
        if not gammas:
            return L1Criterion().scores(ctx, group)
        return sum(gammas)


@register_criterion("fpgm")
class FPGMCriterion(Criterion):
    """Filter pruning via geometric median (He et al. 2019): the filters closest to all others (small summed
    Euclidean distance) are the most replaceable."""

    def scores(self, ctx, group):
        mats = unit_rows(ctx.graph, group)
        if not mats:
            return np.zeros(len(group.units))
        x = np.concatenate(mats, axis=1)
        sq = (x ** 2).sum(1)
        dist = np.sqrt(np.maximum(sq[:, None] + sq[None, :] - 2 * x @ x.T, 0))
        return dist.sum(1)


@register_criterion("taylor")
class TaylorCriterion(Criterion):
    """First-order Taylor importance of a unit's parameters, Σ (w · ∂L/∂w)², summed over calibration batches
    (Molchanov et al. 2019, Eq. 8, group form)."""

    needs_data = True

    def prepare(self, ctx):
        gm = ctx.graph.gm
        loss_fn = ctx.loss or nn.functional.cross_entropy
        params = dict(gm.named_parameters())
        acc = {name: torch.zeros_like(p) for name, p in params.items()}
        was_training = gm.training
        gm.train()
        for x, y in ctx.calibration_batches("taylor"):
            gm.zero_grad()
            loss_fn(gm(x), y).backward()
            for name, p in params.items():
                if p.grad is not None:
                    acc[name] += (p.detach() * p.grad) ** 2
        gm.zero_grad()
        gm.train(was_training)
        self._acc = {id(params[n]): a for n, a in acc.items()}

    def _swap(self, module: nn.Module) -> nn.Module:
        clone = copy.copy(module)
        clone._parameters = {k: (nn.Parameter(self._acc[id(p)], requires_grad=False) if p is not None else None)
                             for k, p in module._parameters.items()}
        clone._modules = {k: self._swap(m) for k, m in module._modules.items()}
        return clone

    def scores(self, ctx, group):
        mats = unit_rows(ctx.graph, group, transform=self._swap)
        return sum((m.sum(1) for m in mats), np.zeros(len(group.units)))
