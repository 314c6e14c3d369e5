"""Module rules: the size attributes each layer type gets once its parameters were sliced (``in_features``,
``num_features``, a depthwise conv's ``groups``, ...), and ``nn.MultiheadAttention`` followed as one op."""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn

from slimkit.analysis._counters import multihead_attention_macs
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


def _rescaled_queries(weight: nn.Parameter, bias: nn.Parameter | None, width: int, factor: float,
                      replaced: dict[int, Any]) -> tuple[nn.Parameter, nn.Parameter | None]:
    """New parameters with the first ``width`` rows (the queries) times ``factor``, each tensor once per removal
    (``replaced``; a projection two attention modules share is rescaled once and stays shared), never written in
    place (the tensors may be shared with the unpruned model)."""
    def scaled(t: nn.Parameter) -> nn.Parameter:
        if id(t) not in replaced:
            value = t.detach().clone()
            value[:width] *= factor
            replaced[id(t)] = new = nn.Parameter(value, requires_grad=t.requires_grad)
            replaced[id(new)] = new
        return replaced[id(t)]

    return scaled(weight), None if bias is None else scaled(bias)


def _query_scale(old_width: int, new_width: int) -> float:
    """What the queries must be multiplied by when an attention scales them by head_dim^-0.5 read from the input's
    width and head_dim shrank by ``new/old`` (same number of heads): the kept dims then score exactly as before."""
    return math.sqrt(new_width / old_width)


def _resize_mha(m: nn.Module, info: ResizeInfo) -> dict[str, Any]:
    e = int(m.out_proj.weight.shape[0])
    old = m.embed_dim
    if e != old:  # PyTorch scales q by head_dim^-0.5 computed from the pruned head_dim
        m.in_proj_weight, m.in_proj_bias = _rescaled_queries(m.in_proj_weight, m.in_proj_bias, e,
                                                             _query_scale(old, e), info.replaced)
    m.embed_dim = m.kdim = m.vdim = e
    m.head_dim = e // m.num_heads
    return {"embed_dim": e, "kdim": e, "vdim": e, "head_dim": m.head_dim}


def _resize_swin_attention(m: nn.Module, info: ResizeInfo) -> dict[str, Any]:
    """torchvision's Swin attention reads its width from the input and scales q by (C // heads)^-0.5 (v1; v2's
    cosine attention has a learned scale instead)."""
    old = info.keep_in.size if info.keep_in is not None else None
    new = int(m.proj.weight.shape[0])
    if old is not None and new != old and getattr(m, "logit_scale", None) is None:
        m.qkv.weight, m.qkv.bias = _rescaled_queries(m.qkv.weight, m.qkv.bias, new, _query_scale(old, new),
                                                     info.replaced)
    return {}


def _resize_maxvit_attention(m: nn.Module, info: ResizeInfo) -> dict[str, Any]:
    """torchvision's MaxViT attention reshapes q/k/v with its ``head_dim`` attribute; its scale is a constant."""
    m.head_dim = int(m.merge.weight.shape[1]) // m.n_heads
    return {"head_dim": m.head_dim}


def _resize_conv1d_hf(m: nn.Module, info: ResizeInfo) -> dict[str, Any]:
    m.nf = int(m.weight.shape[1])
    changed = {"nf": m.nf}
    if hasattr(m, "nx"):
        m.nx = int(m.weight.shape[0])
        changed["nx"] = m.nx
    return changed


