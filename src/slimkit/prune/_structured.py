"""Structured pruning with physical removal: ``prune_channels(model, example_inputs, config) -> smaller model``.

The model is captured into a channel-dependency graph (:mod:`slimkit.graph`), every group loses its least
important units (Li et al. 2017 one-shot filter pruning; per-layer or global ranking), and what comes back is the
user's own model class with physically smaller layers (a ResNet stays a ResNet; a Hugging Face model keeps
``generate``, ``save_pretrained`` and its forward arguments, and its config is rewritten to the new sizes where one
value per field can describe them). The caller's model is never modified.
"""

from __future__ import annotations

import contextlib
import gc
import logging
import math
from collections.abc import Iterator, Mapping
from dataclasses import asdict, replace
from typing import Any

import numpy as np
import torch
from torch import nn

from slimkit._errors import ConfigError, TraceError
from slimkit._select import matches
from slimkit.graph import (
    ChannelGroup,
    Deadline,
    DependencyGraph,
    Removal,
    TimeBoundExceeded,
    UnfollowedSize,
    apply_removal,
    count_macs,
    dependency_graph,
    prune_as_graph_module,
    shared_copy,
    verify_removal,
)
from slimkit.prune._config import KINDS, PruneConfig
from slimkit.prune._criteria import CRITERIA, Criterion, PruneContext, keep_count, normalised

log = logging.getLogger(__name__)


def _group_ratio(group: ChannelGroup, ratio: float | Mapping[str, float]) -> float:
    if not isinstance(ratio, Mapping):
        return float(ratio)
    for pattern, value in ratio.items():
        if matches(group.name, pattern):
            return float(value)
    return 0.0


def plan_removal(ctx: PruneContext, config: PruneConfig, ratio: float | Mapping[str, float],
                 scores: list[np.ndarray] | None = None, keeps: Mapping[int, int] | None = None
                 ) -> dict[int, np.ndarray]:
    """Per group index, the unit indices (into ``group.units``) to remove. ``scores`` (one array per group) are
    computed once and reused across calls (a MAC-target search plans many ratios); ``keeps`` (group index → units
    kept, from the latency search) overrides the ratio."""
    criterion = ctx.criterion
    groups = ctx.graph.groups
    if keeps is not None:
        keeps = {gi: int(keeps.get(gi, len(g.units))) for gi, g in enumerate(groups)}
    elif config.scope == "global" and not isinstance(ratio, Mapping):
        scores = scores if scores is not None else [criterion.scores(ctx, g) for g in groups]
        flat = sorted((s, gi, ui) for gi, s_all in enumerate(scores) for ui, s in enumerate(normalised(s_all)))
        total = sum(len(g.units) for g in groups)
        counts = np.zeros(len(groups), dtype=np.int64)
        budget = math.floor(total * float(ratio) + 1e-9)
        for _, gi, _ in flat:
            if budget <= 0:
                break
            if counts[gi] < len(groups[gi].units) - 1:
                counts[gi] += 1
                budget -= 1
        keeps = {gi: keep_count(len(g.units), counts[gi] / len(g.units), config.round_to)
                 for gi, g in enumerate(groups)}
    else:
        keeps = {gi: keep_count(len(g.units), _group_ratio(g, ratio), config.round_to) for gi, g in enumerate(groups)}
    return {gi: np.asarray(criterion.select(ctx, groups[gi], len(groups[gi].units) - keep), dtype=np.int64)
            for gi, keep in keeps.items() if keep < len(groups[gi].units)}


def _keep_info(graph: DependencyGraph, removal: Removal) -> dict[str, dict[str, list[int]]]:
    info = {}
    for name, use in graph.uses.items():
        entry = {}
        for side, m in (("in", use.in_map), ("out", use.out_map)):
            if m is not None:
                entry[side] = np.flatnonzero(~removal.gone(m)).tolist()
        info[name] = entry
    return info


def _params(model: nn.Module) -> int:
    return sum(p.numel() for p in {id(p): p for p in model.parameters()}.values())


