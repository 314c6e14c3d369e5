"""The conversion driver shared by every rewrite: copy the model, choose layers, rewrite them in execution order,
and (with calibration data) refit each new layer to reproduce the old layer's output features.

A converter is registered by name in :data:`CONVERTERS` together with its config class and implements three small
methods (see :class:`Converter`). :func:`convert` dispatches on the config's type (as torchao does), so adding a
rewrite is adding a config class and a converter; ``slimkit convert --to <name>`` and recipes reach it by string.
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

    def __post_init__(self) -> None:
        if isinstance(self.calibration_samples, bool) or not isinstance(self.calibration_samples, int) or \
                self.calibration_samples < 1:
            raise ConfigError(f"calibration_samples must be a whole number ≥ 1, got {self.calibration_samples!r}")
        ridge = self.ridge
        if isinstance(ridge, bool) or not isinstance(ridge, int | float) or not 0 <= ridge < float("inf"):
            raise ConfigError(f"ridge must be a finite number ≥ 0, got {self.ridge!r}")


class Converter(Protocol):
    """What a rewrite provides: which convs it can rewrite, the weight-fitted replacement, and the data refit.

    A converter may also define ``advice(convs, config) -> str | None``: when it can rewrite none of ``convs`` (name →
    conv), why, and the option values that would work (e.g. group counts that divide their channels); without it, or
    when it returns None, the error lists each layer's :meth:`why_not`.
    """

    def why_not(self, conv: nn.Conv2d, config: Any) -> str | None:
        """None if ``conv`` can be rewritten under ``config``, else the reason it cannot."""

    def rewrite(self, conv: nn.Conv2d, config: Any) -> nn.Module:
        """A replacement module initialised from ``conv``'s weights alone (low-rank / least-squares weight fit)."""

    def reconstruct(self, new: nn.Module, conv: nn.Conv2d, batches: Iterable[tuple[torch.Tensor, torch.Tensor]],
                    config: Any) -> None:
        """Refit ``new`` in place from (layer input, old layer output) batches."""


CONVERTERS: Registry[Converter] = Registry("converter")


def register_converter(name: str, config_class: type[RewriteConfig]):
    """Register a converter under ``name`` for configs of type ``config_class`` (the dispatch key of convert)."""
    return CONVERTERS.register(name, config=config_class)


def converter_name(config: RewriteConfig) -> str:
    """The registered converter for ``config``'s type (its most specific registered class)."""
    for cls in type(config).__mro__:
        for name in CONVERTERS.names():
            if CONVERTERS.meta(name).get("config") is cls:
                return name
    choices = ", ".join(CONVERTERS.meta(n)["config"].__name__ for n in CONVERTERS.names())
    raise ConfigError(f"no rewrite takes a {type(config).__name__}: give one of {choices}")


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


def layers_to_convert(model: nn.Module, example_inputs: torch.Tensor | Sequence[torch.Tensor],
                      config: RewriteConfig) -> list[str]:
    """The conv names the rewrite of ``config``'s type would rewrite, in execution order.

    A layer named literally in ``config.layers`` that the converter cannot rewrite is an error; layers matched
    only by a glob or regex are skipped with a log message.
    """
    name_of = converter_name(config)
    converter = CONVERTERS.get(name_of)
    order = execution_order(model, example_inputs)
    chosen = select_names(order, config.layers, config.skip, kind="convertible")
    literal = {p for p in as_patterns(config.layers) if is_literal(p)}
    names, refused = [], {}
    for name in chosen:
        reason = converter.why_not(model.get_submodule(name), config)
        if reason is None:
            names.append(name)
        elif name in literal:
            raise ConfigError(f"layer '{name}' cannot be converted by '{name_of}': {reason}")
        else:
            refused[name] = reason
            log.info("%s: skipping %s (%s)", name_of, name, reason)
    if not names and refused:
        advice = getattr(converter, "advice", None)
        why = advice({name: model.get_submodule(name) for name in refused}, config) if advice else None
        raise ConfigError(f"'{name_of}' found no layer to convert: {why or _reasons(refused)}")
    if not names:
        raise ConfigError(f"'{name_of}' found no layer to convert among {', '.join(chosen) or '(none)'}: "
                          "check the layers/skip patterns and the converter's requirements")
    return names


def _reasons(refused: dict[str, str], shown: int = 4) -> str:
    """Why each layer was refused (the first ``shown`` of them), as one line."""
    items = [f"{name} ({reason})" for name, reason in list(refused.items())[:shown]]
    more = f" and {len(refused) - shown} more" if len(refused) > shown else ""
    return f"{'; '.join(items)}{more}; select other layers"


def convert(model: nn.Module, example_inputs: torch.Tensor | Sequence[torch.Tensor], config: RewriteConfig, *,
            data: Iterable | None = None) -> nn.Module:
    """A copy of ``model`` with the selected convs rewritten by the rewrite of ``config``'s type
    (:class:`~slimkit.convert.DepthwiseSeparableConfig`, :class:`~slimkit.convert.GroupConvConfig`,
    :class:`~slimkit.convert.CReLUConfig`, ...); with ``data`` (calibration batches) each new layer is refit by least
    squares to the old layer's output features. The caller's model is untouched."""
    name_of = converter_name(config)
    converter = CONVERTERS.get(name_of)
    names = layers_to_convert(model, example_inputs, config)
    new_model = copy.deepcopy(model)
    for name in names:
        old = model.get_submodule(name)
        replacement = converter.rewrite(old, config)
        if data is not None and config.reconstruct:
            pairs = _calibration_pairs(new_model, model, name, data, config.calibration_samples)
            converter.reconstruct(replacement, old, pairs, config)
        replacement.train(old.training)
        _set_submodule(new_model, name, replacement)
        log.info("%s: converted %s", name_of, name)
    return new_model
