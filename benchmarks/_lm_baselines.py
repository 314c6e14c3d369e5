"""The tiny language models trained on the standard-library corpus, trained once by ``slimkit.train.fit`` and cached.

The cache key is everything that determines the weights: the model spec, the whole training config, the corpus
and tokenizer fingerprint, and the training code's version (a hash of this loop's and ``fit``'s source). A cached
model is a ``save_pretrained`` folder (safetensors) loaded back with ``slimkit.models.load_pretrained``, beside a
``record.json`` of its config, training time and validation perplexity. Only the validation split is used here;
the test split is read once, by the benchmark's final table.
"""

from __future__ import annotations

import json
import logging
import os
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from benchmarks._baselines import digest, source_hash
from slimkit import models
from slimkit._io import write_text_atomic
from slimkit.analysis import evaluate
from slimkit.data import TensorLoader, TextDataBundle, create_data
from slimkit.train import fit

log = logging.getLogger(__name__)
CACHE = Path(os.environ.get("SLIMKIT_BENCH_CACHE", Path(__file__).resolve().parent / ".cache")) / "lm"
#: bump when the loop below changes in a way its source hash would not show (e.g. a dependency's behaviour)
LOOP_VERSION = 1


@dataclass(frozen=True)
class LMTrainConfig:
    """AdamW (Loshchilov & Hutter 2019), β = (0.9, 0.95), weight decay on every ≥2-D weight (matrices and the
    embedding; not norm scales or biases), ``fit``'s one-cycle cosine schedule (15% warm-up), gradient clipping at 1:
    the usual GPT-2 / Llama recipe. ``lr`` and ``epochs`` are chosen on the validation split (bench_lm)."""

    epochs: int = 1
    lr: float = 2e-3
    weight_decay: float = 0.1
    batch_size: int = 16
    block_size: int = 256
    grad_clip: float = 1.0
    seed: int = 0
    #: train on this fraction of the training blocks (a fixed seeded subset): short proxy runs for tuning
    train_fraction: float = 1.0


def train_loader(data: TextDataBundle, config: LMTrainConfig, *, blocks: int | None = None, seed: int | None = None):
    """The training blocks, or a fixed seeded subset of ``blocks`` of them (``config.train_fraction`` by default)."""
    loader = data.train
    count = blocks if blocks is not None else round(config.train_fraction * loader.dataset_size)
    if count >= loader.dataset_size:
        return loader
    order = torch.randperm(loader.dataset_size, generator=torch.Generator().manual_seed(config.seed if seed is None
                                                                                       else seed))[:count]
    return TensorLoader(loader.inputs[order], loader.targets[order], config.batch_size, shuffle=True,
                        seed=config.seed)


def adamw(model: nn.Module, lr: float, weight_decay: float):
    """AdamW with weight decay on ≥2-D weights only (norm scales and biases are not decayed)."""
    decay = [p for p in model.parameters() if p.requires_grad and p.dim() >= 2]
    rest = [p for p in model.parameters() if p.requires_grad and p.dim() < 2]
    groups = [{"params": decay, "weight_decay": weight_decay}, {"params": rest, "weight_decay": 0.0}]
    return torch.optim.AdamW(groups, lr=lr, betas=(0.9, 0.95), eps=1e-8)


def tuned_config(spec: str) -> LMTrainConfig:
    """The training config bench_lm chose for ``spec`` on the validation files (its learning rate, read from
    ``benchmarks/results/lm.json``), or the default before bench_lm has run: other benchmarks that need a trained
    tiny LM (e.g. quantization) use the same model as the LM table."""
    results = Path(__file__).resolve().parent / "results" / "lm.json"
    config = LMTrainConfig()
    if results.is_file():
        chosen = json.loads(results.read_text()).get("chosen_lr", {})
        if spec in chosen:
            config = LMTrainConfig(lr=float(chosen[spec]))
    return config


def lm_data(config: LMTrainConfig = LMTrainConfig()) -> TextDataBundle:
    return create_data("stdlib", batch_size=config.batch_size, block_size=config.block_size, seed=config.seed)


def _code_version() -> str:
    return source_hash(train_lm, train_loader, fit, adamw, salt=str(LOOP_VERSION))


def cache_key(spec: str, config: LMTrainConfig, data: TextDataBundle) -> str:
    return digest({"spec": spec, "config": asdict(config), "data": data.fingerprint, "code": _code_version()})


def train_lm(model: nn.Module, data: TextDataBundle, config: LMTrainConfig, *, progress: bool = False) -> float:
    """Train ``model`` in place on ``data.train``; returns the wall-clock seconds."""
    torch.manual_seed(config.seed)
    began = time.perf_counter()
    fit(model, train_loader(data, config), epochs=config.epochs,
        optimizer=lambda _: adamw(model, config.lr, config.weight_decay), scheduler="cosine",
        grad_clip=config.grad_clip, seed=config.seed, progress=progress)
    return time.perf_counter() - began


def trained_lm(spec: str, config: LMTrainConfig = LMTrainConfig(), *, data: TextDataBundle | None = None,
               progress: bool = False) -> tuple[nn.Module, dict[str, Any]]:
    """``models.from_spec(spec)`` trained on the stdlib corpus with ``config``, cached; returns (model, record)."""
    data = data or lm_data(config)
    folder = CACHE / f"{spec.replace(':', '_').replace(',', '_').replace('=', '')}-{cache_key(spec, config, data)}"
    record_path = folder / "record.json"
    if record_path.is_file():
        return models.load_pretrained(folder).eval(), json.loads(record_path.read_text())
    torch.manual_seed(config.seed)
    model = models.from_spec(spec)
    log.info("training %s (%s) on %d blocks", spec, config, train_loader(data, config).dataset_size)
    seconds = train_lm(model, data, config, progress=progress)
    model.eval()
    val = evaluate(model, data.valid)
    record = {
        "spec": spec, "config": asdict(config), "data": data.fingerprint, "code": _code_version(),
        "params": sum(p.numel() for p in model.parameters()), "train_seconds": seconds,
        "train_tokens": config.epochs * train_loader(data, config).dataset_size * config.block_size,
        "valid_loss": val.loss, "valid_ppl": val.perplexity, "valid_bpb": data.bits_per_byte("valid", val.loss),
        "threads": torch.get_num_threads(),
    }
    model.save_pretrained(folder, safe_serialization=True)
    write_text_atomic(record_path, json.dumps(record, indent=2) + "\n")
    return model, record
