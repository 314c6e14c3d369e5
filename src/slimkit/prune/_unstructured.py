"""Unstructured magnitude pruning with masks: prepare → fine-tune → finalize, as in ``torch.nn.utils.prune``.

Han et al. 2015 ("Learning both Weights and Connections") prune the weights of smallest magnitude and retrain the
rest with the pruned connections held at zero. Here :func:`magnitude_prune` returns a copy of the model whose chosen
weights are zeroed and whose layers carry their masks (a non-persistent ``weight_mask`` buffer, so the state dict
keeps its ordinary keys); :class:`MaskCallback` keeps the zeros exact during :func:`slimkit.train.fit`; and
:func:`finalize` bakes the masks in and drops them.

Unstructured sparsity saves *bytes* (with a sparse encoding such as :func:`relative_index_bytes`), not dense-kernel
time: a dense GEMM multiplies the zeros too, so latency is unchanged unless a sparse kernel is used.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from slimkit._errors import ConfigError
from slimkit._finalize import register_finalizer
from slimkit._masks import WEIGHT_MASK
from slimkit._select import select_names
from slimkit.train import Callback, TrainState

#: the layer types whose ``weight`` is pruned
PRUNABLE: tuple[type[nn.Module], ...] = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.ConvTranspose2d)
MASK = WEIGHT_MASK


@dataclass(frozen=True)
class UnstructuredConfig:
    """What to prune. ``sparsity`` is the fraction of weights set to zero, in [0, 1).

    - ``sparsity``: one value for every selected layer, or ``{pattern: value}`` per layer (names, globs or
      ``re:`` regexes; the first matching pattern wins; layers matched by none are left dense).
    - ``scope``: ``"layer"`` (each layer loses its own fraction) or ``"global"`` (one magnitude threshold across all
      selected layers, Han et al. 2015; needs a single ``sparsity`` value).
    - ``layers`` / ``skip``: which Linear/Conv layers take part (default: all).
    """

    sparsity: float | Mapping[str, float] = 0.5
    scope: str = "layer"
    layers: str | Sequence[str] | None = None
    skip: str | Sequence[str] | None = ()

    def __post_init__(self) -> None:
        if self.scope not in ("layer", "global"):
            raise ConfigError(f"unstructured pruning scope '{self.scope}' is not known: use 'layer' or 'global'")
        values = self.sparsity.items() if isinstance(self.sparsity, Mapping) else [("all layers", self.sparsity)]
        for where, value in values:
            if not isinstance(value, (int, float)) or not 0.0 <= float(value) < 1.0:
                raise ConfigError(f"sparsity {value!r} for '{where}' is out of range: use a value in [0, 1)")
        if self.scope == "global" and isinstance(self.sparsity, Mapping):
            raise ConfigError("scope='global' takes one sparsity value, not a per-layer mapping: "
                              "use scope='layer' for per-layer values")


def prunable_layers(model: nn.Module) -> list[str]:
    """Names of the layers whose weights unstructured pruning can mask."""
    return [name for name, module in model.named_modules() if isinstance(module, PRUNABLE) and name]


def layer_sparsities(model: nn.Module, config: UnstructuredConfig) -> dict[str, float]:
    """``{layer: sparsity}`` for every selected layer (raises ConfigError for an unknown literal name)."""
    from slimkit._select import matches

    candidates = prunable_layers(model)
    chosen = select_names(candidates, config.layers, config.skip)
    if not isinstance(config.sparsity, Mapping):
        return {name: float(config.sparsity) for name in chosen}
    select_names(candidates, list(config.sparsity))  # validates literal names before any work
    out: dict[str, float] = {}
    for name in chosen:
        for pattern, value in config.sparsity.items():
            if matches(name, pattern):
                out[name] = float(value)
                break
    return out


def _keep_top(scores: torch.Tensor, n_prune: int) -> torch.Tensor:
    """A boolean mask keeping all but the ``n_prune`` smallest scores (ties broken by position, so exact count)."""
    flat = scores.flatten()
    mask = torch.ones_like(flat, dtype=torch.bool)
    if n_prune > 0:
        mask[torch.argsort(flat, stable=True)[:n_prune]] = False
    return mask.view_as(scores)


def magnitude_masks(model: nn.Module, config: UnstructuredConfig) -> dict[str, torch.Tensor]:
    """Boolean keep-masks ``{layer: mask}`` removing the smallest-|w| weights (Han et al. 2015)."""
    sparsities = layer_sparsities(model, config)
    modules = dict(model.named_modules())
    weights = {name: modules[name].weight.detach() for name in sparsities}
    if config.scope == "global" and weights:
        everything = torch.cat([w.abs().flatten() for w in weights.values()])
        n_prune = math.floor(float(config.sparsity) * everything.numel())
        flat_mask = _keep_top(everything, n_prune)
        masks, offset = {}, 0
        for name, w in weights.items():
            masks[name] = flat_mask[offset:offset + w.numel()].view_as(w).clone()
            offset += w.numel()
        return masks
    return {name: _keep_top(w.abs(), math.floor(sparsities[name] * w.numel())) for name, w in weights.items()}


def attach_masks_(model: nn.Module, masks: Mapping[str, torch.Tensor]) -> nn.Module:
    """Store ``masks`` on their layers (non-persistent ``weight_mask`` buffers) and zero the masked weights."""
    modules = dict(model.named_modules())
    for name, mask in masks.items():
        if name not in modules or not hasattr(modules[name], "weight"):
            raise ConfigError(f"mask for '{name}' names no layer with a weight in this model: check the layer names")
        module = modules[name]
        if tuple(mask.shape) != tuple(module.weight.shape):
            raise ConfigError(f"mask for '{name}' has shape {tuple(mask.shape)} but the weight has "
                              f"{tuple(module.weight.shape)}: the masks belong to another model")
        module.register_buffer(MASK, mask.to(dtype=torch.bool, device=module.weight.device), persistent=False)
    return apply_masks_(model)


def attached_masks(model: nn.Module) -> dict[str, torch.Tensor]:
    """The masks currently stored on ``model``'s layers."""
    return {name: getattr(m, MASK) for name, m in model.named_modules() if getattr(m, MASK, None) is not None}


