"""ShuffleNetV2 (Ma et al. 2018, "ShuffleNet V2: Practical Guidelines for Efficient CNN Architecture Design").

Basic unit (Fig. 3c): channel split in half, one half untouched, the other through 1×1-BN-ReLU → depthwise 3×3-BN →
1×1-BN-ReLU, concat, channel shuffle (2 groups). Down-sampling unit (Fig. 3d): both branches see the whole input,
the left one depthwise 3×3 stride 2 → 1×1. Stage channels per scale (Table 5); conv5 has 1024 channels (2048 at 2×).
At 1×, 224×224, 1000 classes: 2.3M parameters and 146M mult-adds ("FLOPs").

Small inputs (``input_size`` < 112): stride-1 stem and no stem max-pool, total stride 8 (28×28 → 4×4).
"""

from __future__ import annotations

import torch
from torch import nn

from slimkit.models._mobilenet import SMALL_INPUT_LIMIT
from slimkit.models._registry import register_model
from slimkit.models._shufflenet import ChannelShuffle

#: Stage output channels and conv5 channels per scale (Ma et al. Table 5).
SHUFFLENET_V2_CHANNELS: dict[float, tuple[int, int, int, int]] = {
    0.5: (48, 96, 192, 1024), 1.0: (116, 232, 464, 1024), 1.5: (176, 352, 704, 1024), 2.0: (244, 488, 976, 2048),
}
SHUFFLENET_V2_REPEATS = (4, 8, 4)


def _conv_bn(in_channels: int, out_channels: int, kernel: int, stride: int = 1, groups: int = 1,
             relu: bool = True) -> list[nn.Module]:
    layers: list[nn.Module] = [
        nn.Conv2d(in_channels, out_channels, kernel, stride, kernel // 2, groups=groups, bias=False),
        nn.BatchNorm2d(out_channels),
    ]
    return [*layers, nn.ReLU()] if relu else layers


class ShuffleV2Unit(nn.Module):
    """Ma et al. Fig. 3c (stride 1: channel split) and Fig. 3d (stride 2: both branches, channels double)."""

    def __init__(self, in_channels: int, out_channels: int, stride: int) -> None:
        super().__init__()
        self.stride = stride
        half = out_channels // 2
        branch_in = in_channels if stride == 2 else in_channels // 2
        self.left: nn.Module = nn.Identity()
        if stride == 2:
            self.left = nn.Sequential(*_conv_bn(in_channels, in_channels, 3, 2, groups=in_channels, relu=False),
                                      *_conv_bn(in_channels, half, 1))
        self.right = nn.Sequential(
            *_conv_bn(branch_in, half, 1),
            *_conv_bn(half, half, 3, stride, groups=half, relu=False),
            *_conv_bn(half, half, 1),
        )
        self.shuffle = ChannelShuffle(2)

    def forward(self, x):
        if self.stride == 1:
            left, right = x.chunk(2, dim=1)
            out = torch.cat([left, self.right(right)], 1)
        else:
            out = torch.cat([self.left(x), self.right(x)], 1)
        return self.shuffle(out)


class ShuffleNetV2(nn.Module):
    """ShuffleNetV2 at scale ``width`` ∈ {0.5, 1.0, 1.5, 2.0}, with ``num_classes``, ``in_channels``, ``input_size``."""

    def __init__(self, num_classes: int = 1000, in_channels: int = 3, width: float = 1.0,
                 input_size: int = 224) -> None:
        super().__init__()
        if width not in SHUFFLENET_V2_CHANNELS:
            raise ValueError(f"ShuffleNetV2 width must be one of {sorted(SHUFFLENET_V2_CHANNELS)}, got {width}")
        small = input_size < SMALL_INPUT_LIMIT
        *stage_channels, last = SHUFFLENET_V2_CHANNELS[width]
        self.stem = nn.Sequential(*_conv_bn(in_channels, 24, 3, 1 if small else 2))
        self.maxpool = nn.Identity() if small else nn.MaxPool2d(3, 2, 1)
        stages, channels = [], 24
        for out, repeats in zip(stage_channels, SHUFFLENET_V2_REPEATS, strict=True):
            units = []
            for j in range(repeats):
                units.append(ShuffleV2Unit(channels, out, 2 if j == 0 else 1))
                channels = out
            stages.append(nn.Sequential(*units))
        self.stage2, self.stage3, self.stage4 = stages
        self.conv5 = nn.Sequential(*_conv_bn(channels, last, 1))
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.flatten = nn.Flatten()
        self.fc = nn.Linear(last, num_classes)

    def forward(self, x):
        x = self.maxpool(self.stem(x))
        x = self.conv5(self.stage4(self.stage3(self.stage2(x))))
        return self.fc(self.flatten(self.pool(x)))


@register_model("shufflenet_v2", input_shape=(1, 28, 28), paper="Ma et al. 2018")
def shufflenet_v2(num_classes: int = 10, in_channels: int = 1, width: float = 1.0,
                  input_size: int = 28) -> ShuffleNetV2:
    """ShuffleNetV2; at 1×, ``num_classes=1000, in_channels=3, input_size=224``: 2.3M params, 146M mult-adds."""
    return ShuffleNetV2(num_classes, in_channels, width, input_size)
