"""``slimkit demo``: the main job on the bundled MNIST default.

Trains (or reuses a cached checkpoint of) LeNet-5 on MNIST, then prints its profile, accuracy and latency.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

import torch

from slimkit._cli_common import console, print_profile, print_table

DEMO_EPOCHS = 5


def cache_dir() -> Path:
    """Where trained baselines are cached: ``$SLIMKIT_CACHE`` or ``~/.cache/slimkit``."""
    return Path(os.environ.get("SLIMKIT_CACHE", Path.home() / ".cache" / "slimkit"))


def add_parser(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser("demo", help="train/reuse LeNet-5 on MNIST and show profile, accuracy, latency")
    parser.add_argument("--quick", action="store_true", help="fewer epochs and repeats (for a smoke run)")
    parser.add_argument("--retrain", action="store_true", help="ignore the cached baseline and train again")
    parser.add_argument("--out", default="slimkit-demo", help="folder for the demo's outputs")
    parser.set_defaults(run=run)


def trained_baseline(name: str, epochs: int, *, retrain: bool = False, quick: bool = False):
    """A model trained on MNIST by ``fit``, cached by name and epochs; returns (model, data, checkpoint path)."""
    from slimkit import models
    from slimkit.data import create_data
    from slimkit.train import default_optimizer, fit, load_weights_, save_checkpoint

    data = create_data("mnist", batch_size=128)
    model = models.create(name)
    path = cache_dir() / f"{name}-mnist-e{epochs}.pt"
    if path.is_file() and not retrain:
        load_weights_(model, path)
        console().print(f"reusing the cached baseline {path}")
    else:
        console().print(f"training {name} on MNIST for {epochs} epochs (cached at {path} for next time)")
        fit(model, data.train, epochs=epochs, optimizer=lambda p: default_optimizer(p, 0.05), scheduler="cosine",
            val_loader=data.valid)
        save_checkpoint(model.state_dict(), path)
    return model.eval(), data, path


def run(args: argparse.Namespace) -> int:
    from slimkit.analysis import evaluate, latency, profile

    torch.set_num_threads(2)
    epochs = 2 if args.quick else DEMO_EPOCHS
    model, data, _ = trained_baseline("lenet5", epochs, retrain=args.retrain, quick=args.quick)
    example = data.example_input()
    prof = profile(model, example)
    print_profile(prof, title="LeNet-5 (Caffe variant) on 1×28×28")
    test = evaluate(model, data.test)
    repeats = 20 if args.quick else 100
    rows = []
    for backend in ("torch", "onnxruntime"):
        for batch in (1, 64):
            lat = latency(model, data.example_input(batch), backend=backend, threads=2, repeats=repeats)
            rows.append((backend, batch, lat.median_ms, lat.p10_ms, lat.p90_ms))
    print_table("latency (2 threads, ms)", ["backend", "batch", "median", "p10", "p90"], rows)
    console().print(
        f"MNIST test accuracy [bold]{test.accuracy:.2%}[/] ({test.errors} errors of {test.samples}); "
        f"{prof.total.params:,} params, {prof.total.macs:,} MACs, {prof.total.bytes / 1024:.0f} KiB at fp32"
    )
    return 0
