"""Checkpoints that load without running code: ``torch.load(weights_only=True)`` or safetensors, atomic writes."""

from __future__ import annotations

import os
import pickle
import re
import warnings
from pathlib import Path
from typing import Any

import torch
from torch import nn

from slimkit._errors import CheckpointError, UnsafeCheckpointError
from slimkit._io import atomic_write


def save_checkpoint(state: dict[str, Any], path: str | os.PathLike) -> Path:
    """Write ``state`` (tensors, numbers, strings, lists, dicts) atomically; ``.safetensors`` for a flat dict of
    tensors, otherwise ``torch.save``."""
    target = Path(path)
    if target.suffix == ".safetensors":
        from safetensors.torch import save

        payload = save({k: v.contiguous() for k, v in state.items()})
        with atomic_write(target) as handle:
            handle.write(payload)
    else:
        with atomic_write(target) as handle:
            torch.save(state, handle)
    return target


#: the first PyTorch whose ``torch.load(weights_only=True)`` a crafted file cannot turn into code execution
#: (CVE-2025-32434 / GHSA-53q9-r3pm-6pq6), slimkit's declared floor; an older one (installed around pip's check)
#: loads only safetensors
SAFE_WEIGHTS_ONLY_TORCH = (2, 6)


def weights_only_is_safe(version: str | None = None) -> bool:
    """Whether ``torch.load(weights_only=True)`` is safe on untrusted files in this PyTorch (or ``version``)."""
    parts = re.match(r"(\d+)\.(\d+)", version or torch.__version__)
    return parts is not None and (int(parts.group(1)), int(parts.group(2))) >= SAFE_WEIGHTS_ONLY_TORCH


def load_checkpoint(path: str | os.PathLike) -> dict[str, Any]:
    """Load a checkpoint safely: weights only, never pickled code. A file that needs code is refused."""
    source = Path(path)
    if source.is_dir():
        raise CheckpointError(f"checkpoint '{source}' is a folder: give the weights file in it (e.g. model.pt)")
    if not source.is_file():
        raise CheckpointError(f"checkpoint '{source}' does not exist: check the path")
    if source.suffix == ".safetensors":
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        try:
            return dict(load_file(str(source)))
        except (SafetensorError, OSError, ValueError, RuntimeError) as error:
            raise CheckpointError(f"checkpoint '{source}' is not a readable safetensors file ({error}): save it with "
                                  "safetensors.torch.save_file, or give the .pt state dict") from None
    if not weights_only_is_safe():
        raise UnsafeCheckpointError(
            f"this PyTorch ({torch.__version__}) cannot load '{source}' safely: before 2.6 a crafted .pt file can run "
            "code even with weights_only=True (CVE-2025-32434). Upgrade torch (pip install 'torch>=2.6'), or give a "
            ".safetensors file")
    try:
        with warnings.catch_warnings():  # torch's notes on a foreign pickle protocol: the error below says it all
            warnings.simplefilter("ignore")
            state = torch.load(source, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as error:
        if "Unsupported global" not in str(error) and "GLOBAL" not in str(error):
            if "Weights only load failed" in str(error) and _is_pickle(source):  # ops the safe loader never runs
                raise UnsafeCheckpointError(
                    f"checkpoint '{source}' is a pickle that is not a weights-only PyTorch file, and slimkit loads "
                    "no other kind (it could run code): give the state dict torch.save(model.state_dict(), path) "
                    "wrote, or a .safetensors file") from None
            raise CheckpointError(f"checkpoint '{source}' cannot be read (it is damaged or not a PyTorch file): "
                                  "give the .pt state dict torch.save wrote, or a .safetensors file") from None
        raise UnsafeCheckpointError(
            f"checkpoint '{source}' contains pickled Python objects, not only weights, and slimkit will not run "
            "its code. Save a state dict instead (torch.save(model.state_dict(), path)); if you trust the file, "
            "load it yourself and pass the model."
        ) from None
    except (RuntimeError, EOFError, OSError, ValueError, AttributeError, ImportError, IndexError, KeyError,
            TypeError, UnicodeDecodeError, MemoryError) as error:
        # torch.load raises many kinds on a damaged or foreign file; none of them is the user's program failing
        first = str(error).splitlines()[0] if str(error) else ""
        raise CheckpointError(f"checkpoint '{source}' cannot be read ({type(error).__name__}: {first}): is it a "
                              "PyTorch state dict?") from None
    if not isinstance(state, dict):
        raise CheckpointError(f"checkpoint '{source}' holds a {type(state).__name__}, not a state dict")
    return state


def _is_pickle(path: Path) -> bool:
    """Whether the file starts as a pickle of protocol 2 or later does (PROTO opcode 0x80, then the protocol)."""
    with open(path, "rb") as handle:
        head = handle.read(2)
    return len(head) == 2 and head[0] == 0x80 and 2 <= head[1] <= 5


def model_state(state: dict[str, Any]) -> dict[str, torch.Tensor]:
    """The model weights in a checkpoint: its ``model`` entry for a training checkpoint, else the dict itself."""
    inner = state.get("model", state)
    if not isinstance(inner, dict) or not all(isinstance(v, torch.Tensor) for v in inner.values()):
        raise CheckpointError("checkpoint has no model state dict: expected tensors, or a 'model' entry of tensors")
    return inner


def load_weights_(model: nn.Module, path: str | os.PathLike, *, strict: bool = True) -> nn.Module:
    """Load the weights in ``path`` into ``model`` in place; a clear error names missing or mismatched keys."""
    weights = model_state(load_checkpoint(path))
    try:
        model.load_state_dict(weights, strict=strict)
    except RuntimeError as error:
        first = str(error).splitlines()[0:3]
        raise CheckpointError(
            f"checkpoint '{path}' does not fit {type(model).__name__}: {' '.join(first)}. "
            "Was it saved from a different model spec (or a compressed model)?"
        ) from None
    return model
