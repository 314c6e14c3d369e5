"""Helpers shared by the ``slimkit`` commands: loading a model spec + checkpoint, data, and printing tables."""

from __future__ import annotations

import argparse
import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from slimkit._errors import ConfigError, SlimkitError
from slimkit._io import write_text_atomic


def add_model_args(parser: argparse.ArgumentParser, *, checkpoint: bool = True) -> None:
    parser.add_argument("model", help="model spec: a registered name (lenet5, resnet20:width=0.5) or file.py:factory")
    if checkpoint:
        parser.add_argument("--checkpoint", "-c", help="weights to load (.pt state dict / training checkpoint, or "
                            ".safetensors); loaded with weights_only=True")


def add_data_args(parser: argparse.ArgumentParser, default: str | None = "mnist") -> None:
    parser.add_argument("--data", default=default, help="dataset name (mnist, digits, ...)")
    parser.add_argument("--batch-size", type=int, default=128)


def add_optimizer_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--lr", type=float, default=0.05, help="SGD (Nesterov momentum 0.9) learning rate")
    parser.add_argument("--weight-decay", type=float, default=5e-4,
                        help="SGD weight decay (0 for none, e.g. a student regularised by distillation alone)")


def add_augment_arg(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--augment", default=None, metavar="SPEC",
                        help="augment the training images: 'shift' (random ±2 px), 'elastic' (Simard et al. 2003), "
                        "chained as 'elastic+shift', options as 'elastic:alpha=34,sigma=4'")


def add_out_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", "-o", required=True, help="output folder (must be empty or new; see --force)")
    parser.add_argument("--force", action="store_true", help="write into a non-empty output folder")


def load_model(spec: str, checkpoint: str | None = None, **overrides: Any) -> nn.Module:
    """Build the model named by ``spec`` and load ``checkpoint`` into it if given."""
    from slimkit.models import from_spec
    from slimkit.train import load_weights_

    model = from_spec(spec, allow_code=True, **overrides)  # the user typed this spec on the command line
    if checkpoint:
        load_weights_(model, checkpoint)
    return model.eval()


def class_count_option(spec: str, num_classes: int) -> dict[str, int]:
    """``{"num_classes": n}`` when ``spec`` is a registered model whose factory takes it (so it fits the data)."""
    import inspect

    from slimkit.models import MODELS, parse_spec

    target, options = parse_spec(spec)
    accepts = target in MODELS and "num_classes" in inspect.signature(MODELS.get(target)).parameters
    if accepts and "num_classes" not in options:
        return {"num_classes": num_classes}
    return {}


def input_shape_for(spec: str, data_shape: tuple[int, ...] | None) -> tuple[int, ...]:
    from slimkit.models import spec_input_shape

    shape = data_shape or spec_input_shape(spec)
    if shape is None:
        raise ConfigError(f"the input shape of '{spec}' is unknown: pass --data or --input-shape C,H,W")
    return tuple(shape)


def prepare_out_dir(path: str | os.PathLike, force: bool) -> Path:
    """Create the output folder; refuse a non-empty one unless ``force`` (never deletes anything in it)."""
    out = Path(path)
    if out.exists() and not out.is_dir():
        raise ConfigError(f"--out '{out}' is a file: give a folder")
    if out.is_dir() and any(out.iterdir()) and not force:
        raise ConfigError(f"output folder '{out}' is not empty: choose a new folder, or pass --force to write into it")
    out.mkdir(parents=True, exist_ok=True)
    return out


def write_json(path: str | os.PathLike, payload: Any) -> None:
    write_text_atomic(path, json.dumps(payload, indent=2, default=str) + "\n")


def console():
    from rich.console import Console

    return Console()


def print_table(title: str, columns: Sequence[str], rows: Sequence[Sequence[Any]]) -> None:
    """Print a rich table; numbers right-aligned."""
    from rich.table import Table

    table = Table(title=title)
    for i, name in enumerate(columns):
        table.add_column(name, justify="left" if i == 0 else "right")
    for row in rows:
        table.add_row(*[f"{v:,}" if isinstance(v, int) else (f"{v:.4g}" if isinstance(v, float) else str(v))
                        for v in row])
    console().print(table)


def print_profile(prof, title: str = "profile") -> None:
    rows = [
        (r.name, r.type, "×".join(map(str, r.output_shape)) if r.output_shape else "", r.params, r.macs,
         r.other_ops, r.bytes)
        for r in prof.rows
    ]
    t = prof.total
    rows.append(("total", "", "", t.params, t.macs, t.other_ops, t.bytes))
    print_table(title, ["layer", "type", "output", "params", "MACs", "other ops", "bytes"], rows)


def save_model_files(model: nn.Module, example: torch.Tensor, out: Path, name: str = "model") -> dict[str, str]:
    """Write ``name.pt`` (state dict) and ``name.onnx`` (checked in ONNX Runtime) into ``out``."""
    from slimkit.export import export_onnx, onnx_max_abs_diff
    from slimkit.train import save_checkpoint

    pt = save_checkpoint(model.state_dict(), out / f"{name}.pt")
    onnx_path = export_onnx(model, example, out / f"{name}.onnx")
    diff = onnx_max_abs_diff(model, onnx_path, example.repeat(4, *([1] * (example.dim() - 1))))
    return {"state_dict": str(pt), "onnx": str(onnx_path), "onnx_max_abs_diff": f"{diff:.2e}"}


class CommandError(SlimkitError):
    """A command-line usage problem (bad flag combination)."""
