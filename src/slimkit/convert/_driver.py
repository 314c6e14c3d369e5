"""The conversion driver shared by every rewrite: copy the model, choose layers, rewrite them in execution order,
and (with calibration data) refit each new layer to reproduce the old layer's output features.

A converter is registered by name in :data:`CONVERTERS` and implements three small methods (see :class:`Converter`),
so ``slimkit convert --to <name>`` and recipes reach every rewrite by string.
"""

from __future__ import annotations

import copy
import logging
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import torch
from torch import nn

from slimkit._errors import ConfigError
from slimkit._inputs import input_tuple
from slimkit._registry import Registry
from slimkit._select import as_patterns, is_literal, select_names

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class RewriteConfig:
    """Options every rewrite shares.

    ``layers``/``skip``: module names, globs or ``re:`` regexes (default: every eligible conv). ``reconstruct``:
    with calibration data, refit the new layers by least squares to the old layer's outputs. ``calibration_samples``
    caps how many calibration inputs are used; ``ridge`` is the relative Tikhonov weight of that fit.
    """

    layers: str | tuple[str, ...] | None = None
    skip: str | tuple[str, ...] = ()
    reconstruct: bool = True
    calibration_samples: int = 512
    ridge: float = 1e-3


class Converter(Protocol):
    """What a rewrite provides: which convs it can rewrite, the weight-fitted replacement, and the data refit."""

    def why_not(self, conv: nn.Conv2d, config: Any) -> str | None:
        """None if ``conv`` can be rewritten under ``config``, else the reason it cannot."""

    def rewrite(self, conv: nn.Conv2d, config: Any) -> nn.Module:
        """A replacement module initialised from ``conv``'s weights alone (low-rank / least-squares weight fit)."""

    def reconstruct(self, new: nn.Module, conv: nn.Conv2d, batches: Iterable[tuple[torch.Tensor, torch.Tensor]],
                    config: Any) -> None:
        """Refit ``new`` in place from (layer input, old layer output) batches."""


CONVERTERS: Registry[Converter] = Registry("converter")


def execution_order(model: nn.Module, example_inputs: torch.Tensor | Sequence[torch.Tensor]) -> list[str]:
    """Names of the ``nn.Conv2d`` layers of ``model`` in the order a forward pass on ``example_inputs`` runs them."""
    order: list[str] = []
    handles = []
    for name, module in model.named_modules():
        if type(module) is nn.Conv2d:
            handles.append(module.register_forward_hook(
                lambda mod, inp, out, name=name: order.append(name) if name not in order else None))
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            model(*input_tuple(example_inputs))
    except RuntimeError as error:
        shapes = ", ".join("×".join(map(str, t.shape)) for t in input_tuple(example_inputs))
        raise ConfigError(f"the model does not run on example inputs of shape {shapes} ({error}): "
                          "give inputs of the shape the model expects (--data must match the model)") from None
    finally:
        model.train(was_training)
        for handle in handles:
            handle.remove()
    return order


def _set_submodule(model: nn.Module, name: str, module: nn.Module) -> None:
    parent_name, _, child = name.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    setattr(parent, child, module)


def _calibration_pairs(new_model: nn.Module, old_model: nn.Module, name: str, calibration: Iterable,
                       limit: int):
    """Yield (input of layer ``name`` in ``new_model``, output of layer ``name`` in ``old_model``) per batch.

    The input comes from the partly converted model, so each refit also compensates the error of the layers
    converted before it (sequential reconstruction, as in ThiNet / Zhang et al. 2016).
    """
    captured: dict[str, torch.Tensor] = {}
    new_handle = new_model.get_submodule(name).register_forward_hook(
        lambda mod, inp, out: captured.__setitem__("x", inp[0].detach()))
    old_handle = old_model.get_submodule(name).register_forward_hook(
        lambda mod, inp, out: captured.__setitem__("y", out.detach()))
    modes = new_model.training, old_model.training
    new_model.eval()
    old_model.eval()
    seen = 0
    try:
        with torch.no_grad():
            for batch in calibration:
                inputs = batch[0] if isinstance(batch, (tuple, list)) else batch
                inputs = inputs[: limit - seen]
                if len(inputs) == 0:
                    break
                new_model(inputs)
                old_model(inputs)
                yield captured["x"], captured["y"]
                seen += len(inputs)
    finally:
        new_handle.remove()
        old_handle.remove()
        new_model.train(modes[0])
        old_model.train(modes[1])


def layers_to_convert(model: nn.Module, example_inputs: torch.Tensor | Sequence[torch.Tensor], converter_name: str,
                      config: RewriteConfig) -> list[str]:
    """The conv names ``converter_name`` would rewrite under ``config``, in execution order.

    A layer named literally in ``config.layers`` that the converter cannot rewrite is an error; layers matched
    only by a glob or regex are skipped with a log message.
    """
    converter = CONVERTERS.get(converter_name)
    order = execution_order(model, example_inputs)
    chosen = select_names(order, config.layers, config.skip, kind="convertible")
    literal = {p for p in as_patterns(config.layers) if is_literal(p)}
    names = []
    for name in chosen:
        reason = converter.why_not(model.get_submodule(name), config)
        if reason is None:
            names.append(name)
        elif name in literal:
            raise ConfigError(f"layer '{name}' cannot be converted by '{converter_name}': {reason}")
        else:
            log.info("%s: skipping %s (%s)", converter_name, name, reason)
    if not names:
        raise ConfigError(f"'{converter_name}' found no layer to convert among {', '.join(chosen) or '(none)'}: "
                          "check the layers/skip patterns and the converter's requirements")
    return names


def convert(model: nn.Module, example_inputs: torch.Tensor | Sequence[torch.Tensor], converter_name: str,
            config: RewriteConfig, calibration: Iterable | None = None) -> nn.Module:
    """Rewrite the selected convs of a copy of ``model`` with the converter ``converter_name``; returns the copy."""
    if config.calibration_samples < 1:
        raise ConfigError(f"calibration_samples must be ≥ 1, got {config.calibration_samples}")
    if config.ridge < 0:
        raise ConfigError(f"ridge must be ≥ 0, got {config.ridge}")
    converter = CONVERTERS.get(converter_name)
    names = layers_to_convert(model, example_inputs, converter_name, config)
    new_model = copy.deepcopy(model)
    for name in names:
        old = model.get_submodule(name)
        replacement = converter.rewrite(old, config)
        if calibration is not None and config.reconstruct:
            pairs = _calibration_pairs(new_model, model, name, calibration, config.calibration_samples)
            converter.reconstruct(replacement, old, pairs, config)
        replacement.train(old.training)
        _set_submodule(new_model, name, replacement)
        log.info("%s: converted %s", converter_name, name)
    return new_model
