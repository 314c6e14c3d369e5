"""Pruning schedules: one-shot, iterative (prune a step → fine-tune → repeat; Han et al. 2015, Li et al. 2017 §4)
and layer by layer with least-squares reconstruction instead of fine-tuning (Luo et al. 2017 §3.3)."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import replace
from typing import Any

import numpy as np
import torch
from torch import nn

from slimkit._errors import ConfigError
from slimkit._registry import Registry
from slimkit.graph import dependency_graph
from slimkit.prune._config import PruneConfig
from slimkit.prune._reconstruct import reconstruct_
from slimkit.prune._structured import _group_ratio, prune_channels, pruning_info, set_pruning_info

SCHEDULES: Registry = Registry("prune schedule")


@SCHEDULES.register("oneshot")
def prune_oneshot(model: nn.Module, example_inputs: torch.Tensor, config: PruneConfig, *, data: Any = None,
                  train: Iterable | None = None, epochs: int = 0, **fit_kwargs: Any) -> nn.Module:
    """Prune once, then fine-tune ``epochs`` epochs on ``train`` (if given) with :func:`slimkit.train.fit`."""
    pruned = prune_channels(model, example_inputs, config, data=data)
    if train is not None and epochs > 0:
        from slimkit.train import fit

        fit(pruned, train, epochs=epochs, **{"progress": False, **fit_kwargs})
    return pruned


@SCHEDULES.register("iterative")
def prune_iterative(model: nn.Module, example_inputs: torch.Tensor, config: PruneConfig, *, train: Iterable,
                    steps: int = 3, epochs: int = 1, data: Any = None, **fit_kwargs: Any) -> nn.Module:
    """``steps`` rounds of (prune → fine-tune ``epochs``); each round removes 1 − (1 − ratio)^(1/steps) so the
    final width matches a one-shot ``ratio``."""
    if steps < 1 or epochs < 0:
        raise ConfigError(f"steps ({steps}) must be ≥ 1 and epochs ({epochs}) ≥ 0")
    config.validate()
    if config.target_macs is not None or config.speedup is not None:
        raise ConfigError("the iterative schedule takes a ratio, not a MAC target")
    from slimkit.train import fit

    def step_ratio(r: float) -> float:
        return 1 - (1 - r) ** (1 / steps)

    ratio = ({k: step_ratio(v) for k, v in config.ratio.items()} if isinstance(config.ratio, Mapping)
             else step_ratio(config.ratio))
    current = model
    for _ in range(steps):
        current = prune_channels(current, example_inputs, replace(config, ratio=ratio), data=data)
        if epochs:
            fit(current, train, epochs=epochs, **{"progress": False, **fit_kwargs})
    return current


@SCHEDULES.register("layerwise")
def prune_layerwise(model: nn.Module, example_inputs: torch.Tensor, config: PruneConfig, *, data: Iterable,
                    reconstruct: bool = True, batches: int = 4) -> nn.Module:
    """Prune one channel group at a time in graph order; after each, refit the layers that lost inputs to the
    *original* model's features on calibration ``data`` (no fine-tuning)."""
    config.validate()
    if data is None:
        raise ConfigError("the layerwise schedule needs calibration data: pass data=<loader>")
    graph = dependency_graph(model, example_inputs, skip=config.skip, protect_first=config.protect_first,
                             layers=config.layers, leaf_modules=config.leaf_modules)
    names = list(dict.fromkeys(g.name for g in graph.groups))
    cumulative: dict[str, dict[str, np.ndarray]] = {}
    current = model
    for name in names:
        ratio = _group_ratio(next(g for g in graph.groups if g.name == name), config.ratio)
        if ratio <= 0:
            continue
        step = prune_channels(current, example_inputs, replace(config, ratio={name: ratio}), data=data)
        keep = pruning_info(step)["keep"]
        for layer, sides in keep.items():
            entry = cumulative.setdefault(layer, {})
            for side, idx in sides.items():
                prev = entry.get(side)
                entry[side] = np.asarray(idx) if prev is None else prev[np.asarray(idx, dtype=np.int64)]
        if reconstruct:
            reconstruct_(step, model, data, batches=batches,
                         keep={k: {s: v.tolist() for s, v in d.items()} for k, d in cumulative.items()},
                         layers=[n for n, s in keep.items() if _lost_inputs(current, n, s)])
        current = step
    set_pruning_info(current, {"config": {"schedule": "layerwise"},
                               "keep": {k: {s: v.tolist() for s, v in d.items()} for k, d in cumulative.items()}})
    return current


def _lost_inputs(before: nn.Module, name: str, sides: dict) -> bool:
    module = dict(before.named_modules()).get(name)
    size = getattr(module, "in_channels", getattr(module, "in_features", None))
    return size is not None and "in" in sides and len(sides["in"]) < size
