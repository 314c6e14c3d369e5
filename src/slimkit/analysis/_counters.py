"""Per-layer-type operation counters: multiply-accumulates (MACs) and other ops (elementwise, pooling, norms).

MACs are the multiply-accumulates of convolutions, linear layers and matrix products. Everything else a layer does
(bias-free elementwise work: activations, normalisation, pooling, additions) is counted separately as ``other_ops``,
one per output element unless stated, so that the MAC figure stays comparable with the papers' "mult-adds".

A new layer type is one small function: ``@register_counter(MyLayer)`` returning ``(macs, other_ops)`` for one call.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import nn

OpCounter = Callable[[nn.Module, tuple, object], tuple[int, int]]

_COUNTERS: dict[type[nn.Module], OpCounter] = {}

#: Layers that do no arithmetic worth counting (reshapes, identity, dropout at inference).
ZERO_COST: tuple[type[nn.Module], ...] = (
    nn.Identity,
    nn.Flatten,
    nn.Unflatten,
    nn.Dropout,
    nn.Dropout1d,
    nn.Dropout2d,
    nn.Dropout3d,
    nn.AlphaDropout,
    nn.Embedding,
    nn.ChannelShuffle,
    nn.ZeroPad2d,
    nn.ConstantPad2d,
)


def register_counter(*module_types: type[nn.Module]) -> Callable[[OpCounter], OpCounter]:
    """Register ``fn(module, inputs, output) -> (macs, other_ops)`` for the given layer types (and subclasses)."""

    def decorator(fn: OpCounter) -> OpCounter:
        for module_type in module_types:
            _COUNTERS[module_type] = fn
        return fn

    return decorator


def find_counter(module: nn.Module) -> OpCounter | None:
    """The counter for ``module``'s type, walking its class hierarchy (a subclass of Conv2d counts as Conv2d)."""
    for klass in type(module).__mro__:
        if klass in _COUNTERS:
            return _COUNTERS[klass]
    return None


def first_tensor(value: object) -> torch.Tensor | None:
    """The first tensor in a (possibly nested) output, or None."""
    if isinstance(value, torch.Tensor):
        return value
    if isinstance(value, (tuple, list)):
        for item in value:
            found = first_tensor(item)
            if found is not None:
                return found
    if isinstance(value, dict):
        for item in value.values():
            found = first_tensor(item)
            if found is not None:
                return found
    return None


def _numel(value: object) -> int:
    tensor = first_tensor(value)
    return 0 if tensor is None else tensor.numel()