def config_graph(model: nn.Module, example_inputs: Any, config: PruneConfig,
                 deadline: Deadline | None = None) -> DependencyGraph:
    """The dependency graph ``config``'s pruning works on (its ``skip``, ``layers``, ``kinds`` ...); layer options
    that leave no group to prune are a :class:`ConfigError`, not a pruning that silently changes nothing."""
    graph = dependency_graph(model, example_inputs, skip=config.skip, protect_first=config.protect_first,
                             layers=config.layers, leaf_modules=config.leaf_modules, kinds=config.kinds,
                             gqa=config.gqa, deadline=deadline)
    given = {}  # the options the user narrowed the groups with
    if config.skip:
        given["skip"] = list(config.skip)
    if config.layers is not None:
        given["layers"] = list(config.layers)
    if not set(config.kinds) >= set(KINDS):
        given["kinds"] = list(config.kinds)
    if not graph.groups and given:
        shown = ", ".join(f"{k}={v}" for k, v in given.items())
        raise ConfigError(f"the layer options {shown} leave no channel group of this model to prune: every "
                          "group's layers are skipped or unselected; select more layers or skip fewer")
    if isinstance(config.ratio, Mapping):  # a per-group ratio whose pattern names no group would prune nothing
        names = [g.name for g in graph.groups]
        for pattern in config.ratio:
            if not any(matches(name, pattern) for name in names):
                listed = ", ".join(names[:12]) + (f", … ({len(names)} in all)" if len(names) > 12 else "")
                raise ConfigError(f"ratio pattern '{pattern}' matches no channel group of this model (a group is "
                                  f"named by its first layer: {listed or 'none'}): fix the pattern")
    return graph


class _Pruner:
    """One capture, scored once, materialised for as many ratios as a MAC-target search needs."""

    def __init__(self, model: nn.Module, inputs: Any, config: PruneConfig, data: Any, loss: Any,
                 deadline: Deadline) -> None:
        self.model, self.inputs, self.config, self.deadline = model, inputs, config, deadline
        self._graph_model_used = False  # graph.model became a pruned model (see _candidate)
        self.graph = config_graph(model, inputs, config, deadline)
        criterion = CRITERIA.get(config.criterion)()
        self.ctx = PruneContext(self.graph, data=data, loss=loss, batches=config.batches,
                                rng=np.random.default_rng(config.seed), options=dict(config.criterion_options),
                                criterion=criterion)
        if criterion.needs_data or config.reconstruct:
            self.ctx.calibration_batches("reconstruct" if config.reconstruct else config.criterion)
        criterion.prepare(self.ctx)
        deadline.check("scoring")
        self.scores = ([criterion.scores(self.ctx, g) for g in self.graph.groups]
                       if config.scope == "global" else None)

    def plan(self, ratio: float | Mapping[str, float], keeps: Mapping[int, int] | None = None
             ) -> tuple[dict[int, np.ndarray], Removal]:
        """The units each group loses at ``ratio`` (or keeping ``keeps``) and the removal they make (nothing is
        built)."""
        plan = plan_removal(self.ctx, self.config, ratio, self.scores, keeps)
        roots = np.concatenate([self.graph.groups[gi].units[r] for gi, r in plan.items()] or [np.zeros(0, np.int64)])
        return plan, Removal(self.graph, roots)

    def _candidate(self, plan: dict[int, np.ndarray]) -> nn.Module:
        """The model the removal is applied to, with the criterion's weight updates (ThiNet's rescaling): the
        graph's own copy of the model the first time, where nothing reads it once pruned (no weight updates, no
        leaf modules whose MACs are counted from the module), else a new copy sharing the model's parameters."""
        graph = self.graph
        if (not self._graph_model_used and type(self.ctx.criterion).update_ is Criterion.update_
                and all(call.module is None for call in graph.capture.calls)):
            self._graph_model_used = True
            return graph.model
        candidate = shared_copy(self.model)
        for gi, removed in plan.items():
            self.ctx.criterion.update_(self.ctx, self.graph.groups[gi], removed, candidate)
        return candidate

    def prune(self, ratio: float | Mapping[str, float], keeps: Mapping[int, int] | None = None, *,
              fx_fallback: bool = True) -> nn.Module:
        """The pruned model; where its code uses a size slimkit cannot rewrite, :class:`UnfollowedSize` (with
        ``fx_fallback=False``) or else a ``torch.fx.GraphModule`` if a trace can take the pruning."""
        graph = self.graph
        if self._graph_model_used:  # an earlier prune took graph.model: scores and the candidate need it whole
            graph.model = shared_copy(self.model)
            self._graph_model_used = False
        plan, removal = self.plan(ratio, keeps)
        self.deadline.check("removal")
        pruned = apply_removal(graph, removal.removed, model=self._candidate(plan), verify=False)
        attributes = pruned.__dict__.pop("slimkit_attributes", {})
        hf = _rewrite_hf_config(pruned)
        graph_module = None
        try:
            verify_removal(graph, pruned, removal, attributes, deadline=self.deadline)
        except TimeBoundExceeded:
            raise
        except TraceError as error:  # a constant size in the model's code: the torch.fx fallback, if it traces
            if not fx_fallback and isinstance(error, UnfollowedSize):
                raise
            try:
                pruned, attributes = prune_as_graph_module(graph, removal, self._candidate(plan), self.deadline)
            except TraceError as fallback:
                raise TraceError(f"{error} (a torch.fx trace could not take the pruning either: {fallback})") from None
            graph_module = str(error)
            log.warning("returning a torch.fx.GraphModule, not a %s: %s", type(self.model).__name__, error)
        pruned.train(self.model.training)
        info = self._info(plan, removal, ratio, attributes, hf)
        info["graph_module"] = graph_module
        info["reduction"] = {"params": [_params(self.model), _params(pruned)],
                             "macs": [count_macs(graph), count_macs(graph, removal)],
                             "requested_ratio": info["ratio"]}
        set_pruning_info(pruned, info)
        return pruned

    def _info(self, plan: dict[int, np.ndarray], removal: Removal, ratio: Any, attributes: dict,
              hf: dict | None) -> dict[str, Any]:
        graph = self.graph
        config = {k: (dict(v) if isinstance(v, Mapping) else v) for k, v in asdict(self.config).items()}
        return {
            "config": config,
            "groups": {f"{g.name}#{gi}": [len(g.units) - len(plan.get(gi, ())), len(g.units)]
                       for gi, g in enumerate(graph.groups)},
            "kinds": {f"{g.name}#{gi}": g.kind for gi, g in enumerate(graph.groups)},
            "keep": _keep_info(graph, removal),
            "ratio": dict(ratio) if isinstance(ratio, Mapping) else float(ratio),
            "attributes": {k: {a: (list(v) if isinstance(v, tuple) else v) for a, v in d.items()}
                           for k, d in attributes.items()},
            "opaque": graph.opaque_ops(),
            "hf_config": hf,
            # the input the pruning ran on: a container checks a pruned model of the user's own code on it
            "input_shape": list(self.inputs.shape) if isinstance(self.inputs, torch.Tensor) else None,
        }


