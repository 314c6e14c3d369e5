"""Models by name: ``create("lenet5", num_classes=10)``, ``names("resnet*")``, and user models by file."""

from __future__ import annotations

import importlib.util
import inspect
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from torch import nn

from slimkit._errors import ModelSpecError
from slimkit._registry import Registry
from slimkit._spec import parse_spec

MODELS: Registry[Callable[..., nn.Module]] = Registry("model")


def register_model(name: str, *, input_shape: tuple[int, ...], **meta: Any) -> Callable:
    """Register a model factory under ``name`` with its default input shape (C, H, W) and paper metadata."""
    return MODELS.register(name, input_shape=input_shape, **meta)


def names(pattern: str = "*") -> list[str]:
    """Registered model names matching a glob, e.g. ``names("mobilenet*")``."""
    return MODELS.names(pattern)


def default_input_shape(name: str) -> tuple[int, ...]:
    """The (C, H, W) input shape a registered model expects by default."""
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
    or a user's ``path/to/file.py:factory``. Keyword ``overrides`` win over options in the string."""
    target, options = parse_spec(spec)
    options.update(overrides)
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
    """The default input shape of a registered model spec (None for a user file unless ``default`` is given)."""
    target, options = parse_spec(spec)
    if target in MODELS:
        shape = list(default_input_shape(target))
        if "in_channels" in options:
            shape[0] = int(options["in_channels"])
        return tuple(shape)
    return default