@register_counter(nn.Conv1d, nn.Conv2d, nn.Conv3d)
def _conv(module: nn.Conv2d, inputs: tuple, output: object) -> tuple[int, int]:
    # Each output element is a dot product over (C_in / groups) × kernel taps; stride, padding and dilation
    # only change how many output elements there are, which the output shape already says.
    per_output = (module.in_channels // module.groups) * math.prod(module.kernel_size)
    bias_adds = _numel(output) if module.bias is not None else 0
    return _numel(output) * per_output, bias_adds


@register_counter(nn.ConvTranspose1d, nn.ConvTranspose2d, nn.ConvTranspose3d)
def _conv_transpose(module: nn.ConvTranspose2d, inputs: tuple, output: object) -> tuple[int, int]:
    # Every input element is scattered through (C_out / groups) × kernel taps.
    per_input = (module.out_channels // module.groups) * math.prod(module.kernel_size)
    bias_adds = _numel(output) if module.bias is not None else 0
    return _numel(inputs[0]) * per_input, bias_adds


@register_counter(nn.Linear)
def _linear(module: nn.Linear, inputs: tuple, output: object) -> tuple[int, int]:
    bias_adds = _numel(output) if module.bias is not None else 0
    return _numel(output) * module.in_features, bias_adds


@register_counter(nn.Bilinear)
def _bilinear(module: nn.Bilinear, inputs: tuple, output: object) -> tuple[int, int]:
    return _numel(output) * module.in1_features * (module.in2_features + 1), 0


@register_counter(nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d, nn.SyncBatchNorm)
def _batchnorm(module: nn.Module, inputs: tuple, output: object) -> tuple[int, int]:
    # At inference a BN is one scale and one shift per element (and folds into the preceding conv).
    return 0, 2 * _numel(output)


@register_counter(nn.LayerNorm, nn.GroupNorm, nn.InstanceNorm1d, nn.InstanceNorm2d, nn.InstanceNorm3d)
def _norm(module: nn.Module, inputs: tuple, output: object) -> tuple[int, int]:
    # mean, variance, normalise (3 ops/element) plus scale and shift when affine.
    affine = any(p is not None for p in (getattr(module, "weight", None), getattr(module, "bias", None)))
    return 0, (5 if affine else 3) * _numel(output)


@register_counter(
    nn.ReLU, nn.ReLU6, nn.LeakyReLU, nn.PReLU, nn.ELU, nn.SELU, nn.CELU, nn.GELU, nn.SiLU, nn.Mish,
    nn.Sigmoid, nn.Tanh, nn.Hardswish, nn.Hardsigmoid, nn.Hardtanh, nn.Softplus, nn.Threshold,
)
def _activation(module: nn.Module, inputs: tuple, output: object) -> tuple[int, int]:
    return 0, _numel(output)


@register_counter(nn.Softmax, nn.LogSoftmax)
def _softmax(module: nn.Module, inputs: tuple, output: object) -> tuple[int, int]:
    return 0, 3 * _numel(output)  # exp, sum, divide


@register_counter(nn.MaxPool1d, nn.MaxPool2d, nn.MaxPool3d, nn.AvgPool1d, nn.AvgPool2d, nn.AvgPool3d)
def _pool(module: nn.Module, inputs: tuple, output: object) -> tuple[int, int]:
    kernel = module.kernel_size
    taps = math.prod(kernel) if isinstance(kernel, tuple) else kernel ** (first_tensor(output).dim() - 2)
    return 0, _numel(output) * taps


@register_counter(
    nn.AdaptiveAvgPool1d, nn.AdaptiveAvgPool2d, nn.AdaptiveAvgPool3d,
    nn.AdaptiveMaxPool1d, nn.AdaptiveMaxPool2d, nn.AdaptiveMaxPool3d,
)
def _adaptive_pool(module: nn.Module, inputs: tuple, output: object) -> tuple[int, int]:
    return 0, _numel(inputs[0])  # every input element is read into one output once


@register_counter(nn.Upsample, nn.UpsamplingNearest2d, nn.UpsamplingBilinear2d, nn.PixelShuffle, nn.PixelUnshuffle)
def _resample(module: nn.Module, inputs: tuple, output: object) -> tuple[int, int]:
    return 0, _numel(output)


@register_counter(nn.MultiheadAttention)
def _multihead_attention(module: nn.MultiheadAttention, inputs: tuple, output: object) -> tuple[int, int]:
    query, key, value = (tuple(t.shape) for t in inputs[:3])
    batch, seq_q, seq_k = _mha_sizes(module.batch_first, query, key)
    return (multihead_attention_macs(module.batch_first, query, key, value),
            batch * 3 * module.num_heads * seq_q * seq_k)  # softmax


def _mha_sizes(batch_first: bool, query: tuple[int, ...], key: tuple[int, ...]) -> tuple[int, int, int]:
    """Batch, query length and key length of ``nn.MultiheadAttention``'s inputs (batched or not)."""
    seq_q = query[1] if batch_first and len(query) == 3 else query[0]
    seq_k = key[1] if batch_first and len(key) == 3 else key[0]
    return math.prod(query) // (seq_q * query[-1]), seq_q, seq_k


def multihead_attention_macs(batch_first: bool, query: tuple[int, ...], key: tuple[int, ...],
                             value: tuple[int, ...]) -> int:
    """``nn.MultiheadAttention``'s MACs from its input shapes: the q/k/v and output projections (key and value
    widths may differ from the query's) and Q·Kᵀ, softmax(·)·V over all heads."""
    embed, kdim, vdim = query[-1], key[-1], value[-1]
    batch, seq_q, seq_k = _mha_sizes(batch_first, query, key)
    projections = seq_q * embed * embed + seq_k * embed * kdim + seq_k * embed * vdim + seq_q * embed * embed
    return batch * (projections + 2 * seq_q * seq_k * embed)