def _rewrite_hf_config(model: nn.Module) -> dict[str, Any] | None:
    """Rewrite a Hugging Face model's config to its new sizes (``slimkit.prune._hf``; transformers is imported only
    for Hugging Face models)."""
    if not any(k.__module__.startswith("transformers.") for k in type(model).__mro__):
        return None
    from slimkit.prune._hf import rewrite_config_

    return rewrite_config_(model)


def set_pruning_info(model: nn.Module, info: dict[str, Any]) -> None:
    """Attach what pruning did (config, kept/total units per group, kept channel indices per layer, size
    attributes changed, opaque ops and what they froze, the reduction reached). Survives ``copy.deepcopy``."""
    if isinstance(getattr(model, "meta", None), dict):
        model.meta["slimkit_pruning"] = info
    model.__dict__["slimkit_pruning"] = info


def pruning_info(model: nn.Module) -> dict[str, Any] | None:
    """What :func:`prune_channels` did to ``model`` (None for a model it did not produce).

    Keys: ``config``; ``groups`` (kept/total units per group) and ``kinds``; ``keep`` (kept input/output channel
    indices per layer); ``attributes`` (size attributes set, per module); ``opaque`` (ops no rule followed, with the
    layers whose channels each froze: why a ratio may not be reached); ``reduction`` (parameters and MACs before and
    after, next to the requested ratio); ``kept_whole`` (modules whose code uses a size slimkit cannot rewrite, kept
    with all their channels so the rest could be pruned); ``hf_config`` (for Hugging Face models: whether
    ``save_pretrained`` → ``from_pretrained`` reproduces the model, else why not).
    """
    meta = getattr(model, "meta", None)
    if isinstance(meta, dict) and "slimkit_pruning" in meta:
        return meta["slimkit_pruning"]
    return model.__dict__.get("slimkit_pruning")


