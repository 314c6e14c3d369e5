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

from slimkit._errors import ModelSpecError, SlimkitError
from slimkit._registry import Registry
from slimkit._spec import parse_spec
from slimkit.models._hf import (
    check_backends,
    config_input,
    hf_arch,
    hf_model,
    is_hf_spec,
    is_pretrained_folder,
    load_pretrained,
)
from slimkit.models._memory import within_memory

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


def _check_option(name: str, key: str, value: Any, annotation: Any) -> None:
    """A registered model's options follow one convention: integers are counts (≥ 1), floats are finite and positive
    (dropout rates in [0, 1)), strings come from the ``Literal`` of allowed values, bools are true/false."""
    import math
    import typing

    def bad(why: str) -> ModelSpecError:
        return ModelSpecError(f"model '{name}': option {key}={value!r} {why}")

    if typing.get_origin(annotation) is typing.Literal:
        allowed = typing.get_args(annotation)
        if value not in allowed:
            raise bad(f"is not allowed: use one of {', '.join(map(str, allowed))}")
    elif annotation is bool:
        if not isinstance(value, bool):
            raise bad("must be true or false")
    elif annotation is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise bad("must be a whole number")
        if value < 1:
            raise bad("must be at least 1")
    elif annotation is float:
        if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
            raise bad("must be a finite number")
        if "dropout" in key and not 0 <= value < 1:
            raise bad("is a dropout rate: use a value in [0, 1)")
        if "dropout" not in key and value <= 0:
            raise bad("must be positive")


def create(name: str, **kwargs: Any) -> nn.Module:
    """Build the registered model ``name``; keyword arguments go to its factory (``num_classes``, ``width``, ...).

    Options are checked before anything is built (type, range, allowed values), and the model is first built on the
    meta device so that options asking for more weights than this machine holds are refused without allocating.
    """
    import typing

    if name not in MODELS:
        raise ModelSpecError(f"unknown model '{name}': choose one of {', '.join(MODELS.names())}, "
                             "or give 'path/to/file.py:factory' for your own model")
    factory = MODELS.get(name)
    signature = inspect.signature(factory)
    try:
        signature.bind(**kwargs)
    except TypeError as error:
        raise ModelSpecError(f"model '{name}' does not take those options ({error}): "
                             f"its signature is {name}{signature}") from None
    try:
        hints = typing.get_type_hints(factory)
    except Exception:  # an unresolvable annotation: only the factory's own checks apply
        hints = {}
    for key, value in kwargs.items():
        _check_option(name, key, value, hints.get(key))
    check_backends(kwargs, f"model '{name}'")  # llama_tiny and gpt2_tiny hand their options to transformers

    def build() -> nn.Module:
        try:
            return factory(**kwargs)
        except (ValueError, TypeError, RuntimeError, ArithmeticError, IndexError, KeyError) as error:
            raise ModelSpecError(f"model '{name}' cannot be built with {kwargs or 'its defaults'} "
                                 f"({type(error).__name__}: {error}): check the option values") from None

    return within_memory(build, f"model '{name}' with {kwargs}")


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


def is_code_spec(spec: str) -> bool:
    """True when ``spec`` names Python code to import (``path/to/file.py:factory``), not a registered model."""
    target, _ = parse_spec(str(spec))
    return ".py:" in target or target.endswith(".py")


def from_spec(spec: str, *, allow_code: bool = False, **overrides: Any) -> nn.Module:
    """Build a model from a spec string: a registered name (``lenet5``), with options (``resnet20:in_channels=1``),
    a user's ``path/to/file.py:factory``, a Hugging Face architecture built from a small config
    (``hf:llama:num_hidden_layers=4``), or a local ``save_pretrained`` folder (loaded from safetensors, never
    running code from the folder). Keyword ``overrides`` win over options in the string.

    A ``file.py:factory`` spec imports and runs that file, so it is accepted only with ``allow_code=True``: pass it
    when the spec is one the user typed (a command-line argument, their own recipe or script), never for a spec read
    from a file slimkit wrote or was handed (a container header, a run folder's metadata). ``hf:`` specs and model
    folders never run code, so they need no such permission.
    """
    target, options = parse_spec(spec)
    options.update(overrides)
    if is_hf_spec(target):
        return hf_model(target, **options)
    if is_pretrained_folder(target):
        return load_pretrained(target, **options)
    if is_code_spec(spec):
        if not allow_code:
            raise ModelSpecError(
                f"model spec '{spec}' names Python code to import, and slimkit imports code only from a spec the user "
                "typed: build the model yourself and pass it, or call from_spec(spec, allow_code=True) if you wrote "
                "this spec")
        path_text, _, factory_name = target.rpartition(":") if ".py:" in target else (target, "", "")
        if not factory_name:
            raise ModelSpecError(f"model spec '{spec}' names a file but no factory: write 'file.py:factory'")
        factory = _load_file_factory(path_text, factory_name)
        try:
            model = factory(**options)
        except SlimkitError:
            raise
        except Exception as error:  # the user's code: its own error, named, not a traceback through slimkit
            reason = " ".join(str(error).split()) or "(no message)"
            raise ModelSpecError(f"model factory '{target}' raised {type(error).__name__}: {reason}") from error
        if not isinstance(model, nn.Module):
            raise ModelSpecError(f"'{spec}' returned {type(model).__name__}, not a torch.nn.Module")
        return model
    return create(target, **options)


