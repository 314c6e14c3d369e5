"""Models by name: ``create("lenet5", num_classes=10)``, ``names("resnet*")``, user models by file, Hugging Face
models by ``hf:<arch>`` or a ``save_pretrained`` folder; what input each takes (:class:`InputSpec`)."""

from __future__ import annotations

import importlib.util
import inspect
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from slimkit._errors import ModelSpecError
from slimkit._registry import Registry
from slimkit._spec import parse_spec
from slimkit.models._hf import config_input, hf_arch, hf_model, is_hf_spec, is_pretrained_folder, load_pretrained

MODELS: Registry[Callable[..., nn.Module]] = Registry("model")


@dataclass(frozen=True)
class InputSpec:
    """What a model takes: per-sample ``shape`` ((C, H, W) for images, (sequence length,) for token ids), the
    ``dtype`` ("float32" pixels or "int64" token ids) and, for tokens, the ``vocab_size``."""

    shape: tuple[int, ...]
    dtype: str = "float32"
    vocab_size: int | None = None

    @property
    def is_tokens(self) -> bool:
        return self.dtype == "int64"

    def example(self, batch: int = 1) -> torch.Tensor:
        """A deterministic example batch: zeros for images; token ids spread over the vocabulary for tokens
        (``(7919·i + 1) mod vocab``, so every position sees a different, valid id)."""
        if not self.is_tokens:
            return torch.zeros(batch, *self.shape)
        count = batch * int(torch.tensor(self.shape).prod())
        ids = (torch.arange(count, dtype=torch.long) * 7919 + 1) % (self.vocab_size or 2)
        return ids.reshape(batch, *self.shape)


def register_model(name: str, *, input_shape: tuple[int, ...], input_dtype: str = "float32",
                   vocab_size: int | None = None, **meta: Any) -> Callable:
    """Register a model factory under ``name`` with its default input shape ((C, H, W), or (sequence length,) with
    ``input_dtype="int64"`` and ``vocab_size`` for a language model) and paper metadata."""
    if input_dtype not in {"float32", "int64"}:
        raise ModelSpecError(f"input_dtype '{input_dtype}' for model '{name}': use 'float32' or 'int64' (token ids)")
    if input_dtype == "int64" and not vocab_size:
        raise ModelSpecError(f"model '{name}' takes token ids: register it with vocab_size=...")
    return MODELS.register(name, input_shape=input_shape, input_dtype=input_dtype, vocab_size=vocab_size, **meta)


def names(pattern: str = "*") -> list[str]:
    """Registered model names matching a glob, e.g. ``names("mobilenet*")``."""
    return MODELS.names(pattern)


def default_input_shape(name: str) -> tuple[int, ...]:
    """The per-sample input shape a registered model expects by default: (C, H, W), or (sequence length,) for a
    language model (see :func:`input_spec` for its dtype and vocabulary)."""
    return tuple(MODELS.meta(name)["input_shape"])


def create(name: str, **kwargs: Any) -> nn.Module:
    """Build the registered model ``name``; keyword arguments go to its factory (``num_classes``, ``width``, ...)."""
    if name not in MODELS:
        raise ModelSpecError(f"unknown model '{name}': choose one of {', '.join(MODELS.names())}, "
                             "or give 'path/to/file.py:factory' for your own model")
    factory = MODELS.get(name)
    try:
        inspect.signature(factory).bind(**kwargs)
    except TypeError as error:
        raise ModelSpecError(f"model '{name}' does not take those options ({error}): "
                             f"its signature is {name}{inspect.signature(factory)}") from None
    return factory(**kwargs)


def _load_file_factory(path_text: str, factory_name: str) -> Callable[..., nn.Module]:
    path = Path(path_text)
    if not path.is_file():
        raise ModelSpecError(f"model file '{path}' does not exist: give 'path/to/file.py:factory'")
    module_name = f"slimkit_user_model_{abs(hash(path.resolve()))}"
    spec = importlib.util.spec_from_file_location(module_name, path)
    if spec is None or spec.loader is None:
        raise ModelSpecError(f"cannot import '{path}' as Python: give a .py file")
    module = importlib.util.module_from_spec(spec)
    sys.modules[module_name] = module
    try:
        spec.loader.exec_module(module)
    except Exception as error:
        raise ModelSpecError(f"importing '{path}' failed: {type(error).__name__}: {error}") from error
    factory = getattr(module, factory_name, None)
    if not callable(factory):
        raise ModelSpecError(f"'{path}' has no callable '{factory_name}': give 'path/to/file.py:factory'")
    return factory


def from_spec(spec: str, **overrides: Any) -> nn.Module:
    """Build a model from a spec string: a registered name (``lenet5``), with options (``resnet20:in_channels=1``),
    a user's ``path/to/file.py:factory``, a Hugging Face architecture built from a small config
    (``hf:llama:num_hidden_layers=4``), or a local ``save_pretrained`` folder (loaded from safetensors, never
    running code from the folder). Keyword ``overrides`` win over options in the string."""
    target, options = parse_spec(spec)
    options.update(overrides)
    if is_hf_spec(target):
        return hf_model(target, **options)
    if is_pretrained_folder(target):
        return load_pretrained(target, **options)
    if ".py:" in target or target.endswith(".py"):
        path_text, _, factory_name = target.rpartition(":") if ".py:" in target else (target, "", "")
        if not factory_name:
            raise ModelSpecError(f"model spec '{spec}' names a file but no factory: write 'file.py:factory'")
        model = _load_file_factory(path_text, factory_name)(**options)
        if not isinstance(model, nn.Module):
            raise ModelSpecError(f"'{spec}' returned {type(model).__name__}, not a torch.nn.Module")
        return model
    return create(target, **options)


def spec_input_shape(spec: str, default: tuple[int, ...] | None = None) -> tuple[int, ...] | None:
    """The default per-sample input shape of a model spec (None for a user file unless ``default`` is given)."""
    found = input_spec(spec)
    return found.shape if found is not None else default


def input_spec(spec: str) -> InputSpec | None:
    """What the model named by ``spec`` takes by default: a registered name's registration, an ``hf:`` spec's or a
    save_pretrained folder's config (token ids or pixels), or None for a user's file."""
    target, options = parse_spec(spec)
    if target in MODELS:
        meta = MODELS.meta(target)
        shape = list(meta["input_shape"])
        if "in_channels" in options:
            shape[0] = int(options["in_channels"])
        vocab = options.get("vocab_size", meta.get("vocab_size"))
        return InputSpec(tuple(shape), meta.get("input_dtype", "float32"), vocab)
    if is_hf_spec(target):
        arch = hf_arch(target)
        values = {**arch.defaults, **options}
        kind, shape, vocab = config_input(values)
        if kind == "tokens":
            return InputSpec((arch.seq_len,), "int64", int(values.get("vocab_size", vocab or 2)))
        return InputSpec(shape)
    if is_pretrained_folder(target):
        import json

        kind, shape, vocab = config_input(json.loads((Path(target) / "config.json").read_text(encoding="utf-8")))
        return InputSpec(shape, "int64", vocab) if kind == "tokens" else InputSpec(shape)
    return None


def example_input(spec: str, batch: int = 1) -> torch.Tensor:
    """A deterministic example batch for the model named by ``spec`` (pixels or token ids, see :class:`InputSpec`),
    for tracing, profiling, ONNX export and latency."""
    found = input_spec(spec)
    if found is None:
        raise ModelSpecError(f"the input of '{spec}' is unknown: give example inputs yourself (e.g. from the data)")
    return found.example(batch)