def _head_slot_attention(ctx: TraceContext, call: Call, x: Ref, heads: int, qkv: tuple[str, str | None],
                         proj: tuple[str, str | None], *, self_attention: bool = True) -> torch.Tensor:
    """The channels of an attention whose per-head width is its input width ÷ ``heads`` (the head count stays):
    the unit is head-dim slot d of every head, tied to residual channels d, d + head_dim, ... of the input. ``qkv``
    and ``proj`` name the weight and bias (None: absent) of the fused q/k/v projection (rows q | k | v, each
    heads × head_dim) and of the output projection. With ``self_attention`` every q/k/v column reads the module's
    first input, which the use records (``input_weights``) for activation-aware criteria. Returns the input's
    channel ids (the output's too)."""
    in_map = ctx.channel_map(x, -1)
    if in_map.numel() % heads:
        raise CannotFollow(f"width {in_map.numel()} is not a multiple of {heads} heads")
    slots = in_map.reshape(heads, -1)
    ctx.union(slots[:1], slots)
    rows = in_map.repeat(3)
    weight, bias = qkv
    ctx.union(ctx.param_ids(weight, 0, "out"), rows)
    ctx.union(ctx.param_ids(weight, 1, "in"), in_map)
    if bias is not None:
        ctx.union(ctx.param_ids(bias, 0, "out"), rows)
    weight, bias = proj
    ctx.union(ctx.param_ids(weight, 0, "out"), in_map)
    ctx.union(ctx.param_ids(weight, 1, "in"), in_map)
    if bias is not None:
        ctx.union(ctx.param_ids(bias, 0, "out"), in_map)
    ctx.record_use(call.module_name, ctx.roots(in_map), ctx.roots(in_map), "attention",
                   input_weights=(qkv[0],) if self_attention else ())
    return ctx.roots(in_map)


def mha_leaf(ctx: TraceContext, call: Call) -> Any:
    """``nn.MultiheadAttention`` as one op. PyTorch requires embed_dim = query width = heads × head_dim, so the
    unit is head-dim slot d of every head, tied to the residual width (the head count stays)."""
    m, name = call.module, call.module_name
    if not m._qkv_same_embed_dim or m.bias_k is not None or m.in_proj_weight is None:
        raise CannotFollow("separate key/value widths or bias_k")
    q = call.arg(0, "query")
    cross = False
    for pos, key in ((1, "key"), (2, "value")):
        other = call.arg(pos, key)
        if isinstance(other, Ref) and other != q:
            ctx.union(ctx.channel_map(q, -1), ctx.channel_map(other, -1))
            cross = True
    roots = _head_slot_attention(
        ctx, call, q, m.num_heads,
        (f"{name}.in_proj_weight", None if m.in_proj_bias is None else f"{name}.in_proj_bias"),
        (f"{name}.out_proj.weight", None if m.out_proj.bias is None else f"{name}.out_proj.bias"),
        self_attention=not cross)
    outs = call.out if isinstance(call.out, tuple) else (call.out,)
    results = []
    for i, out in enumerate(outs):
        if out is None:
            results.append(None)
        elif i == 0:
            results.append(along_dim(ctx, out, roots))
        else:
            results.append(ctx.blocked_like(out))
    return tuple(results) if isinstance(call.out, tuple) else results[0]


def swin_attention_leaf(ctx: TraceContext, call: Call) -> Any:
    """torchvision's ``ShiftedWindowAttention`` (and V2) as one op: ``shifted_window_attention`` splits q/k/v into
    heads of C // num_heads channels, C read from the input, so the attention width is tied to the residual width
    by count; head-dim slots keep that true (the relative position bias is per head, untouched)."""
    m, name = call.module, call.module_name
    roots = _head_slot_attention(
        ctx, call, call.arg(0, "x"), m.num_heads,
        (f"{name}.qkv.weight", None if m.qkv.bias is None else f"{name}.qkv.bias"),
        (f"{name}.proj.weight", None if m.proj.bias is None else f"{name}.proj.bias"))
    return along_dim(ctx, call.out, roots)


