"""Automated gradual pruning (AGP, Zhu & Gupta 2017, "To prune, or not to prune", Eq. 1).

Sparsity rises from ``s_i`` to ``s_f`` over ``n`` pruning steps spaced ``Δt`` training steps apart, starting at
``t0``::

    s_t = s_f + (s_i − s_f) · (1 − (t − t0) / (n Δt))³      for t0 ≤ t ≤ t0 + n Δt

pruning quickly while the network is redundant and slowly as few weights remain. At each pruning step the masks
are recomputed from the current weight magnitudes (already-pruned weights are zero, so they stay pruned).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

from torch import nn

from slimkit._errors import ConfigError
from slimkit.prune._unstructured import MaskCallback, UnstructuredConfig, attach_masks_, magnitude_masks
from slimkit.train import TrainState


def agp_sparsity(step: int, initial: float, final: float, start: int, n_steps: int, interval: int = 1) -> float:
    """Zhu & Gupta's target sparsity at training step ``step`` (constant between pruning steps).

    Before ``start`` the sparsity is ``initial``; after ``start + n_steps·interval`` it is ``final``. Between, it
    follows the cubic schedule evaluated at the last pruning step reached (``t`` rounded down to ``start + kΔt``).
    """
    if step < start:
        return initial
    k = min(n_steps, (step - start) // interval)
    return final + (initial - final) * (1.0 - k / n_steps) ** 3


@dataclass(frozen=True)
class AGPConfig:
    """The AGP schedule: sparsity ``initial`` → ``final`` over ``n_steps`` pruning steps every ``interval`` training
    steps from ``start``. ``scope``/``layers``/``skip`` choose layers as in :class:`UnstructuredConfig`.

    Zhu & Gupta prune every ~1000 steps over tens of thousands of steps on ImageNet; on MNIST a few hundred steps
    over 2–3 epochs are enough.
    """

    final: float = 0.9
    initial: float = 0.0
    start: int = 0
    n_steps: int = 10
    interval: int = 100
    scope: str = "layer"
    layers: str | Sequence[str] | None = None
    skip: str | Sequence[str] | None = ()

    def __post_init__(self) -> None:
        for what, value in (("initial", self.initial), ("final", self.final)):
            if not 0.0 <= value < 1.0:
                raise ConfigError(f"AGP {what} sparsity {value} is out of range: use a value in [0, 1)")
        if self.initial > self.final:
            raise ConfigError(f"AGP initial sparsity {self.initial} exceeds final {self.final}: "
                              "the schedule only increases sparsity")
        if self.n_steps < 1 or self.interval < 1 or self.start < 0:
            raise ConfigError(f"AGP needs n_steps ≥ 1, interval ≥ 1 and start ≥ 0 (got n_steps={self.n_steps}, "
                              f"interval={self.interval}, start={self.start})")
        UnstructuredConfig(sparsity=self.final, scope=self.scope, layers=self.layers, skip=self.skip)

    @property
    def end(self) -> int:
        """The training step at which the final sparsity is reached."""
        return self.start + self.n_steps * self.interval

    def sparsity_at(self, step: int) -> float:
        return agp_sparsity(step, self.initial, self.final, self.start, self.n_steps, self.interval)


class AGPCallback(MaskCallback):
    """Steps the sparsity of a model along the AGP schedule during :func:`slimkit.train.fit`.

    The callback counts optimizer steps across several ``fit`` calls (``self.step``), re-prunes by magnitude at each
    pruning step, and in between keeps the pruned weights at zero like :class:`MaskCallback`. The masks live on the
    model (``weight_mask`` buffers), so :func:`~slimkit.prune.finalize` bakes them in afterwards.
    """

    def __init__(self, config: AGPConfig) -> None:
        super().__init__(None)
        self.config = config
        self.step = 0
        self.current_sparsity: float | None = None
        self.history: list[tuple[int, float]] = []

    def _prune_to(self, model: nn.Module, sparsity: float) -> None:
        if self.current_sparsity is not None and math.isclose(sparsity, self.current_sparsity):
            return
        c = self.config
        masks = magnitude_masks(model, UnstructuredConfig(sparsity, c.scope, c.layers, c.skip))
        attach_masks_(model, masks)
        self.current_sparsity = sparsity
        self.history.append((self.step, sparsity))

    def on_fit_start(self, state: TrainState) -> None:
        self._prune_to(state.model, self.config.sparsity_at(self.step))

    def on_batch_end(self, state: TrainState) -> None:
        self.step += 1
        self._prune_to(state.model, self.config.sparsity_at(self.step))
        super().on_batch_end(state)
