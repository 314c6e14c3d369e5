"""Weight-only k-bit quantization for storage: per-channel symmetric codes of 2-8 bits, activations stay float.

Each quantized layer reports its packed size (``ceil(n · k / 8)`` bytes of codes + fp32 scales + fp32 bias) through
``slimkit_storage_bytes``, so :func:`slimkit.analysis.profile` shows the real bytes.
"""

from __future__ import annotations

import torch
from torch import nn

from slimkit.quantize._ptq import QuantConfig, freeze_, prepare


def quantize_weights(model: nn.Module, bits: int = 4, config: QuantConfig | None = None) -> nn.Module:
    """A copy of ``model`` whose Conv2d/Linear weights are quantized to ``bits`` per output channel (BN folded
    first); ``config`` can set the weight observer (e.g. ``mse``), ``skip`` and ``layers``."""
    base = config or QuantConfig()
    config = QuantConfig(
        weight_bits=bits, activation_bits=None, weight_observer=base.weight_observer, per_channel=True,
        skip=base.skip, layers=base.layers,
    )
    qmodel, _ = prepare(model, config)
    return freeze_(qmodel)


def weight_codes(wrapper: nn.Module) -> tuple[torch.Tensor, torch.Tensor]:
    """The integer codes (int8 tensor) and per-channel scales of a frozen quantized layer's weight."""
    quant = wrapper.weight_quant
    scale = quant.scale.detach().reshape(-1, *([1] * (wrapper.layer.weight.dim() - 1)))
    codes = torch.clamp(torch.round(wrapper.layer.weight.detach() / scale), quant.spec.qmin, quant.spec.qmax)
    return codes.to(torch.int8), quant.scale.detach().clone()
