"""Trained models for benchmarks, trained once and cached on disk under everything that decides their weights.

A cache key is the digest of a record holding the whole training configuration (model and its options, epochs,
optimizer and every setting of it, schedule, seed, data set, split and size, batch size, shuffling, augmentation)
and the training code's version: a hash of the source of ``slimkit.train.fit`` and of the function that trains
(:func:`source_hash`). A changed recipe or training loop therefore trains anew instead of silently reusing a stale
model. Each cached ``<kind>-<digest>.pt`` (a state dict) sits beside a ``.json`` holding its record. The language
models of ``_lm_baselines`` use the same two helpers.

Baselines train on MNIST's 50k training images; the 10k validation images are held out for choosing settings and the
10k test images are read only by the final tables.
"""

from __future__ import annotations

import hashlib
import inspect
import json
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import nn

from slimkit import models
from slimkit._io import write_text_atomic
from slimkit.data import DataBundle, create_data
from slimkit.train import default_optimizer, fit, load_weights_, save_checkpoint

CACHE = Path(os.environ.get("SLIMKIT_BENCH_CACHE", Path(__file__).resolve().parent / ".cache"))
#: when this process started (see source_hash)
_STARTED = time.time()
#: bump when training changes in a way no hashed source shows (e.g. a dependency's behaviour)
LOOP_VERSION = 1


def source_hash(*functions: Any, salt: str = "") -> str:
    """12 hex digits of the SHA-256 of the functions' (or modules') source code and ``salt``: the training code's
    version in a cache key, so editing the loop retrains instead of reusing a model an older loop produced.

    The source is read from disk, so a file edited after this process started would describe other code than the
    process runs (and, for a function, other lines): that raises, and the process must be restarted."""
    for f in functions:
        path = inspect.getsourcefile(f)
        if path is not None and os.path.getmtime(path) > _STARTED:
            raise RuntimeError(f"{path} changed after this process started: its cache keys would not describe the "
                               "code it runs; restart the process")
    source = "".join(inspect.getsource(f) for f in functions) + salt
    return hashlib.sha256(source.encode()).hexdigest()[:12]


def digest(record: dict[str, Any], length: int = 16) -> str:
    """The hex digest of a JSON-able record (keys sorted): the cache key of whatever the record describes."""
    return hashlib.sha256(json.dumps(record, sort_keys=True, default=str).encode()).hexdigest()[:length]


def weights_digest(model: nn.Module) -> str:
    """16 hex digits of the SHA-256 of a model's state dict (names, shapes, values): names a teacher or an input
    model in another model's cache record exactly, whatever produced it."""
    h = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        t = tensor.detach().cpu().contiguous()
        h.update(f"{name}:{t.dtype}:{tuple(t.shape)}".encode())
        h.update(t.numpy().tobytes() if t.dtype != torch.bfloat16 else t.float().numpy().tobytes())
    return h.hexdigest()[:16]


def cache_path(kind: str, record: dict[str, Any], train: Callable[[nn.Module], Any], *,
               code: tuple[Callable[..., Any], ...] = ()) -> tuple[Path, dict[str, Any]]:
    """Where :func:`cached_model` keeps the model ``record`` describes, and the full record (with the code's
    version) it is keyed on."""
    full = {**record, "code": source_hash(fit, train, *code, salt=str(LOOP_VERSION))}
    return CACHE / f"{kind}-{digest(full)}.pt", full


def cached_model(kind: str, record: dict[str, Any], build: Callable[[], nn.Module],
                 train: Callable[[nn.Module], Any], *, code: tuple[Callable[..., Any], ...] = ()) -> nn.Module:
    """``build()`` with the weights cached under ``record``, else trained in place by ``train(model)`` and cached.

    ``record`` must name everything that decides the weights except the code; the source of ``fit``, of ``train``
    and of the functions in ``code`` (e.g. the distiller's) are hashed into the key here. Returns the model in eval
    mode.
    """
    path, full = cache_path(kind, record, train, code=code)
    model = build()
    if path.is_file():
        return load_weights_(model, path).eval()
    train(model)
    save_checkpoint(model.state_dict(), path)
    write_text_atomic(path.with_suffix(".json"), json.dumps(full, indent=2, default=str) + "\n")
    return model.eval()


def sgd_record(lr: float, weight_decay: float = 5e-4, momentum: float = 0.9) -> dict[str, Any]:
    """The optimizer part of a training record: ``default_optimizer``'s SGD (Nesterov when momentum > 0)."""
    return {"name": "sgd", "nesterov": momentum > 0, "lr": lr, "weight_decay": weight_decay, "momentum": momentum}


def loader_record(loader: Any, augment: str | bool | None = None) -> dict[str, Any]:
    """The data part of a training record: how many images, in which batches and order, with which augmentation
    (given by its spec: an augmentation object has no stable description)."""
    if getattr(loader, "augment", None) is not None and augment in (None, False):
        raise ValueError("an augmented loader's cache key needs its augmentation spec: pass augment=")
    inputs = loader.inputs
    return {"images": int(inputs.shape[0]), "shape": list(inputs.shape[1:]), "batch_size": loader.batch_size,
            "shuffle": loader.shuffle, "loader_seed": loader.seed, "augment": augment or None,
            "checksum": float(inputs[:: max(1, len(inputs) // 512)].double().sum())}


def trained(name: str, epochs: int, *, data: DataBundle | None = None, lr: float = 0.05, weight_decay: float = 5e-4,
            seed: int = 0, **model_kwargs: Any) -> nn.Module:
    """``models.create(name, **model_kwargs)`` trained on ``data.train`` (MNIST's 50k training images, batch 128 by
    default) for ``epochs`` with SGD (``default_optimizer``) and the one-cycle cosine schedule, cached on disk under
    its whole training config."""
    data = data or create_data("mnist", batch_size=128)
    record = {"model": name, "model_kwargs": model_kwargs, "epochs": epochs, "optimizer": sgd_record(lr, weight_decay),
              "scheduler": "cosine", "seed": seed, "data": data.name, "train": loader_record(data.train)}

    def build() -> nn.Module:
        torch.manual_seed(seed)  # the initialisation is part of the config
        return models.create(name, **model_kwargs)

    def train(model: nn.Module) -> None:
        fit(model, data.train, epochs=epochs, optimizer=lambda p: default_optimizer(p, lr, weight_decay),
            scheduler="cosine", seed=seed, progress=False)

    return cached_model(f"{name}-e{epochs}", record, build, train)
