"""A mobile semantic-segmentation net ("mobile_segnet"): MobileNet encoder, deconvolution decoder with skips.

The classic real-time design: a MobileNetV1 encoder (Howard et al. 2017; depthwise 3×3 + pointwise 1×1 blocks) down
to 1/32 of the input, then five decoder blocks, each a 2×2 stride-2 transposed convolution → BN → ReLU (×2 per block,
gradual rather than one ×32 jump; 2×2 rather than 4×4 keeps the 1024-channel deconv at a quarter of the weights),
concatenated with the encoder feature map of the same size (U-Net-style skip; the last one with the input image),
fused by a pointwise 1×1 conv. A 1×1 classifier gives per-pixel logits at the input resolution. ``crelu=True``
replaces every pointwise conv by a half-width conv + CReLU (Shang et al. 2016), halving the pointwise MACs.
``width`` scales all channels; ``middle_blocks`` is the number of 512-channel stride-1 blocks at 1/16 (5 in
MobileNetV1, 1 by default to keep CPU training short).
"""

from __future__ import annotations

import torch
from torch import nn

from slimkit.models._crelu import CReLU
from slimkit.models._mobilenet import scale_channels
from slimkit.models._registry import register_model


def pointwise(in_channels: int, out_channels: int, crelu: bool) -> nn.Sequential:
    """1×1 conv → BN → ReLU, or with ``crelu`` a 1×1 conv of half the filters → cat(x, −x) → BN → ReLU."""
    if crelu and out_channels % 2 == 0:
        conv: nn.Module = nn.Sequential(nn.Conv2d(in_channels, out_channels // 2, 1, bias=False), CReLU(False))
    else:
        conv = nn.Conv2d(in_channels, out_channels, 1, bias=False)
    return nn.Sequential(conv, nn.BatchNorm2d(out_channels), nn.ReLU())


class EncoderBlock(nn.Module):
    """Depthwise 3×3 (stride s) → BN → ReLU → pointwise (see :func:`pointwise`)."""

    def __init__(self, in_channels: int, out_channels: int, stride: int, crelu: bool) -> None:
        super().__init__()
        self.depthwise = nn.Sequential(
            nn.Conv2d(in_channels, in_channels, 3, stride, 1, groups=in_channels, bias=False),
            nn.BatchNorm2d(in_channels), nn.ReLU(),
        )
        self.pointwise = pointwise(in_channels, out_channels, crelu)

    def forward(self, x):
        return self.pointwise(self.depthwise(x))


class DecoderBlock(nn.Module):
    """2×2 stride-2 transposed conv (×2 upsampling) → BN → ReLU, concat with the skip map, pointwise fuse."""

    def __init__(self, in_channels: int, skip_channels: int, out_channels: int, crelu: bool) -> None:
        super().__init__()
        self.up = nn.Sequential(
            nn.ConvTranspose2d(in_channels, out_channels, 2, 2, bias=False), nn.BatchNorm2d(out_channels), nn.ReLU()
        )
        self.fuse = pointwise(out_channels + skip_channels, out_channels, crelu)

    def forward(self, x, skip):
        return self.fuse(torch.cat([self.up(x), skip], 1))


class MobileSegNet(nn.Module):
    """MobileNet encoder (1/2 … 1/32) and five ×2 decoder blocks with skip connections; output N×classes×H×W.

    Input height and width must be multiples of 32.
    """

    def __init__(self, num_classes: int = 11, in_channels: int = 1, width: float = 1.0, crelu: bool = False,
                 middle_blocks: int = 1) -> None:
        super().__init__()
        c = [scale_channels(v, width) for v in (32, 64, 128, 256, 512, 1024)]
        self.stem = nn.Sequential(nn.Conv2d(in_channels, c[0], 3, 2, 1, bias=False), nn.BatchNorm2d(c[0]), nn.ReLU())
        # Each stage ends at the resolution named in the comment; its output is a skip for the decoder.
        self.stage1 = EncoderBlock(c[0], c[1], 1, crelu)  # 1/2
        self.stage2 = nn.Sequential(EncoderBlock(c[1], c[2], 2, crelu), EncoderBlock(c[2], c[2], 1, crelu))  # 1/4
        self.stage3 = nn.Sequential(EncoderBlock(c[2], c[3], 2, crelu), EncoderBlock(c[3], c[3], 1, crelu))  # 1/8
        self.stage4 = nn.Sequential(EncoderBlock(c[3], c[4], 2, crelu),
                                    *[EncoderBlock(c[4], c[4], 1, crelu) for _ in range(middle_blocks)])  # 1/16
        self.stage5 = nn.Sequential(EncoderBlock(c[4], c[5], 2, crelu), EncoderBlock(c[5], c[5], 1, crelu))  # 1/32
        d = [scale_channels(v, width) for v in (256, 128, 64, 32, 16)]
        self.up5 = DecoderBlock(c[5], c[4], d[0], crelu)  # → 1/16
        self.up4 = DecoderBlock(d[0], c[3], d[1], crelu)  # → 1/8
        self.up3 = DecoderBlock(d[1], c[2], d[2], crelu)  # → 1/4
        self.up2 = DecoderBlock(d[2], c[1], d[3], crelu)  # → 1/2
        self.up1 = DecoderBlock(d[3], in_channels, d[4], crelu)  # → 1/1, skip = the input image
        self.classifier = nn.Conv2d(d[4], num_classes, 1)
        for module in self.modules():
            if isinstance(module, (nn.Conv2d, nn.ConvTranspose2d)):
                nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
        # A small classifier init starts every pixel near the uniform prediction (loss ≈ ln C) instead of at
        # large random logits, which otherwise take many steps to unlearn.
        nn.init.normal_(self.classifier.weight, 0, 0.01)
        nn.init.zeros_(self.classifier.bias)

    def forward(self, x):
        s1 = self.stage1(self.stem(x))
        s2 = self.stage2(s1)
        s3 = self.stage3(s2)
        s4 = self.stage4(s3)
        s5 = self.stage5(s4)
        y = self.up2(self.up3(self.up4(self.up5(s5, s4), s3), s2), s1)
        return self.classifier(self.up1(y, x))


@register_model("mobile_segnet", input_shape=(1, 64, 64), paper="Howard et al. 2017; Shang et al. 2016 (CReLU)",
                task="segmentation")
def mobile_segnet(num_classes: int = 11, in_channels: int = 1, width: float = 1.0, crelu: bool = False,
                  middle_blocks: int = 1) -> MobileSegNet:
    """Mobile segmentation net for ``mnist-seg`` (11 classes, 1×64×64 canvases by default)."""
    return MobileSegNet(num_classes, in_channels, width, crelu, middle_blocks)
