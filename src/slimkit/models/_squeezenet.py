"""SqueezeNet 1.0 and 1.1 (Iandola et al. 2016, "SqueezeNet: AlexNet-level accuracy with 50x fewer parameters").

Fire modules: squeeze 1×1 (s₁ₓ₁ filters) → ReLU → expand 1×1 (e₁ₓ₁) and 3×3 (e₃ₓ₃) in parallel, concatenated,
ReLU (§3.2, Table 1). The classifier is dropout → conv10 1×1 → ReLU → global average pool (no FC layer).
1.0: 1,248,424 parameters; 1.1 (the reference repo's v1.1: 3×3 64-filter conv1, earlier pooling): 1,235,496.
``width`` scales every fire module's filters (the paper's §5 "squeeze ratio"/"base_e" design-space knobs kept fixed).

Small inputs (``input_size`` < 112): conv1 becomes 3×3 stride 1 (padding 1) and the first max-pool is dropped, so
a 28×28 image is pooled twice (28 → 14 → 7) instead of collapsing.
"""

from __future__ import annotations

import torch
from torch import nn

from slimkit.models._mobilenet import SMALL_INPUT_LIMIT
from slimkit.models._registry import register_model

#: (squeeze, expand1x1, expand3x3) of fire2..fire9 (Iandola et al. Table 1).
FIRE_SETTINGS = ((16, 64, 64), (16, 64, 64), (32, 128, 128), (32, 128, 128),
                 (48, 192, 192), (48, 192, 192), (64, 256, 256), (64, 256, 256))
#: Max-pools come after these fire indices (0 = fire2): 1.0 after fire4 and fire8, 1.1 after fire3 and fire5.
POOL_AFTER = {"1.0": (2, 6), "1.1": (1, 3)}


class Fire(nn.Module):
    """squeeze 1×1 → ReLU → [expand 1×1 → ReLU, expand 3×3 → ReLU] concatenated (Iandola et al. Fig. 2)."""

    def __init__(self, in_channels: int, squeeze: int, expand1x1: int, expand3x3: int) -> None:
        super().__init__()
        self.squeeze = nn.Conv2d(in_channels, squeeze, 1)
        self.squeeze_relu = nn.ReLU()
        self.expand1x1 = nn.Conv2d(squeeze, expand1x1, 1)
        self.expand1x1_relu = nn.ReLU()
        self.expand3x3 = nn.Conv2d(squeeze, expand3x3, 3, padding=1)
        self.expand3x3_relu = nn.ReLU()

    def forward(self, x):
        x = self.squeeze_relu(self.squeeze(x))
        return torch.cat([self.expand1x1_relu(self.expand1x1(x)), self.expand3x3_relu(self.expand3x3(x))], 1)


class SqueezeNet(nn.Module):
    """SqueezeNet ``version`` "1.0" or "1.1" with ``width`` multiplier, ``num_classes``, ``in_channels``."""

    def __init__(self, num_classes: int = 1000, in_channels: int = 3, version: str = "1.0", width: float = 1.0,
                 input_size: int = 224, dropout: float = 0.5) -> None:
        super().__init__()
        version = str(version)
        if version not in POOL_AFTER:
            raise ValueError(f"SqueezeNet version must be '1.0' or '1.1', got {version!r}")
        small = input_size < SMALL_INPUT_LIMIT

        def scale(c: int) -> int:
            return max(1, round(c * width))

        stem = scale(96 if version == "1.0" else 64)
        if small:
            conv1 = nn.Conv2d(in_channels, stem, 3, 1, 1)
        elif version == "1.0":
            conv1 = nn.Conv2d(in_channels, stem, 7, 2)
        else:
            conv1 = nn.Conv2d(in_channels, stem, 3, 2)
        layers: list[nn.Module] = [conv1, nn.ReLU()]
        if not small:
            layers.append(nn.MaxPool2d(3, 2, ceil_mode=True))
        channels = stem
        for i, (s, e1, e3) in enumerate(FIRE_SETTINGS):
            layers.append(Fire(channels, scale(s), scale(e1), scale(e3)))
            channels = scale(e1) + scale(e3)
            if i in POOL_AFTER[version]:
                layers.append(nn.MaxPool2d(3, 2, ceil_mode=True))
        self.features = nn.Sequential(*layers)
        self.classifier = nn.Sequential(
            nn.Dropout(dropout), nn.Conv2d(channels, num_classes, 1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten()
        )
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                if module is self.classifier[1]:
                    nn.init.normal_(module.weight, 0, 0.01)  # reference init: the final conv starts near zero
                else:
                    nn.init.kaiming_uniform_(module.weight)
                nn.init.zeros_(module.bias)

    def forward(self, x):
        return self.classifier(self.features(x))


@register_model("squeezenet1_0", input_shape=(1, 28, 28), paper="Iandola et al. 2016")
def squeezenet1_0(num_classes: int = 10, in_channels: int = 1, width: float = 1.0, input_size: int = 28,
                  dropout: float = 0.5) -> SqueezeNet:
    """SqueezeNet 1.0; at ``num_classes=1000, in_channels=3``: 1,248,424 params."""
    return SqueezeNet(num_classes, in_channels, "1.0", width, input_size, dropout)


@register_model("squeezenet1_1", input_shape=(1, 28, 28), paper="Iandola et al. 2016 (v1.1)")
def squeezenet1_1(num_classes: int = 10, in_channels: int = 1, width: float = 1.0, input_size: int = 28,
                  dropout: float = 0.5) -> SqueezeNet:
    """SqueezeNet 1.1 (2.4× fewer mult-adds than 1.0); at ``num_classes=1000, in_channels=3``: 1,235,496 params."""
    return SqueezeNet(num_classes, in_channels, "1.1", width, input_size, dropout)
