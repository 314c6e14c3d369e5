"""Fine-tuning a rewritten model."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from torch import nn


def fine_tune_(model: nn.Module, loader: Iterable, *, epochs: int = 1, lr: float = 0.01,
               progress: bool = False, grad_clip: float | None = 5.0, **fit_options: Any) -> nn.Module:
    """Train a converted ``model`` in place with :func:`slimkit.train.fit` (SGD Nesterov, cosine schedule).

    The default learning rate is a fifth of training from scratch: the rewrite starts close to the old model.
    Gradients are clipped (norm 5) because a least-squares fit can leave a few large weights in the new layers.
    """
    from slimkit.train import default_optimizer, fit

    fit(model, loader, epochs=epochs, optimizer=lambda p: default_optimizer(p, lr), scheduler="cosine",
        progress=progress, grad_clip=grad_clip, **fit_options)
    return model.eval()
