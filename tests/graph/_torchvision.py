"""torchvision's Swin and MaxViT attention re-stated with their fields and forward code (torchvision is not a
dependency; slimkit's rules match these classes by their qualified names, as they would the real ones)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class ShiftedWindowAttention(nn.Module):
    """torchvision.models.swin_transformer.ShiftedWindowAttention's fields and forward (windows not shifted): the
    head width is C // num_heads with C read from the input, and q is scaled by its inverse square root."""

    def __init__(self, dim: int, window: int, num_heads: int) -> None:
        super().__init__()
        self.window_size, self.shift_size, self.num_heads = [window, window], [0, 0], num_heads
        self.qkv = nn.Linear(dim, dim * 3)
        self.proj = nn.Linear(dim, dim)
        self.relative_position_bias_table = nn.Parameter(0.1 * torch.randn(num_heads, window**2, window**2))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, h, w, c = x.shape
        ws = self.window_size[0]
        x = x.view(b, h // ws, ws, w // ws, ws, c).permute(0, 1, 3, 2, 4, 5).reshape(-1, ws * ws, c)
        qkv = F.linear(x, self.qkv.weight, self.qkv.bias)
        qkv = qkv.reshape(x.size(0), x.size(1), 3, self.num_heads, c // self.num_heads).permute(2, 0, 3, 1, 4)
        q, k, v = qkv[0], qkv[1], qkv[2]
        q = q * (c // self.num_heads) ** -0.5
        attn = F.softmax(q.matmul(k.transpose(-2, -1)) + self.relative_position_bias_table, dim=-1)
        x = attn.matmul(v).transpose(1, 2).reshape(x.size(0), x.size(1), c)
        x = F.linear(x, self.proj.weight, self.proj.bias)
        return x.view(b, h // ws, w // ws, ws, ws, c).permute(0, 1, 3, 2, 4, 5).reshape(b, h, w, c)


class RelativePositionalMultiHeadAttention(nn.Module):
    """torchvision.models.maxvit.RelativePositionalMultiHeadAttention's fields and forward: q/k/v reshaped with the
    ``head_dim`` attribute, the result back to the input's width D, a constant scale."""

    def __init__(self, feat_dim: int, head_dim: int, max_seq_len: int) -> None:
        super().__init__()
        self.n_heads, self.head_dim = feat_dim // head_dim, head_dim
        self.to_qkv = nn.Linear(feat_dim, self.n_heads * self.head_dim * 3)
        self.scale_factor = feat_dim**-0.5
        self.merge = nn.Linear(self.head_dim * self.n_heads, feat_dim)
        self.relative_position_bias_table = nn.Parameter(0.1 * torch.randn(self.n_heads, max_seq_len, max_seq_len))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, g, p, d = x.shape
        h, dh = self.n_heads, self.head_dim
        q, k, v = torch.chunk(self.to_qkv(x), 3, dim=-1)
        q, k, v = (t.reshape(b, g, p, h, dh).permute(0, 1, 3, 2, 4) for t in (q, k, v))
        k = k * self.scale_factor
        scores = torch.einsum("B G H I D, B G H J D -> B G H I J", q, k)
        weights = F.softmax(scores + self.relative_position_bias_table, dim=-1)
        out = torch.einsum("B G H I J, B G H J D -> B G H I D", weights, v)
        return self.merge(out.permute(0, 1, 3, 2, 4).reshape(b, g, p, d))


ShiftedWindowAttention.__module__ = "torchvision.models.swin_transformer"
RelativePositionalMultiHeadAttention.__module__ = "torchvision.models.maxvit"
