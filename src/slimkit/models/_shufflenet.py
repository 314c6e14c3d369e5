"""ShuffleNetV1 (Zhang et al. 2018, "ShuffleNet: An Extremely Efficient CNN for Mobile Devices").

Units of 1×1 group conv → BN → ReLU → channel shuffle → depthwise 3×3 → BN → 1×1 group conv → BN, added to the
input (stride 1) or concatenated with a 3×3 average-pooled input (stride 2), then ReLU (Fig. 2). The bottleneck has
a quarter of the unit's output channels, and the first pointwise layer of Stage 2 is not grouped because its input
has only 24 channels (§3.3, Table 1). Scale factor ``width`` multiplies the stage channels (Table 2's "0.5×").
At 1× g=3, 224×224, 1000 classes: 140M mult-adds (the paper's "FLOPs") and ~1.9M parameters.

Small inputs (``input_size`` < 112): stride-1 stem and no stem max-pool, total stride 8 (28×28 → 4×4).
"""

from __future__ import annotations

import torch
from torch import nn

from slimkit.models._mobilenet import SMALL_INPUT_LIMIT
from slimkit.models._registry import register_model

#: Stage output channels at 1× for each group count g (Zhang et al. Table 1).
SHUFFLENET_V1_CHANNELS: dict[int, tuple[int, int, int]] = {
    1: (144, 288, 576), 2: (200, 400, 800), 3: (240, 480, 960), 4: (272, 544, 1088), 8: (384, 768, 1536),
}
SHUFFLENET_V1_REPEATS = (4, 8, 4)


def channel_shuffle(x: torch.Tensor, groups: int) -> torch.Tensor:
    """Zhang et al. §3.1: reshape channels to (groups, C/groups), transpose, flatten. Uses no Python shape
    unpacking, so it traces under torch.fx and exports to ONNX as Reshape/Transpose/Reshape."""
    return x.unflatten(1, (groups, -1)).transpose(1, 2).flatten(1, 2)


class ChannelShuffle(nn.ChannelShuffle):
    """``nn.ChannelShuffle`` with an ONNX-exportable forward (a view/transpose/reshape)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return channel_shuffle(x, self.groups)


def _conv_bn(in_channels: int, out_channels: int, kernel: int, stride: int = 1, groups: int = 1) -> list[nn.Module]:
    return [nn.Conv2d(in_channels, out_channels, kernel, stride, kernel // 2, groups=groups, bias=False),
            nn.BatchNorm2d(out_channels)]


class ShuffleUnit(nn.Module):
    """One ShuffleNet unit (Zhang et al. Fig. 2b for stride 1, Fig. 2c for stride 2)."""

    def __init__(self, in_channels: int, out_channels: int, stride: int, groups: int, group_first: bool = True) -> None:
        super().__init__()
        self.stride = stride
        branch_out = out_channels - in_channels if stride == 2 else out_channels
        mid = out_channels // 4
        first_groups = groups if group_first else 1
        self.branch = nn.Sequential(
            *_conv_bn(in_channels, mid, 1, groups=first_groups), nn.ReLU(),
            ChannelShuffle(first_groups) if first_groups > 1 else nn.Identity(),
            *_conv_bn(mid, mid, 3, stride, groups=mid),
            *_conv_bn(mid, branch_out, 1, groups=groups),
        )
        self.shortcut = nn.AvgPool2d(3, 2, 1) if stride == 2 else nn.Identity()
        self.relu = nn.ReLU()

    def forward(self, x):
        if self.stride == 2:
            return self.relu(torch.cat([self.shortcut(x), self.branch(x)], 1))
        return self.relu(x + self.branch(x))


class ShuffleNetV1(nn.Module):
    """ShuffleNetV1 with ``groups`` g ∈ {1, 2, 3, 4, 8}, scale factor ``width``, ``num_classes``, ``in_channels``."""

    def __init__(self, num_classes: int = 1000, in_channels: int = 3, groups: int = 3, width: float = 1.0,
                 input_size: int = 224) -> None:
        super().__init__()
        if groups not in SHUFFLENET_V1_CHANNELS:
            raise ValueError(f"ShuffleNetV1 groups must be one of {sorted(SHUFFLENET_V1_CHANNELS)}, got {groups}")
        small = input_size < SMALL_INPUT_LIMIT
        # Stage widths must split into `groups` groups and leave a bottleneck (out/4) divisible by `groups` too.
        stage_channels = [max(4 * groups, round(c * width / (4 * groups)) * 4 * groups)
                          for c in SHUFFLENET_V1_CHANNELS[groups]]
        stem = 24
        self.stem = nn.Sequential(*_conv_bn(in_channels, stem, 3, 1 if small else 2), nn.ReLU())
        self.maxpool = nn.Identity() if small else nn.MaxPool2d(3, 2, 1)
        stages, channels = [], stem
        for i, (out, repeats) in enumerate(zip(stage_channels, SHUFFLENET_V1_REPEATS, strict=True)):
            units = []
            for j in range(repeats):
                first = i == 0 and j == 0
                units.append(ShuffleUnit(channels, out, 2 if j == 0 else 1, groups, group_first=not first))
                channels = out
            stages.append(nn.Sequential(*units))
        self.stage2, self.stage3, self.stage4 = stages
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.flatten = nn.Flatten()
        self.fc = nn.Linear(channels, num_classes)

    def forward(self, x):
        x = self.maxpool(self.stem(x))
        x = self.stage4(self.stage3(self.stage2(x)))
        return self.fc(self.flatten(self.pool(x)))


@register_model("shufflenet_v1", input_shape=(1, 28, 28), paper="Zhang et al. 2018")
def shufflenet_v1(num_classes: int = 10, in_channels: int = 1, groups: int = 3, width: float = 1.0,
                  input_size: int = 28) -> ShuffleNetV1:
    """ShuffleNetV1; at 1× g=3, ``num_classes=1000, in_channels=3, input_size=224``: 140M mult-adds, ~1.9M params."""
    return ShuffleNetV1(num_classes, in_channels, groups, width, input_size)
