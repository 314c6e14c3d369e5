"""CReLU (Shang et al. 2016, "Understanding and Improving CNNs via Concatenated Rectified Linear Units").

Lower conv layers learn filters in negatively correlated pairs; CReLU computes half of them and recovers the other
half by negation: CReLU(x) = [ReLU(x), ReLU(−x)] (Eq. 1). A conv with N/2 filters followed by CReLU has N output
channels at half the conv's parameters and MACs. PVANet and mobile segmentation nets put a BN (scale/shift) between
the concatenation and the ReLU, which is why :class:`CReLU` can stop at the concatenation (``activation=False``).
"""

from __future__ import annotations

import torch
from torch import nn

from slimkit.analysis import first_tensor, register_counter
from slimkit.models._registry import register_model


class CReLU(nn.Module):
    """``cat(x, −x)`` on the channel dimension, then ReLU when ``activation``. ``permutation`` (optional buffer)
    reorders the 2C output channels, used when a trained conv is rewritten so its channels keep their order."""

    def __init__(self, activation: bool = True, permutation: torch.Tensor | None = None) -> None:
        super().__init__()
        self.activation = activation
        self.has_permutation = permutation is not None
        if permutation is not None:
            self.register_buffer("permutation", permutation.clone().long())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.cat([x, -x], 1)
        if self.has_permutation:
            x = x.index_select(1, self.permutation)
        return torch.relu(x) if self.activation else x


class CReLUConv2d(nn.Module):
    """A conv with ``out_channels // 2`` filters → CReLU: ``out_channels`` outputs at half the conv's cost.

    ``norm=True`` puts a BN over the concatenated channels before the ReLU (PVANet's "C.ReLU" block).
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int = 3, stride: int = 1,
                 padding: int | None = None, norm: bool = True, activation: bool = True) -> None:
        super().__init__()
        if out_channels % 2:
            raise ValueError(f"CReLUConv2d needs an even out_channels (half are negations), got {out_channels}")
        padding = kernel_size // 2 if padding is None else padding
        self.conv = nn.Conv2d(in_channels, out_channels // 2, kernel_size, stride, padding, bias=not norm)
        self.concat = CReLU(activation=False)
        self.bn: nn.Module = nn.BatchNorm2d(out_channels) if norm else nn.Identity()
        self.relu: nn.Module = nn.ReLU() if activation else nn.Identity()

    def forward(self, x):
        return self.relu(self.bn(self.concat(self.conv(x))))


@register_counter(CReLU)
def _count_crelu(module: CReLU, inputs: tuple, output: object) -> tuple[int, int]:
    out = first_tensor(output)
    elements = 0 if out is None else out.numel()
    # negation of half the channels, plus the ReLU over all of them
    return 0, elements // 2 + (elements if module.activation else 0)


class CReLUNet(nn.Module):
    """A small CReLU conv net (Shang et al. §4: CReLU in the lower layers): two CReLU conv blocks, pooling, FC."""

    def __init__(self, num_classes: int = 10, in_channels: int = 1, width: float = 1.0) -> None:
        super().__init__()
        c1, c2 = (2 * max(1, round(c * width / 2)) for c in (32, 64))
        self.block1 = CReLUConv2d(in_channels, c1, 3)
        self.pool1 = nn.MaxPool2d(2)
        self.block2 = CReLUConv2d(c1, c2, 3)
        self.pool2 = nn.MaxPool2d(2)
        self.conv3 = nn.Conv2d(c2, 2 * c2, 3, padding=1, bias=False)
        self.bn3 = nn.BatchNorm2d(2 * c2)
        self.relu3 = nn.ReLU()
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.flatten = nn.Flatten()
        self.fc = nn.Linear(2 * c2, num_classes)

    def forward(self, x):
        x = self.pool2(self.block2(self.pool1(self.block1(x))))
        x = self.relu3(self.bn3(self.conv3(x)))
        return self.fc(self.flatten(self.pool(x)))


@register_model("crelu_net", input_shape=(1, 28, 28), paper="Shang et al. 2016")
def crelu_net(num_classes: int = 10, in_channels: int = 1, width: float = 1.0) -> CReLUNet:
    """A small CReLU conv net for MNIST-sized inputs (CReLU blocks in the two lower layers, as the paper advises)."""
    return CReLUNet(num_classes, in_channels, width)
