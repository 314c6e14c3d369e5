"""Weight-only k-bit quantization for storage: per-channel symmetric codes of 2-8 bits, activations stay float.

Each quantized layer reports its packed size (``ceil(n · k / 8)`` bytes of codes + fp32 scales + fp32 bias) through
``slimkit_storage_bytes``, so :func:`slimkit.analysis.profile` shows the real bytes.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import torch
from torch import nn

from slimkit._errors import ConfigError
from slimkit.quantize._ptq import QuantConfig, freeze_, prepare


def quantize_weights(model: nn.Module, example_inputs: Any, config: QuantConfig, *,
                     data: Iterable | None = None) -> nn.Module:
    """A copy of ``model`` whose Conv2d/Linear weights are fake-quantized to ``config.weight_bits`` by round to
    nearest (BN folded first), activations float; ``config`` also sets the weight observer (e.g. ``mse``),
    ``per_channel``, ``skip`` and ``layers``, and must say ``activation_bits=None``. Round to nearest needs neither
    ``example_inputs`` nor ``data`` (accepted for the common technique shape). For packed integer layers,
    group-wise scales or GPTQ/AWQ use :func:`quantize` with ``activation_bits=None``."""
    if config.activation_bits is not None:
        raise ConfigError(f"quantize_weights quantizes weights only but the config has activation_bits="
                          f"{config.activation_bits}: use QuantConfig(weight_bits={config.weight_bits}, "
                          "activation_bits=None)")
    if config.group_size is not None or config.method not in ("rtn", "ptq"):
        raise ConfigError("quantize_weights rounds per channel to nearest: for group_size or method "
                          f"'{config.method}' use slimkit.quantize.quantize(model, example_inputs, config, data=...)")
    qmodel, _ = prepare(model, QuantConfig(
        weight_bits=config.weight_bits, activation_bits=None, weight_observer=config.weight_observer,
        per_channel=config.per_channel, skip=config.skip, layers=config.layers,
    ))
    return freeze_(qmodel)


def weight_codes(wrapper: nn.Module) -> tuple[torch.Tensor, torch.Tensor]:
    """The integer codes (int8 tensor) and per-channel scales of a frozen quantized layer's weight."""
    quant = wrapper.weight_quant
    scale = quant.scale.detach().reshape(-1, *([1] * (wrapper.layer.weight.dim() - 1)))
    codes = torch.clamp(torch.round(wrapper.layer.weight.detach() / scale), quant.spec.qmin, quant.spec.qmax)
    return codes.to(torch.int8), quant.scale.detach().clone()
