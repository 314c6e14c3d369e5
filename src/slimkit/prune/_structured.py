"""Structured pruning with physical removal: ``prune_channels(model, example_inputs, config) -> smaller model``.

The model is traced into a channel-dependency graph (:mod:`slimkit.graph`), every group loses its least important
units (Li et al. 2017 one-shot filter pruning; per-layer or global ranking), and the result is an
``torch.fx.GraphModule`` of ordinary, physically smaller layers that trains and exports to ONNX like any model.
The caller's model is never modified.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping
from dataclasses import asdict
from typing import Any

import numpy as np
import torch
import torch.fx as fx
from torch import nn

from slimkit._errors import TraceError
from slimkit._select import matches
from slimkit.graph import ChannelGroup, DependencyGraph, apply_removal, dependency_graph
from slimkit.prune._config import PruneConfig
from slimkit.prune._criteria import CRITERIA, PruneContext

log = logging.getLogger(__name__)


def _as_tuple(inputs: torch.Tensor | tuple) -> tuple:
    return inputs if isinstance(inputs, tuple) else (inputs,)


def _keep_count(n: int, ratio: float, round_to: int) -> int:
    keep = n - math.floor(n * ratio + 1e-9)
    if round_to > 1:
        keep = int(math.ceil(keep / round_to) * round_to)
    return int(min(n, max(1, keep)))


def _group_ratio(group: ChannelGroup, ratio: float | Mapping[str, float]) -> float:
    if not isinstance(ratio, Mapping):
        return float(ratio)
    for pattern, value in ratio.items():
        if matches(group.name, pattern):
            return float(value)
    return 0.0


def plan_removal(ctx: PruneContext, config: PruneConfig, ratio: float | Mapping[str, float],
                 keeps: Mapping[int, int] | None = None) -> dict[int, np.ndarray]:
    """Per group index, the unit indices (into ``group.units``) to remove; ``keeps`` (group index → units kept,
    from the latency search) overrides the ratio."""
    criterion = ctx.criterion
    groups = ctx.graph.groups
    if keeps is not None:
        keeps = {gi: int(keeps.get(gi, len(g.units))) for gi, g in enumerate(groups)}
    elif config.scope == "global" and not isinstance(ratio, Mapping):
        normalised = []
        for group in groups:
            s = np.asarray(criterion.scores(ctx, group), dtype=np.float64)
            normalised.append(s / (np.abs(s).mean() + 1e-12))
        total = sum(len(g.units) for g in groups)
        flat = sorted((s, gi, ui) for gi, s_all in enumerate(normalised) for ui, s in enumerate(s_all))
        counts = np.zeros(len(groups), dtype=np.int64)
        budget = math.floor(total * float(ratio) + 1e-9)
        for _, gi, _ in flat:
            if budget <= 0:
                break
            if counts[gi] < len(groups[gi].units) - 1:
                counts[gi] += 1
                budget -= 1
        keeps = {gi: _keep_count(len(g.units), counts[gi] / len(g.units), config.round_to)
                 for gi, g in enumerate(groups)}
    else:
        keeps = {gi: _keep_count(len(g.units), _group_ratio(g, ratio), config.round_to) for gi, g in enumerate(groups)}
    return {gi: np.asarray(criterion.select(ctx, groups[gi], len(groups[gi].units) - keep), dtype=np.int64)
            for gi, keep in keeps.items() if keep < len(groups[gi].units)}


def _keep_info(graph: DependencyGraph, removed: np.ndarray) -> dict[str, dict[str, list[int]]]:
    info = {}
    for name, use in graph.uses.items():
        entry = {}
        for side, m in (("in", use.in_map), ("out", use.out_map)):
            if m is not None:
                entry[side] = np.flatnonzero(~np.isin(graph.uf.find(m), removed)).tolist()
        info[name] = entry
    return info


def _prune_once(model: nn.Module, inputs: tuple, config: PruneConfig, ratio: float | Mapping[str, float],
                data: Any, loss: Any, keeps: Mapping[int, int] | None = None) -> fx.GraphModule:
    graph = dependency_graph(model, inputs, skip=config.skip, protect_first=config.protect_first,
                             layers=config.layers, leaf_modules=config.leaf_modules)
    criterion = CRITERIA.get(config.criterion)()
    ctx = PruneContext(graph, data=data, loss=loss, batches=config.batches, rng=np.random.default_rng(config.seed),
                       options=dict(config.criterion_options))
    ctx.criterion = criterion
    if criterion.needs_data:
        ctx.calibration_batches(config.criterion)  # fail early without data
    criterion.prepare(ctx)
    plan = plan_removal(ctx, config, ratio, keeps)
    for gi, removed in plan.items():
        criterion.update_(ctx, graph.groups[gi], removed)
    removed_roots = np.concatenate([graph.groups[gi].units[r] for gi, r in plan.items()] or [np.zeros(0, np.int64)])
    keep = _keep_info(graph, removed_roots)
    with torch.no_grad():
        reference = [o.shape for o in _flat_outputs(graph.gm(*inputs))]
    gm = apply_removal(graph, removed_roots)
    try:
        with torch.no_grad():
            after = [o.shape for o in _flat_outputs(gm(*inputs))]
    except Exception as error:
        raise TraceError(f"the pruned model does not run ({type(error).__name__}: {error}); an op couples channels "
                         "in a way slimkit does not follow: skip the layers around it (skip=[...]) or mark the "
                         "module as a leaf (leaf_modules=[...])") from error
    if after != reference:
        raise TraceError(f"pruning changed the model's output shape ({reference} → {after}): skip the output layers")
    info = {
        "config": {k: (dict(v) if isinstance(v, Mapping) else v) for k, v in asdict(config).items()},
        "groups": {f"{g.name}#{gi}": [len(g.units) - len(plan.get(gi, ())), len(g.units)]
                   for gi, g in enumerate(graph.groups)},
        "keep": keep,
    }
    set_pruning_info(gm, info)
    gm.train(model.training)
    return gm


def set_pruning_info(model: nn.Module, info: dict[str, Any]) -> None:
    """Attach what pruning did (config, kept/total units per group, kept channel indices per layer). Stored in
    ``GraphModule.meta`` so it survives ``copy.deepcopy``."""
    if isinstance(getattr(model, "meta", None), dict):
        model.meta["slimkit_pruning"] = info
    model.slimkit_pruning = info


def pruning_info(model: nn.Module) -> dict[str, Any] | None:
    """What :func:`prune_channels` did to ``model`` (None for a model it did not produce)."""
    meta = getattr(model, "meta", None)
    if isinstance(meta, dict) and "slimkit_pruning" in meta:
        return meta["slimkit_pruning"]
    return getattr(model, "slimkit_pruning", None)


def _flat_outputs(out: Any) -> list[torch.Tensor]:
    if isinstance(out, torch.Tensor):
        return [out]
    if isinstance(out, (tuple, list)):
        return [t for o in out for t in _flat_outputs(o)]
    if isinstance(out, dict):
        return [t for o in out.values() for t in _flat_outputs(o)]
    return []


def prune_channels(model: nn.Module, example_inputs: torch.Tensor | tuple, config: PruneConfig | None = None, *,
                   data: Any = None, loss: Any = None) -> fx.GraphModule:
    """A physically smaller copy of ``model`` with channels removed as ``config`` says.

    ``example_inputs``: one small input (batch 1) used to trace shapes. ``data``: an iterable of
    ``(inputs, targets)`` for data-driven criteria (``taylor``, ``thinet``); ``loss`` defaults to cross-entropy.
    With ``config.target_macs`` / ``config.speedup`` the global ratio is found by bisection on measured MACs; with
    ``config.target_latency`` the per-group widths come from a measured latency table (``prune/_latency.py``).
    :func:`pruning_info` on the result gives the config, kept/total units per group and kept channel indices.
    """
    config = (config or PruneConfig()).validate()
    inputs = _as_tuple(example_inputs)
    if config.target_latency is not None:
        from slimkit.prune._latency import prune_to_latency

        return prune_to_latency(model, inputs, config, data=data, loss=loss)
    if config.target_macs is None and config.speedup is None:
        return _prune_once(model, inputs, config, config.ratio, data, loss)
    from slimkit.analysis import profile

    base = profile(model, inputs).total.macs
    target = config.target_macs if config.target_macs is not None else base / config.speedup
    lo, hi, best = 0.0, 0.95, None
    for _ in range(10):
        mid = (lo + hi) / 2
        candidate = _prune_once(model, inputs, config, mid, data, loss)
        macs = profile(candidate, inputs).total.macs
        if macs <= target:
            best, hi = candidate, mid
        else:
            lo = mid
    if best is None:
        best = _prune_once(model, inputs, config, hi, data, loss)
        log.warning("MAC target %d not reached (best %d): the prunable groups are exhausted", target,
                    profile(best, inputs).total.macs)
    return best
