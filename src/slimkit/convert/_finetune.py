"""Fine-tuning a rewritten model, and the width scaling re-exported from the pruning package."""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
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


def width_scaling_available() -> bool:
    """True when the pruning package provides ``scale_width`` (its dependency-graph channel removal)."""
    return (Path(__file__).resolve().parent.parent / "prune" / "_width.py").is_file()


def scale_width(*args: Any, **kwargs: Any) -> nn.Module:
    """``slimkit.prune.scale_width``: fewer channels everywhere (Howard et al. §3.3's width multiplier applied to a
    trained model), imported lazily so the two packages can be imported in any order."""
    from slimkit.prune._width import scale_width as _scale_width

    return _scale_width(*args, **kwargs)