def prune_channels(model: nn.Module, example_inputs: Any, config: PruneConfig | None = None, *,
                   data: Any = None, loss: Any = None) -> nn.Module:
    """A physically smaller copy of ``model`` — same class, same methods — with channels removed as ``config``
    says (Li et al. 2017 filter pruning, generalised to coupled channel groups, attention heads and residual
    widths).

    ``example_inputs``: one small input (batch 1) the model is run on once: a tensor, a tuple, or a dict of keyword
    inputs (``{"input_ids": ..., "attention_mask": ...}``). ``data``: an iterable of ``(inputs, targets)`` or of
    keyword dicts for data-driven criteria (``taylor``, ``wanda``, ``thinet``) and ``reconstruct``; ``loss``
    defaults to cross-entropy (or the model's own loss). With ``config.target_macs`` / ``config.speedup`` the
    global ratio is found by bisection on the MACs each candidate pruning implies (counted from the captured
    shapes, as :func:`slimkit.analysis.profile` counts them); with ``config.target_latency`` the per-group widths
    come from a measured latency table (``prune/_latency.py``). :func:`pruning_info` on the result says what was
    done.
    """
    config = (config or PruneConfig()).validate()
    if config.target_latency is not None:
        from slimkit.prune._latency import prune_to_latency

        return prune_to_latency(model, example_inputs, config, data=data, loss=loss)
    with Deadline(config.timeout, "pruning") as deadline, _gc_paused():
        kept_whole: tuple[str, ...] = ()
        for classes_kept in range(MAX_KEPT_WHOLE_CLASSES + 1):
            leaves = tuple(config.leaf_modules) + kept_whole
            pruner = _Pruner(model, example_inputs, replace(config, leaf_modules=leaves), data, loss, deadline)
            ratio = config.ratio if config.target_macs is None and config.speedup is None else _search(pruner, config)
            try:
                pruned = pruner.prune(ratio, fx_fallback=classes_kept == MAX_KEPT_WHOLE_CLASSES)
                break
            except UnfollowedSize as error:
                more = _same_class_modules(model, error.scope, exclude=leaves)
                if not more:
                    pruned = pruner.prune(ratio)
                    break
                log.warning("%s: keeping every %s whole (%d modules) and pruning the rest", error,
                            type(model.get_submodule(error.scope)).__name__, len(more))
                kept_whole += more
        info = pruning_info(pruned)
        if info is not None:
            info["kept_whole"] = list(kept_whole)
        if config.reconstruct:
            from slimkit.prune._reconstruct import reconstruct_

            reconstruct_(pruned, model, data, batches=config.batches)
    return pruned


@contextlib.contextmanager
def _gc_paused() -> Iterator[None]:
    """Python's cyclic garbage collector off while pruning: capture and copies allocate many small objects, which
    triggered full collections over everything torch has loaded (about half the time of a ResNet-18 prune); the
    few cycles pruning leaves are collected once it is done."""
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


#: how many module classes prune_channels keeps whole, one per verification failure, before the torch.fx fallback
MAX_KEPT_WHOLE_CLASSES = 3


def _same_class_modules(model: nn.Module, scope: str, *, exclude: tuple[str, ...]) -> tuple[str, ...]:
    """Every module of the class running at ``scope`` (the same code fails the same way in each instance), except
    the model itself and those already kept whole; empty when there is nothing to keep."""
    if not scope:
        return ()
    try:
        cls = type(model.get_submodule(scope))
    except AttributeError:
        return ()
    return tuple(name for name, m in model.named_modules() if name and type(m) is cls and name not in exclude)


def _prune_once(model: nn.Module, inputs: Any, config: PruneConfig, ratio: float | Mapping[str, float],
                data: Any, loss: Any, keeps: Mapping[int, int] | None = None) -> nn.Module:
    """One pruning at ``ratio`` or to ``keeps`` (group index → units kept, indices of
    ``dependency_graph(model, inputs, ...)`` built with the same config), for the latency search."""
    with Deadline(config.timeout, "pruning") as deadline:
        return _Pruner(model, inputs, config, data, loss, deadline).prune(ratio, keeps)


def _search(pruner: _Pruner, config: PruneConfig) -> float:
    """The smallest global ratio (bisection, 10 steps) whose pruning reaches the MAC target."""
    base = count_macs(pruner.graph)
    target = config.target_macs if config.target_macs is not None else base / config.speedup
    lo, hi, best = 0.0, 0.95, None
    for _ in range(10):
        pruner.deadline.check("MAC-target search")
        mid = (lo + hi) / 2
        if count_macs(pruner.graph, pruner.plan(mid)[1]) <= target:
            best, hi = mid, mid
        else:
            lo = mid
    if best is None:
        log.warning("MAC target %d not reached (best %d at ratio %.2f): the prunable groups are exhausted", target,
                    count_macs(pruner.graph, pruner.plan(hi)[1]), hi)
        best = hi
    return best