def class_count_option(spec: str, num_classes: int) -> dict[str, int]:
    """``{"num_classes": n}`` when ``spec`` is a registered model whose factory takes it and the spec does not set
    it: so a model fits the dataset it is trained or evaluated on."""
    target, options = parse_spec(spec)
    accepts = target in MODELS and "num_classes" in inspect.signature(MODELS.get(target)).parameters
    if accepts and "num_classes" not in options:
        return {"num_classes": num_classes}
    return {}


def _runs_on(model: nn.Module, example: Any) -> Any:
    import torch

    with torch.no_grad():
        return model(*example) if isinstance(example, tuple) else model(example)


def names_for_input(shape: tuple[int, ...]) -> list[str]:
    """Registered models that run on one input of ``shape`` (C, H, W) with their default options, or with
    ``in_channels`` set (then named ``model:in_channels=C``); checked on the meta device, so nothing is allocated."""
    import torch

    fitting = []
    for name in MODELS.names():
        channels = inspect.signature(MODELS.get(name)).parameters.get("in_channels")
        options = {"in_channels": shape[0]} if channels is not None else {}
        try:
            with torch.device("meta"):
                _runs_on(MODELS.get(name)(**options), torch.zeros(1, *shape))
        except Exception:  # any failure means "does not fit": this only lists candidates for an error message
            continue
        # a model that fits only with another channel count is named with the option that builds it so
        fitting.append(name if channels is None or channels.default == shape[0] else f"{name}:in_channels={shape[0]}")
    return fitting


def check_fits(model: nn.Module, example: Any, *, label: str, data: str, num_classes: int | None = None,
               task: str = "classification") -> None:
    """Run ``model`` once on ``example`` and check its output fits the data (one score per class; per-pixel scores
    for segmentation); a :class:`ModelSpecError` naming the models that do fit, before any training."""
    import torch

    shape = tuple(example.shape[1:]) if isinstance(example, torch.Tensor) else None
    where = "×".join(map(str, shape)) if shape else "its"
    try:
        output = _runs_on(model.eval(), example)
    except (RuntimeError, ValueError, IndexError, TypeError) as error:
        if "can't allocate memory" in str(error):  # the inputs fit, the activations they make do not
            raise ModelSpecError(f"model '{label}' needs more memory than this machine has to run on the {where} "
                                 f"inputs of '{data}' ({str(error).splitlines()[0]}): give smaller inputs") from None
        fits = ", ".join(names_for_input(shape)) if shape else ""
        hint = f"models that take {where} inputs: {fits}" if fits else "choose a model built for these inputs"
        raise ModelSpecError(f"model '{label}' cannot run on the {where} inputs of '{data}' "
                             f"({str(error).splitlines()[0]}): {hint}") from None
    logits = output.logits if hasattr(output, "logits") else output
    if not isinstance(logits, torch.Tensor) or num_classes is None:
        return
    if task == "segmentation":
        ok = logits.dim() == 4 and logits.shape[1] == num_classes and tuple(logits.shape[2:]) == tuple(shape[1:])
        need = f"per-pixel scores for {num_classes} classes (N×{num_classes}×H×W)"
    elif task == "lm":
        ok = logits.dim() == 3 and logits.shape[-1] == num_classes
        need = f"next-token scores over its {num_classes}-token vocabulary (N×L×{num_classes})"
    else:
        ok = logits.dim() == 2 and logits.shape[1] == num_classes
        need = f"one score per class (N×{num_classes})"
    if not ok:
        got = "×".join(map(str, logits.shape))
        fix = {"segmentation": f"a segmentation model (e.g. mobile_segnet:num_classes={num_classes})",
               "lm": f"a language model with vocab_size={num_classes} (e.g. llama_tiny)"}.get(
            task, f"a classifier with num_classes={num_classes}")
        raise ModelSpecError(f"model '{label}' gives outputs of shape {got} on '{data}', which needs {need}: "
                             f"choose {fix}")


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
