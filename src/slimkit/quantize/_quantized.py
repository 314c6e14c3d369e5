"""Weight-only quantized layers: integer codes + group-wise scales and zero points, dequantized in the forward.

:class:`QuantizedLinear` and :class:`QuantizedConv2d` are ordinary modules (they train their bias, move between
devices, save in a state dict, export to ONNX); their weight is ``(codes - zero_point) · scale`` computed from
the stored codes on every call — the fake-quant form of what ONNX Runtime's ``MatMulNBits`` runs
(:func:`slimkit.export.export_matmul_nbits` writes them as that operator). ``profile`` reports their packed size.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from slimkit.quantize._grid import WeightGrid, contiguous_groups, dequantize


class _WeightCodes(nn.Module):
    """Shared storage: ``codes`` (uint8, rows × columns of the weight matrix), ``scales`` (float parameter,
    rows × groups),
    ``zero_points`` (uint8, rows × groups) and, for act-order GPTQ without static groups, ``group_index``
    (each column's group)."""

    def _init_codes(self, rows: int, columns: int, grid: WeightGrid) -> None:
        self.bits = grid.bits
        self.group_size = grid.size(columns)
        self.symmetric = grid.symmetric
        groups = grid.groups(columns)
        self.register_buffer("codes", torch.zeros(rows, columns, dtype=torch.uint8))
        # The scales are a parameter (the one float tensor of a layer without bias): they can be fine-tuned, and
        # profile() attributes the layer's packed bytes to the module owning parameters.
        self.scales = nn.Parameter(torch.ones(rows, groups))
        self.register_buffer("zero_points", torch.zeros(rows, groups, dtype=torch.uint8))
        self.register_buffer("group_index", None)

    @property
    def grid(self) -> WeightGrid:
        return WeightGrid(self.bits, self.symmetric, self.group_size)

    def set_codes_(self, codes: torch.Tensor, scales: torch.Tensor, zeros: torch.Tensor,
                   group_index: torch.Tensor | None = None) -> None:
        """Store ``codes`` (rows × columns) with their per-group ``scales`` and ``zeros`` (rows × groups);
        ``group_index`` only when columns are not in consecutive groups (act-order without static groups)."""
        with torch.no_grad():
            self.codes = codes.round().to(torch.uint8).reshape(self.codes.shape).clone()
            self.scales = nn.Parameter(scales.detach().float().clone())
            self.zero_points = zeros.round().to(torch.uint8).clone()
            if group_index is not None and not torch.equal(
                    group_index.cpu(), contiguous_groups(self.codes.shape[1], self.grid)):
                self.group_index = group_index.to(torch.int64).clone()
            else:
                self.group_index = None

    def columns_group(self) -> torch.Tensor:
        if self.group_index is not None:
            return self.group_index
        return torch.arange(self.codes.shape[1], device=self.codes.device) // self.group_size

    def weight_matrix(self, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        """The dequantized weight as a rows × columns matrix."""
        return dequantize(self.codes.to(dtype), self.scales.to(dtype), self.zero_points.to(dtype),
                          self.columns_group())

    def slimkit_storage_bytes(self, dtype_bits: int) -> int:
        """Packed codes at ``bits`` per weight + fp32 scales + packed zero points (asymmetric only) + bias."""
        rows, cols = self.codes.shape
        groups = self.scales.shape[1]
        total = math.ceil(rows * cols * self.bits / 8) + 4 * rows * groups
        if not self.symmetric:
            total += math.ceil(rows * groups * self.bits / 8)
        if self.group_index is not None:
            total += 4 * cols
        bias = getattr(self, "bias", None)
        if bias is not None:
            total += math.ceil(bias.numel() * dtype_bits / 8)
        return total

    def slimkit_param_count(self) -> tuple[int, int]:
        """(weights, zeros): the codes count as the layer's weights in ``profile``'s params column, and a code at its
        group's zero point (a weight that dequantizes to exactly 0, e.g. an unstructured-pruned one) as a zero."""
        bias = getattr(self, "bias", None)
        weights = self.codes.numel() + (bias.numel() if bias is not None else 0)
        zeros = int((self.codes == self.zero_points[:, self.columns_group()]).sum())
        if bias is not None:
            zeros += int((bias == 0).sum())
        return weights, zeros


class QuantizedLinear(_WeightCodes):
    """A weight-only quantized ``nn.Linear``: ``y = x (dequantized W)ᵀ + b``."""

    def __init__(self, in_features: int, out_features: int, grid: WeightGrid, bias: bool = True) -> None:
        super().__init__()
        self.in_features, self.out_features = in_features, out_features
        self._init_codes(out_features, in_features, grid)
        self.bias = nn.Parameter(torch.zeros(out_features)) if bias else None

    @classmethod
    def from_linear(cls, layer: nn.Linear, grid: WeightGrid, codes: torch.Tensor, scales: torch.Tensor,
                    zeros: torch.Tensor, group_index: torch.Tensor | None = None) -> QuantizedLinear:
        module = cls(layer.in_features, layer.out_features, grid, bias=layer.bias is not None)
        module.set_codes_(codes, scales, zeros, group_index)
        if layer.bias is not None:
            module.bias = nn.Parameter(layer.bias.detach().float().clone())
        return module.to(layer.weight.device)

    @property
    def weight(self) -> torch.Tensor:
        return self.weight_matrix()

    def extra_repr(self) -> str:
        kind = "symmetric" if self.symmetric else "asymmetric"
        return (f"in_features={self.in_features}, out_features={self.out_features}, bits={self.bits}, "
                f"group_size={self.group_size}, {kind}, bias={self.bias is not None}")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, self.weight_matrix(x.dtype), None if self.bias is None else self.bias.to(x.dtype))


class QuantizedConv2d(_WeightCodes):
    """A weight-only quantized ``nn.Conv2d``; its codes are the ``out × (in/groups)·kh·kw`` im2col matrix."""

    def __init__(self, conv: nn.Conv2d, grid: WeightGrid) -> None:
        super().__init__()
        self.in_channels, self.out_channels = conv.in_channels, conv.out_channels
        self.kernel_size, self.stride, self.padding = conv.kernel_size, conv.stride, conv.padding
        self.dilation, self.groups, self.padding_mode = conv.dilation, conv.groups, conv.padding_mode
        self._reversed_padding_repeated_twice = conv._reversed_padding_repeated_twice
        self.weight_shape = tuple(conv.weight.shape)
        self._init_codes(conv.weight.shape[0], conv.weight[0].numel(), grid)
        self.bias = None if conv.bias is None else nn.Parameter(conv.bias.detach().float().clone())

    @classmethod
    def from_conv(cls, conv: nn.Conv2d, grid: WeightGrid, codes: torch.Tensor, scales: torch.Tensor,
                  zeros: torch.Tensor, group_index: torch.Tensor | None = None) -> QuantizedConv2d:
        module = cls(conv, grid)
        module.set_codes_(codes, scales, zeros, group_index)
        return module.to(conv.weight.device)

    @property
    def weight(self) -> torch.Tensor:
        return self.weight_matrix().reshape(self.weight_shape)

    def extra_repr(self) -> str:
        kind = "symmetric" if self.symmetric else "asymmetric"
        return (f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, stride={self.stride}, "
                f"bits={self.bits}, group_size={self.group_size}, {kind}")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        weight = self.weight_matrix(x.dtype).reshape(self.weight_shape)
        bias = None if self.bias is None else self.bias.to(x.dtype)
        if self.padding_mode != "zeros":
            x = F.pad(x, self._reversed_padding_repeated_twice, mode=self.padding_mode)
            return F.conv2d(x, weight, bias, self.stride, 0, self.dilation, self.groups)
        return F.conv2d(x, weight, bias, self.stride, self.padding, self.dilation, self.groups)


def weight_matrix(layer: nn.Module) -> torch.Tensor:
    """A Linear/Conv2d weight as the rows × columns matrix the group-wise grids and GPTQ work on."""
    return layer.weight.detach().reshape(layer.weight.shape[0], -1)


def quantized_layer(layer: nn.Module, grid: WeightGrid, codes: torch.Tensor, scales: torch.Tensor,
                    zeros: torch.Tensor, group_index: torch.Tensor | None = None) -> nn.Module:
    """The :class:`QuantizedLinear` / :class:`QuantizedConv2d` holding ``codes`` for ``layer``'s weight."""
    if isinstance(layer, nn.Linear):
        return QuantizedLinear.from_linear(layer, grid, codes, scales, zeros, group_index)
    return QuantizedConv2d.from_conv(layer, grid, codes, scales, zeros, group_index)


def _register_profile_hooks() -> None:
    from slimkit.analysis import register_counter

    @register_counter(QuantizedLinear)
    def _count_linear(module: QuantizedLinear, inputs: tuple, output: object) -> tuple[int, int]:
        rows = output.numel() // module.out_features if isinstance(output, torch.Tensor) else 0
        return rows * module.in_features * module.out_features, 0

    @register_counter(QuantizedConv2d)
    def _count_conv(module: QuantizedConv2d, inputs: tuple, output: object) -> tuple[int, int]:
        if not isinstance(output, torch.Tensor):
            return 0, 0
        per_output = module.weight_shape[1] * module.weight_shape[2] * module.weight_shape[3]
        return output.numel() * per_output, 0


_register_profile_hooks()
