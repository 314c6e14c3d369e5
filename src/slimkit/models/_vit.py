"""A small Vision Transformer (Dosovitskiy et al. 2021) for 28×28 MNIST, with hand-written attention.

Patches of 4×4 (a 7×7 grid), a class token, learned positional embeddings, pre-norm blocks
(LayerNorm → multi-head self-attention → residual, LayerNorm → MLP → residual). Attention is written out
(qkv Linear → reshape into heads → softmax(q kᵀ / √d) v → reshape back → projection) rather than
``nn.MultiheadAttention``, so the structured pruner can see and remove whole heads.
"""

from __future__ import annotations

import torch
from torch import nn

from slimkit.models._registry import register_model


class Attention(nn.Module):
    """Multi-head self-attention (Vaswani et al. 2017, Eq. 1) with a fused qkv projection."""

    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        if dim % heads:
            raise ValueError(f"embedding width {dim} is not divisible by {heads} heads")
        self.heads, self.head_dim = heads, dim // heads
        self.scale = self.head_dim ** -0.5
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, _ = x.shape
        qkv = self.qkv(x).reshape(b, n, 3, self.heads, self.head_dim).permute(2, 0, 3, 1, 4)
        q, k, v = qkv[0], qkv[1], qkv[2]
        attn = ((q @ k.transpose(-2, -1)) * self.scale).softmax(dim=-1)
        out = (attn @ v).transpose(1, 2).reshape(b, n, self.heads * self.head_dim)
        return self.proj(out)


class Block(nn.Module):
    """Pre-norm transformer encoder block."""

    def __init__(self, dim: int, heads: int, mlp_ratio: float) -> None:
        super().__init__()
        hidden = int(dim * mlp_ratio)
        self.norm1 = nn.LayerNorm(dim)
        self.attn = Attention(dim, heads)
        self.norm2 = nn.LayerNorm(dim)
        self.fc1 = nn.Linear(dim, hidden)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.norm1(x))
        return x + self.fc2(self.act(self.fc1(self.norm2(x))))


class VisionTransformer(nn.Module):
    """ViT: conv patch embedding, class token, positional embedding, ``depth`` blocks, LayerNorm, linear head."""

    def __init__(self, num_classes: int = 10, in_channels: int = 1, image_size: int = 28, patch: int = 4,
                 dim: int = 64, depth: int = 4, heads: int = 4, mlp_ratio: float = 2.0) -> None:
        super().__init__()
        if image_size % patch:
            raise ValueError(f"image size {image_size} is not a multiple of the patch size {patch}")
        tokens = (image_size // patch) ** 2
        self.patch_embed = nn.Conv2d(in_channels, dim, patch, patch)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, dim))
        self.pos_embed = nn.Parameter(torch.randn(1, tokens + 1, dim) * 0.02)
        self.blocks = nn.Sequential(*[Block(dim, heads, mlp_ratio) for _ in range(depth)])
        self.norm = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.patch_embed(x).flatten(2).transpose(1, 2)
        cls = self.cls_token.expand(x.shape[0], -1, -1)
        x = torch.cat([cls, x], dim=1) + self.pos_embed
        x = self.norm(self.blocks(x))
        return self.head(x[:, 0])


@register_model("vit_tiny", input_shape=(1, 28, 28), paper="Dosovitskiy et al. 2021")
def vit_tiny(num_classes: int = 10, in_channels: int = 1, dim: int = 64, depth: int = 4, heads: int = 4,
             mlp_ratio: float = 2.0) -> VisionTransformer:
    """ViT on 28×28 with 4×4 patches (49 tokens + class token): width 64, 4 blocks, 4 heads — about 0.14M params."""
    return VisionTransformer(num_classes, in_channels, 28, 4, dim, depth, heads, mlp_ratio)
