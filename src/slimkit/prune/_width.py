"""Uniform width reduction through the dependency graph (Howard et al. 2017's width multiplier α applied to a
trained model: every prunable channel group keeps round(α · width) channels, chosen by L1 norm)."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from torch import nn

from slimkit._errors import ConfigError
from slimkit.prune._config import PruneConfig
from slimkit.prune._structured import prune_channels


@dataclass(frozen=True)
class WidthConfig:
    """``multiplier`` α in (0, 1]: every coupled channel group keeps α of its channels (Howard et al. 2017);
    ``round_to`` rounds the kept counts to a multiple; ``skip`` names layers (names, globs, ``re:``) left whole."""

    multiplier: float = 0.5
    round_to: int = 1
    skip: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if isinstance(self.multiplier, bool) or not isinstance(self.multiplier, (int, float)) \
                or not 0 < self.multiplier <= 1:
            raise ConfigError(f"width multiplier {self.multiplier!r} is out of range: use a value in (0, 1]")
        if isinstance(self.round_to, bool) or not isinstance(self.round_to, int) or self.round_to < 1:
            raise ConfigError(f"round_to {self.round_to!r} is not a positive integer: use 1 (no rounding) or more")
        if isinstance(self.skip, str):
            object.__setattr__(self, "skip", (self.skip,))


def scale_width(model: nn.Module, example_inputs: Any, config: WidthConfig, *,
                data: Iterable | None = None) -> nn.Module:
    """A copy of ``model`` whose every coupled channel group is ``config.multiplier`` × as wide (inputs, outputs
    and the network output keep their size). Channels are chosen by L1 norm, so ``data`` is not used."""
    return prune_channels(model, example_inputs, PruneConfig(ratio=1 - config.multiplier, criterion="l1",
                                                             round_to=config.round_to, skip=config.skip))
