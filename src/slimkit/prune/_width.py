"""Uniform width reduction through the dependency graph (Howard et al. 2017's width multiplier α applied to a
trained model: every prunable channel group keeps round(α · width) channels, chosen by L1 norm)."""

from __future__ import annotations

import torch
from torch import nn

from slimkit._errors import ConfigError
from slimkit.prune._config import PruneConfig
from slimkit.prune._structured import prune_channels


def scale_width(model: nn.Module, example_inputs: torch.Tensor | tuple, multiplier: float, *,
                round_to: int = 1, skip: tuple[str, ...] = ()) -> nn.Module:
    """A copy of ``model`` whose every coupled channel group is ``multiplier`` × as wide (inputs, outputs and
    the network output keep their size). ``multiplier`` in (0, 1]."""
    if not 0 < multiplier <= 1:
        raise ConfigError(f"width multiplier {multiplier} is out of range: use a value in (0, 1]")
    return prune_channels(model, example_inputs, PruneConfig(ratio=1 - multiplier, criterion="l1",
                                                             round_to=round_to, skip=skip))