def holding_masks(model: nn.Module, callbacks: Sequence[Callback] = ()) -> list[Callback]:
    """``callbacks`` plus a :class:`MaskCallback` when ``model`` carries unstructured-pruning masks (and none holds
    them yet): what every training of a possibly pruned model passes to ``fit``, so its pruned weights stay zero."""
    out = list(callbacks)
    if attached_masks(model) and not any(isinstance(c, MaskCallback) for c in out):
        out.append(MaskCallback())
    return out


@torch.no_grad()
def apply_masks_(model: nn.Module, masks: Mapping[str, torch.Tensor] | None = None) -> nn.Module:
    """Zero the masked weights in place (``masks`` default to the ones attached by :func:`magnitude_prune`)."""
    masks = attached_masks(model) if masks is None else masks
    modules = dict(model.named_modules())
    for name, mask in masks.items():
        weight = modules[name].weight
        weight.mul_(mask.to(device=weight.device, dtype=weight.dtype))
    return model


def magnitude_prune(model: nn.Module, example_inputs: Any, config: UnstructuredConfig, *,
                    data: Iterable | None = None) -> nn.Module:
    """A copy of ``model`` with the smallest-magnitude weights zeroed and their masks attached to its layers
    (Han et al. 2015); :func:`attached_masks` reads them back.

    ``example_inputs`` and ``data`` are accepted for the common technique shape and not used: magnitudes need no
    forward pass (pass ``None``). Fine-tune the copy with ``fit(..., callbacks=[MaskCallback()])`` so the zeros
    stay exact, then :func:`finalize`.
    """
    masks = magnitude_masks(model, config)
    pruned = copy.deepcopy(model)
    attach_masks_(pruned, masks)
    return pruned


