"""Callbacks hook into :func:`slimkit.train.fit` (masks kept at zero, BN penalties, schedules, early stops)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn


@dataclass
class TrainState:
    """What a callback sees. ``model`` is the unwrapped model (not the DDP wrapper)."""

    model: nn.Module
    optimizer: torch.optim.Optimizer
    epoch: int = 0
    step: int = 0
    batch_loss: float = 0.0
    metrics: dict[str, Any] = field(default_factory=dict)
    stop: bool = False


class Callback:
    """Base class: override the hooks you need. Each receives the :class:`TrainState`."""

    def on_fit_start(self, state: TrainState) -> None: ...

    def on_epoch_start(self, state: TrainState) -> None: ...

    def on_after_backward(self, state: TrainState) -> None:
        """After gradients are computed and before the optimizer step (gradient penalties, masking grads)."""

    def on_batch_end(self, state: TrainState) -> None:
        """After the optimizer step (re-applying masks, tying shared weights)."""

    def on_epoch_end(self, state: TrainState) -> None: ...

    def on_fit_end(self, state: TrainState) -> None: ...
