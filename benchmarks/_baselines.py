"""Trained MNIST baselines for benchmarks, trained once by ``slimkit.train.fit`` and cached on disk.

The cache key is the whole training configuration (model and its options, epochs, optimizer and its settings,
schedule, seed, data set, training-set size, batch size, shuffling, augmentation), so two benchmarks that train the
same model differently never share a file by accident.
"""

from __future__ import annotations

import hashlib
import inspect
import json
import os
from pathlib import Path
from typing import Any

import torch
from torch import nn

from slimkit import models
from slimkit._io import write_text_atomic
from slimkit.data import DataBundle, create_data
from slimkit.train import default_optimizer, fit, load_weights_, save_checkpoint

CACHE = Path(os.environ.get("SLIMKIT_BENCH_CACHE", Path(__file__).resolve().parent / ".cache"))


def training_config(name: str, epochs: int, data: DataBundle, lr: float, model_kwargs: dict[str, Any]) -> dict:
    """Everything that decides the trained weights (the cache key)."""
    loader = data.train
    defaults = {k: v.default for k, v in inspect.signature(default_optimizer).parameters.items()
                if v.default is not inspect.Parameter.empty}
    return {
        "model": name, "model_kwargs": {k: model_kwargs[k] for k in sorted(model_kwargs)}, "epochs": epochs,
        "optimizer": {"name": "sgd", **defaults, "lr": lr}, "scheduler": "cosine", "seed": 0, "data": data.name,
        "train_images": getattr(loader, "dataset_size", None), "batch_size": getattr(loader, "batch_size", None),
        "shuffle": getattr(loader, "shuffle", None), "augment": repr(getattr(loader, "augment", None)),
    }


def trained(name: str, epochs: int, *, data: DataBundle | None = None, lr: float = 0.05, **model_kwargs) -> nn.Module:
    """``models.create(name, **model_kwargs)`` trained on ``data.train`` (MNIST, batch 128 by default) for ``epochs``
    with SGD (``default_optimizer``) and a one-cycle cosine schedule, cached on disk under its training config."""
    data = data or create_data("mnist", batch_size=128)
    config = training_config(name, epochs, data, lr, model_kwargs)
    digest = hashlib.sha256(json.dumps(config, sort_keys=True, default=str).encode()).hexdigest()[:12]
    path = CACHE / f"{name}-e{epochs}-{digest}.pt"
    model = models.create(name, **model_kwargs)
    if path.is_file():
        return load_weights_(model, path).eval()
    torch.manual_seed(0)
    fit(model, data.train, epochs=epochs, optimizer=lambda p: default_optimizer(p, lr), scheduler="cosine",
        progress=False)
    save_checkpoint(model.state_dict(), path)
    write_text_atomic(path.with_suffix(".json"), json.dumps(config, indent=2, default=str) + "\n")
    return model.eval()
