"""``FitConfig``: how a model is trained, declared once for every stage that trains (fine-tuning after a rewrite,
distillation, stage-wise reconstruction, the recipe's ``train`` / ``finetune`` stages)."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from slimkit._errors import ConfigError
from slimkit.train._fit import check_optimizer_values, default_optimizer


def _adamw(params: Iterable[nn.Parameter], lr: float, weight_decay: float, momentum: float) -> torch.optim.Optimizer:
    # β1 plays momentum's part; β2 = 0.95 is the usual choice for transformers (LLaMA, GPT-3)
    return torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay, betas=(momentum, 0.95))


#: the optimizers a training stage can use, by name: SGD with Nesterov momentum (CNNs) or AdamW (transformers)
OPTIMIZERS: dict[str, Callable[..., torch.optim.Optimizer]] = {"sgd": default_optimizer, "adamw": _adamw}
SCHEDULERS = ("cosine", None)


def _whole(name: str, value: Any) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ConfigError(f"{name}={value!r}: use a whole number ≥ 0")


@dataclass(frozen=True, kw_only=True)
class FitConfig:
    """How a stage trains with :func:`slimkit.train.fit`: ``epochs`` of ``optimizer`` ("sgd": Nesterov momentum;
    "adamw": β1 = ``momentum``, β2 = 0.95) at ``lr`` and ``weight_decay``, the one-cycle cosine ``scheduler``
    (Smith & Topin 2019; None: constant lr), gradients clipped to norm ``grad_clip`` when given, seeded by ``seed``.
    Validated on construction; every training config (``DistillConfig``, ``ReconstructConfig``) extends it."""

    epochs: int = 1
    lr: float = 0.05
    weight_decay: float = 5e-4
    momentum: float = 0.9
    optimizer: str = "sgd"
    scheduler: str | None = "cosine"
    grad_clip: float | None = None
    seed: int = 0
    progress: bool = False

    def __post_init__(self) -> None:
        _whole("epochs", self.epochs)
        _whole("seed", self.seed)
        check_optimizer_values(self.lr, self.weight_decay)
        if isinstance(self.momentum, bool) or not isinstance(self.momentum, int | float) or \
                not 0 <= self.momentum < 1:
            raise ConfigError(f"momentum={self.momentum!r}: use a value in [0, 1), e.g. 0.9 (0 for plain SGD)")
        if self.optimizer not in OPTIMIZERS:
            raise ConfigError(f"optimizer '{self.optimizer}' is unknown: use one of {', '.join(OPTIMIZERS)}")
        if self.scheduler not in SCHEDULERS:
            raise ConfigError(f"scheduler '{self.scheduler}' is unknown: use 'cosine' or None (a constant lr)")
        if self.grad_clip is not None and (isinstance(self.grad_clip, bool) or
                                           not isinstance(self.grad_clip, int | float) or not self.grad_clip > 0):
            raise ConfigError(f"grad_clip={self.grad_clip!r}: use a positive gradient-norm bound (e.g. 1.0) or None")

    def make_optimizer(self, params: Iterable[nn.Parameter]) -> torch.optim.Optimizer:
        """The configured optimizer over ``params``."""
        return OPTIMIZERS[self.optimizer](params, self.lr, self.weight_decay, self.momentum)

    def fit_options(self) -> dict[str, Any]:
        """These settings as :func:`slimkit.train.fit` keyword arguments: ``fit(model, loader, **c.fit_options())``."""
        return {"epochs": self.epochs, "optimizer": self.make_optimizer, "scheduler": self.scheduler,
                "grad_clip": self.grad_clip, "seed": self.seed, "progress": self.progress}