def maxvit_attention_leaf(ctx: TraceContext, call: Call) -> Any:
    """torchvision's MaxViT ``RelativePositionalMultiHeadAttention`` as one op: q/k/v are reshaped to
    (n_heads, head_dim) and the result back to the input's width, so the attention width is tied to the residual
    width by count; head-dim slots keep that true (``head_dim`` is reset after pruning)."""
    m, name, x = call.module, call.module_name, call.arg(0, "x")
    if m.n_heads * m.head_dim != ctx.shape(x)[-1]:
        raise CannotFollow(f"{m.n_heads} heads × head_dim {m.head_dim} differs from the input width")
    roots = _head_slot_attention(
        ctx, call, x, m.n_heads,
        (f"{name}.to_qkv.weight", None if m.to_qkv.bias is None else f"{name}.to_qkv.bias"),
        (f"{name}.merge.weight", None if m.merge.bias is None else f"{name}.merge.bias"))
    return along_dim(ctx, call.out, roots)


# --- multiply-accumulates of the leaf modules (the formulas of slimkit.analysis.profile) ---------------------------

def _mha_macs(call: Call, shape: Any, module: nn.MultiheadAttention) -> int:
    q = call.arg(0, "query")
    k, v = call.arg(1, "key"), call.arg(2, "value")
    return multihead_attention_macs(module.batch_first, shape(q), shape(k if isinstance(k, Ref) else q),
                                    shape(v if isinstance(v, Ref) else q))


def _swin_attention_macs(call: Call, shape: Any, module: nn.Module) -> int:
    """q/k/v and output projections over every (padded) token, Q·Kᵀ and P·V within each window."""
    b, h, w, c = shape(call.arg(0, "x"))
    wh, ww = module.window_size
    tokens = b * -(-h // wh) * wh * -(-w // ww) * ww
    bias_mlp = 0  # V2's continuous position bias: an MLP over the (2wh-1)(2ww-1) relative coordinates
    for layer in getattr(module, "cpb_mlp", nn.Sequential()).modules():
        if isinstance(layer, nn.Linear):
            bias_mlp += (2 * wh - 1) * (2 * ww - 1) * layer.in_features * layer.out_features
    return tokens * c * (4 * c + 2 * wh * ww) + bias_mlp


def _maxvit_attention_macs(call: Call, shape: Any, module: nn.Module) -> int:
    """q/k/v and merge projections over every token, Q·Kᵀ and P·V within each of the G partitions of P tokens."""
    b, g, p, d = shape(call.arg(0, "x"))
    return b * g * p * d * (4 * d + 2 * p)


register_module(nn.Linear, resize=_resize_linear, name="Linear")
register_module(nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.ConvTranspose1d, nn.ConvTranspose2d, nn.ConvTranspose3d,
                resize=_resize_conv, name="Conv")
register_module(nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d, nn.InstanceNorm1d, nn.InstanceNorm2d,
                nn.InstanceNorm3d, nn.SyncBatchNorm, resize=_resize_batch_norm, name="BatchNorm")
register_module(nn.GroupNorm, resize=_resize_group_norm, name="GroupNorm")
register_module(nn.LayerNorm, nn.RMSNorm, resize=_resize_layer_norm, name="LayerNorm")
register_module(nn.Embedding, nn.EmbeddingBag, resize=_resize_embedding, name="Embedding")
register_module(nn.PReLU, resize=_resize_prelu, name="PReLU")
register_module(nn.MultiheadAttention, resize=_resize_mha, leaf=mha_leaf, macs=_mha_macs, name="MultiheadAttention")
register_module("transformers.pytorch_utils.Conv1D", resize=_resize_conv1d_hf, name="Conv1D (transformers)")
register_module("torchvision.models.swin_transformer.ShiftedWindowAttention", resize=_resize_swin_attention,
                leaf=swin_attention_leaf, macs=_swin_attention_macs, name="ShiftedWindowAttention (torchvision)")
register_module("torchvision.models.maxvit.RelativePositionalMultiHeadAttention", resize=_resize_maxvit_attention,
                leaf=maxvit_attention_leaf, macs=_maxvit_attention_macs,
                name="RelativePositionalMultiHeadAttention (torchvision)")
