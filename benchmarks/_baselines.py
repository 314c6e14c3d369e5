"""Trained MNIST baselines for benchmarks, trained once by ``slimkit.train.fit`` and cached by name and epochs."""

from __future__ import annotations

import os
from pathlib import Path

import torch
from torch import nn

from slimkit import models
from slimkit.data import DataBundle, create_data
from slimkit.train import default_optimizer, fit, load_weights_, save_checkpoint

CACHE = Path(os.environ.get("SLIMKIT_BENCH_CACHE", Path(__file__).resolve().parent / ".cache"))


def trained(name: str, epochs: int, *, data: DataBundle | None = None, lr: float = 0.05, **model_kwargs) -> nn.Module:
    """``models.create(name, **model_kwargs)`` trained on MNIST for ``epochs`` (cosine schedule), cached on disk."""
    data = data or create_data("mnist", batch_size=128)
    tag = "-".join(f"{k}{v}" for k, v in sorted(model_kwargs.items()))
    path = CACHE / f"{name}{'-' + tag if tag else ''}-e{epochs}-lr{lr}.pt"
    model = models.create(name, **model_kwargs)
    if path.is_file():
        return load_weights_(model, path).eval()
    torch.manual_seed(0)
    fit(model, data.train, epochs=epochs, optimizer=lambda p: default_optimizer(p, lr), scheduler="cosine",
        progress=False)
    save_checkpoint(model.state_dict(), path)
    return model.eval()
