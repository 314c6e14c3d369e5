"""Module rules: the size attributes each layer type gets once its parameters were sliced (``in_features``,
``num_features``, a depthwise conv's ``groups``, ...), and ``nn.MultiheadAttention`` followed as one op."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from slimkit.graph._capture import Call, Ref
from slimkit.graph._context import CannotFollow, TraceContext
from slimkit.graph._layers import along_dim
from slimkit.graph._rules import ResizeInfo, register_module


def _kept(mask: Any, default: int) -> int:
    return int(mask.sum()) if mask is not None else default


def _resize_linear(m: nn.Module, info: ResizeInfo) -> dict[str, Any]:
    m.in_features, m.out_features = int(m.weight.shape[1]), int(m.weight.shape[0])
    return {"in_features": m.in_features, "out_features": m.out_features}


def _resize_conv(m: nn.Module, info: ResizeInfo) -> dict[str, Any]:
    kind = info.use.kind if info.use is not None else "conv"
    if m.transposed:
        m.in_channels = int(m.weight.shape[0])
        m.out_channels = int(m.weight.shape[1]) * m.groups
    else:
        if kind == "depthwise":
            m.groups = _kept(info.keep_in, m.in_channels)
            m.in_channels = m.groups
        else:
            m.in_channels = int(m.weight.shape[1]) * m.groups
        m.out_channels = int(m.weight.shape[0])
    return {"in_channels": m.in_channels, "out_channels": m.out_channels, "groups": m.groups}


def _channels(m: nn.Module, info: ResizeInfo) -> int:
    for name in ("weight", "running_mean", "bias"):
        t = getattr(m, name, None)
        if isinstance(t, torch.Tensor) and t.dim() >= 1:
            return int(t.shape[0])
    return _kept(info.keep_out, 0)


def _resize_batch_norm(m: nn.Module, info: ResizeInfo) -> dict[str, Any]:
    m.num_features = _channels(m, info)
    return {"num_features": m.num_features}


def _resize_group_norm(m: nn.Module, info: ResizeInfo) -> dict[str, Any]:
    if m.num_groups == m.num_channels:
        m.num_groups = _channels(m, info)
    m.num_channels = _channels(m, info)
    return {"num_channels": m.num_channels, "num_groups": m.num_groups}


def _resize_layer_norm(m: nn.Module, info: ResizeInfo) -> dict[str, Any]:
    w = getattr(m, "weight", None)
    if isinstance(w, torch.Tensor):
        m.normalized_shape = tuple(int(s) for s in w.shape)
    elif info.keep_out is not None:
        m.normalized_shape = (*tuple(m.normalized_shape)[:-1], _kept(info.keep_out, m.normalized_shape[-1]))
    return {"normalized_shape": tuple(m.normalized_shape)}


def _resize_embedding(m: nn.Module, info: ResizeInfo) -> dict[str, Any]:
    m.embedding_dim = int(m.weight.shape[1])
    return {"embedding_dim": m.embedding_dim}


def _resize_prelu(m: nn.Module, info: ResizeInfo) -> dict[str, Any]:
    m.num_parameters = int(m.weight.numel())
    return {"num_parameters": m.num_parameters}


def _resize_mha(m: nn.Module, info: ResizeInfo) -> dict[str, Any]:
    e = int(m.out_proj.weight.shape[0])
    m.embed_dim = m.kdim = m.vdim = e
    m.head_dim = e // m.num_heads
    return {"embed_dim": e, "kdim": e, "vdim": e, "head_dim": m.head_dim}


def _resize_conv1d_hf(m: nn.Module, info: ResizeInfo) -> dict[str, Any]:
    m.nf = int(m.weight.shape[1])
    changed = {"nf": m.nf}
    if hasattr(m, "nx"):
        m.nx = int(m.weight.shape[0])
        changed["nx"] = m.nx
    return changed


def mha_leaf(ctx: TraceContext, call: Call) -> Any:
    """``nn.MultiheadAttention`` as one op. PyTorch requires embed_dim = query width = heads × head_dim, so the
    unit is head-dim slot d of every head, tied to the residual width (the head count stays)."""
    m, name = call.module, call.module_name
    if not m._qkv_same_embed_dim or m.bias_k is not None or m.in_proj_weight is None:
        raise CannotFollow("separate key/value widths or bias_k")
    q = call.arg(0, "query")
    in_map = ctx.channel_map(q, -1)
    for pos, key in ((1, "key"), (2, "value")):
        other = call.arg(pos, key)
        if isinstance(other, Ref) and other != q:
            ctx.union(in_map, ctx.channel_map(other, -1))
    slots = in_map.reshape(m.num_heads, -1)
    ctx.union(slots[:1], slots)
    rows = in_map.repeat(3)
    ctx.union(ctx.param_ids(f"{name}.in_proj_weight", 0, "out"), rows)
    ctx.union(ctx.param_ids(f"{name}.in_proj_weight", 1, "in"), in_map)
    if m.in_proj_bias is not None:
        ctx.union(ctx.param_ids(f"{name}.in_proj_bias", 0, "out"), rows)
    ctx.union(ctx.param_ids(f"{name}.out_proj.weight", 0, "out"), in_map)
    ctx.union(ctx.param_ids(f"{name}.out_proj.weight", 1, "in"), in_map)
    if m.out_proj.bias is not None:
        ctx.union(ctx.param_ids(f"{name}.out_proj.bias", 0, "out"), in_map)
    ctx.record_use(name, ctx.roots(in_map), ctx.roots(in_map), "mha")
    outs = call.out if isinstance(call.out, tuple) else (call.out,)
    results = []
    for i, out in enumerate(outs):
        if out is None:
            results.append(None)
        elif i == 0:
            results.append(along_dim(ctx, out, ctx.roots(in_map)))
        else:
            results.append(ctx.blocked_like(out))
    return tuple(results) if isinstance(call.out, tuple) else results[0]


register_module(nn.Linear, resize=_resize_linear, name="Linear")
register_module(nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.ConvTranspose1d, nn.ConvTranspose2d, nn.ConvTranspose3d,
                resize=_resize_conv, name="Conv")
register_module(nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d, nn.InstanceNorm1d, nn.InstanceNorm2d,
                nn.InstanceNorm3d, nn.SyncBatchNorm, resize=_resize_batch_norm, name="BatchNorm")
register_module(nn.GroupNorm, resize=_resize_group_norm, name="GroupNorm")
register_module(nn.LayerNorm, nn.RMSNorm, resize=_resize_layer_norm, name="LayerNorm")
register_module(nn.Embedding, nn.EmbeddingBag, resize=_resize_embedding, name="Embedding")
register_module(nn.PReLU, resize=_resize_prelu, name="PReLU")
register_module(nn.MultiheadAttention, resize=_resize_mha, leaf=mha_leaf, name="MultiheadAttention")
register_module("transformers.pytorch_utils.Conv1D", resize=_resize_conv1d_hf, name="Conv1D (transformers)")
