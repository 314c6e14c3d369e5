"""Fine-tuning a rewritten model."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from torch import nn

from slimkit.train import FitConfig, fit

#: A rewrite starts close to the old model, so a fifth of the from-scratch learning rate; gradients are clipped
#: (norm 5) because a least-squares fit can leave a few large weights in the new layers.
REWRITE_FIT = FitConfig(epochs=1, lr=0.01, grad_clip=5.0)


def fine_tune_(model: nn.Module, loader: Iterable, config: FitConfig = REWRITE_FIT, **loop_options: Any) -> nn.Module:
    """Train a converted ``model`` in place with :func:`slimkit.train.fit` as ``config`` says (default
    :data:`REWRITE_FIT`: 1 epoch of SGD Nesterov at lr 0.01, one-cycle cosine, gradient norm clipped at 5);
    ``loop_options`` go to ``fit`` (``callbacks``, ``val_loader``, ``checkpoint_dir`` …)."""
    fit(model, loader, **config.fit_options(), **loop_options)
    return model.eval()