@register_finalizer("masks", applies=lambda model: bool(attached_masks(model)), order=0)
def finalize(model: nn.Module) -> nn.Module:
    """A copy of ``model`` with the attached masks baked into the weights and the mask buffers removed (what
    :func:`slimkit.finalize` does to a masked model)."""
    out = copy.deepcopy(model)
    apply_masks_(out)
    for module in out.modules():
        if MASK in module._buffers:
            del module._buffers[MASK]
    return out


class MaskCallback(Callback):
    """Keeps pruned weights exactly zero during :func:`slimkit.train.fit`.

    Masked gradients are zeroed before the step (so momentum never builds up on them) and the masks are re-applied
    after it (weight decay and Nesterov momentum could otherwise move a zero). ``masks`` default to those attached
    to the model.
    """

    def __init__(self, masks: Mapping[str, torch.Tensor] | None = None) -> None:
        self.masks = dict(masks) if masks is not None else None

    def current(self, model: nn.Module) -> dict[str, torch.Tensor]:
        return attached_masks(model) if self.masks is None else self.masks

    def on_fit_start(self, state: TrainState) -> None:
        apply_masks_(state.model, self.current(state.model))

    def on_after_backward(self, state: TrainState) -> None:
        modules = dict(state.model.named_modules())
        for name, mask in self.current(state.model).items():
            grad = modules[name].weight.grad
            if grad is not None:
                grad.mul_(mask.to(grad.dtype))

    def on_batch_end(self, state: TrainState) -> None:
        apply_masks_(state.model, self.current(state.model))


def sparsity_of(model: nn.Module, layers: str | Sequence[str] | None = None) -> dict[str, float]:
    """Fraction of exactly-zero weights per prunable layer."""
    modules = dict(model.named_modules())
    return {name: float((modules[name].weight == 0).float().mean())
            for name in select_names(prunable_layers(model), layers)}


def relative_index_bytes(mask: torch.Tensor, value_bits: int, index_bits: int) -> int:
    """Bytes of a sparse weight in Deep Compression's relative-index format (Han et al. 2016, Sec. 2).

    Each kept weight stores its value (``value_bits``) and the gap to the previous kept weight (``index_bits``); a
    gap larger than ``2**index_bits`` costs one filler entry (a stored zero) per ``2**index_bits`` positions.
    """
    positions = torch.nonzero(mask.flatten()).flatten()
    if positions.numel() == 0:
        return 0
    gaps = torch.diff(positions, prepend=torch.tensor([-1]))
    span = 2 ** index_bits
    entries = int(positions.numel() + ((gaps - 1) // span).sum())
    return math.ceil(entries * (value_bits + index_bits) / 8)


@dataclass(frozen=True)
class SparseStorageRow:
    """Storage of one layer's weight: dense, CSR (32-bit indices) and relative-index encodings, in bytes."""

    name: str
    weights: int
    nonzero: int
    dense_bytes: int
    csr_bytes: int
    relative_bytes: int


def sparse_storage(model: nn.Module, value_bits: int = 32, conv_index_bits: int = 8,
                   fc_index_bits: int = 5) -> list[SparseStorageRow]:
    """Per-layer weight storage under the three encodings; index widths default to Han et al. 2016 (8 conv, 5 fc).

    The saving is in bytes only: inference with a dense kernel costs the same time whatever the sparsity.
    """
    from slimkit.analysis import csr_bytes

    rows = []
    for name, module in model.named_modules():
        if not isinstance(module, PRUNABLE) or not name:
            continue
        w = module.weight.detach()
        bits = fc_index_bits if isinstance(module, nn.Linear) else conv_index_bits
        rows.append(SparseStorageRow(name, w.numel(), int((w != 0).sum()), w.numel() * value_bits // 8,
                                     csr_bytes(w, value_bits), relative_index_bytes(w != 0, value_bits, bits)))
    return rows
