"""Rules for ops that own channels through parameters (``F.linear``, convolutions, norms, embeddings, GPT-2's
``addmm`` projection), for attention (scaled-dot-product and q·kᵀ / p·v matmuls: whole heads, GQA as whole key/value
groups or as query heads within groups), and the module rules that set a layer's size attributes once its
parameters were sliced.

A parameter's dims are pruned independently: ``F.linear(x, W, b)`` ties W's columns to x's channels and W's rows
to the result's channels (and to b), whichever module owns W, so a tied LM head or a projection written with
``F.linear`` on someone else's weight is followed like an ``nn.Linear``.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from slimkit.graph._capture import Call, Ref
from slimkit.graph._context import AttentionSite, CannotFollow, TraceContext
from slimkit.graph._rules import ResizeInfo, RewriteContext, register_module, register_op

T = torch.Tensor


def _along_last(ctx: TraceContext, out: Ref, ids: T, dim: int = -1) -> T:
    shape = [1] * len(ctx.shape(out))
    shape[dim] = ids.numel()
    return ids.reshape(shape)


# --- dense layers ---------------------------------------------------------------------------------------------

def linear(ctx: TraceContext, call: Call) -> T:
    """``F.linear(x, W, b)``: x's last-dim channels are W's columns, the result's channels are W's rows and b."""
    x, w, b = call.arg(0, "input"), call.arg(1, "weight"), call.arg(2, "bias")
    in_map = ctx.channel_map(x, -1)
    w_in, w_out = ctx.param_ids(w, 1, "in"), ctx.param_ids(w, 0, "out")
    ctx.union(w_in, in_map)
    if isinstance(b, Ref):
        ctx.union(ctx.param_ids(b, 0, "out"), w_out)
    owner = ctx.owner(w)
    if owner is not None:
        ctx.record_use(owner, ctx.roots(in_map), w_out, "linear")
    return _along_last(ctx, call.out, w_out)


register_op(F.linear, name="linear")(linear)


def addmm(ctx: TraceContext, call: Call) -> T:
    """``torch.addmm(b, x, W)`` with a parameter W of shape (in, out) (GPT-2's ``Conv1D``)."""
    b, x, w = call.arg(0, "input"), call.arg(1, "mat1"), call.arg(2, "mat2")
    if not ctx.is_param(w):
        raise CannotFollow("addmm of two activations")
    in_map = ctx.channel_map(x, -1)
    w_in, w_out = ctx.param_ids(w, 0, "in"), ctx.param_ids(w, 1, "out")
    ctx.union(w_in, in_map)
    if isinstance(b, Ref):
        if ctx.is_param(b) and len(ctx.shape(b)) == 1:
            ctx.union(ctx.param_ids(b, 0, "out"), w_out)
        else:
            ctx.union(ctx.ids(b), _along_last(ctx, call.out, w_out))
    owner = ctx.owner(w)
    if owner is not None:
        ctx.record_use(owner, ctx.roots(in_map), w_out, "linear-t")
    return _along_last(ctx, call.out, w_out)


register_op(torch.addmm, T.addmm, name="addmm")(addmm)


# --- attention ------------------------------------------------------------------------------------------------

def _repeat_factor(ctx: TraceContext, slices: T) -> int:
    """n if consecutive blocks of n rows of ``slices`` (heads × elements) hold the same ids (``repeat_kv``)."""
    rows = ctx.roots(slices)
    heads = rows.shape[0]
    best = 1
    for n in range(2, heads + 1):
        if heads % n:
            continue
        blocks = rows.reshape(heads // n, n, -1)
        if bool((blocks == blocks[:, :1]).all()):
            best = n
    return best


def _attend(ctx: TraceContext, q: T, kvs: list[T], site: tuple[Ref, Ref, int]) -> T:
    """Couple attention heads. ``q``: (Hq, ...) ids per query head; ``kvs``: (Hk, ...) ids per key/value head.
    Returns the (Hq,) ids of each query head's unit."""
    hq = q.shape[0]
    for t in (q, *kvs):
        ctx.union(t[:, :1], t)
    hk = kvs[0].shape[0] if kvs else hq
    n_rep = hq // hk if hk and hq % hk == 0 else 1
    if hk == hq and kvs:
        n_rep = _repeat_factor(ctx, kvs[0])
        kvs = [kv[::n_rep] for kv in kvs]  # the repeated copies are the same ids
    if n_rep > 1 and ctx.gqa == "query":
        for kv in kvs:
            ctx.block(kv)
        slots = q[:, 0].reshape(hq // n_rep, n_rep)
        ctx.union(slots[:1], slots)
    else:
        groups = q[:, 0].reshape(-1, n_rep)
        ctx.union(groups[:, :1], groups)
        for kv in kvs:
            ctx.union(groups[:, 0], kv[:, 0])
    heads = ctx.roots(q[:, 0])
    ctx.mark_heads(heads)
    call = ctx.call
    ctx.attention.append(AttentionSite(call.index if call else -1, call.scope if call else "", site[0], site[1],
                                       site[2], n_rep, hk if hk != hq else hq // n_rep, ctx.gqa))
    return heads


def _per_head(ctx: TraceContext, ref: Ref, head_dim: int) -> T:
    """(heads, rest) ids of ``ref`` with heads along ``head_dim`` (leading size-1 dims folded into heads)."""
    ids = ctx.expanded(ref)
    head_dim = head_dim % ids.dim()
    ids = ids.movedim(head_dim, 0)
    return ids.reshape(ids.shape[0], -1)


def sdpa(ctx: TraceContext, call: Call) -> T:
    """``F.scaled_dot_product_attention(q, k, v)``: heads (dim -3) are units; with fewer key/value heads (GQA),
    either whole groups (a key/value head with its query heads) or query heads within every group."""
    q, k, v = call.arg(0, "query"), call.arg(1, "key"), call.arg(2, "value")
    mask = call.arg(3, "attn_mask")
    if len(ctx.shape(q)) < 3:
        raise CannotFollow("attention on a 2-D query")
    heads = _attend(ctx, _per_head(ctx, q, -3), [_per_head(ctx, k, -3), _per_head(ctx, v, -3)], (q, k, -3))
    if isinstance(mask, Ref):
        mshape = ctx.shape(mask)
        if len(mshape) >= 3 and mshape[-3] == heads.numel() and heads.numel() > 1:
            ctx.union(_per_head(ctx, mask, -3), heads.reshape(-1, 1))
        else:
            ctx.block(ctx.ids(mask))
    out_shape = [1] * len(ctx.shape(call.out))
    out_shape[-3] = heads.numel()
    return heads.reshape(out_shape)


register_op(F.scaled_dot_product_attention, name="scaled_dot_product_attention")(sdpa)


def matmul(ctx: TraceContext, call: Call) -> T:
    """``a @ b``. With a 2-D parameter operand it is a dense layer (``x @ W``). Between two activations (attention
    scores, attention × values) everything in one batch slice (one head) is one unit, so heads are pruned whole;
    key/value heads repeated for GQA are recognised."""
    a, b = call.arg(0, "input"), call.arg(1, "other", call.kwargs.get("mat2"))
    if not isinstance(a, Ref) or not isinstance(b, Ref):
        raise CannotFollow("matmul with a non-tensor")
    sa, sb = ctx.shape(a), ctx.shape(b)
    if ctx.is_param(b) and len(sb) == 2 and len(sa) >= 1:
        in_map = ctx.channel_map(a, -1)
        w_in, w_out = ctx.param_ids(b, 0, "in"), ctx.param_ids(b, 1, "out")
        ctx.union(w_in, in_map)
        owner = ctx.owner(b)
        if owner is not None:
            ctx.record_use(owner, ctx.roots(in_map), w_out, "matmul")
        return _along_last(ctx, call.out, w_out)
    if ctx.is_param(a) and len(sa) == 2 and len(sb) >= 2:
        in_map = ctx.channel_map(b, -2)
        w_in, w_out = ctx.param_ids(a, 1, "in"), ctx.param_ids(a, 0, "out")
        ctx.union(w_in, in_map)
        return _along_last(ctx, call.out, w_out, -2)
    if len(sa) < 2 or len(sb) < 2:
        raise CannotFollow("matmul with a vector")
    batch = torch.broadcast_shapes(sa[:-2], sb[:-2])
    xa = ctx.ids(a).expand(*batch, *sa[-2:]).reshape(-1, sa[-2] * sa[-1])
    xb = ctx.ids(b).expand(*batch, *sb[-2:]).reshape(-1, sb[-2] * sb[-1])
    big = [d for d, s in enumerate(batch) if s > 1]
    if len(big) == 1:
        heads = _attend(ctx, xa, [xb], (a, b, big[0] - len(batch) - 2))
    else:
        ctx.union(xa[:, :1], xa)
        ctx.union(xa[:, :1], xb)
        heads = ctx.roots(xa[:, 0])
    return heads.reshape(*batch, 1, 1)


register_op(torch.matmul, T.matmul, T.__matmul__, T.__rmatmul__, torch.bmm, T.bmm, torch.mm, T.mm,
            name="matmul")(matmul)


def baddbmm(ctx: TraceContext, call: Call) -> T:
    """``torch.baddbmm(c, a, b, beta=0)`` (GPT-2's upcast attention): the matmul rule; ``c`` is ignored when
    ``beta`` is 0, else added position-wise."""
    inner = Call(call.index, torch.bmm, (call.arg(1, "batch1"), call.arg(2, "batch2")), {}, call.out, call.scope)
    ids = matmul(ctx, inner)
    c, beta = call.arg(0, "input"), call.kwargs.get("beta", 1)
    if isinstance(c, Ref) and beta != 0:
        ctx.union(ids, ctx.ids(c))
    return ids


register_op(torch.baddbmm, T.baddbmm, name="baddbmm")(baddbmm)


# --- convolutions ---------------------------------------------------------------------------------------------

_CONV_T = {F.conv_transpose1d, F.conv_transpose2d, F.conv_transpose3d}


def conv(ctx: TraceContext, call: Call) -> T:
    """Convolutions. groups=1: new output ids. Depthwise (groups = in_channels): outputs inherit their input
    channel's id. Other group convs: input slot i of every group is one unit and output slot j of every group is
    one unit, so every group keeps the same width (the group count never changes)."""
    x, w, b = call.arg(0, "input"), call.arg(1, "weight"), call.arg(2, "bias")
    groups = int(call.arg(6, "groups", 1))
    transposed = call.target in _CONV_T
    cin = ctx.shape(x)[1]
    wshape = ctx.shape(w)
    in_map = ctx.channel_map(x, 1)
    cout = wshape[1] * groups if transposed else wshape[0]
    in_dim, out_dim = (0, 1) if transposed else (1, 0)
    if groups == 1:
        ctx.union(ctx.param_ids(w, in_dim, "in"), in_map)
        out_map, kind = ctx.param_ids(w, out_dim, "out"), "conv"
    elif not transposed and groups == cin and cout % cin == 0:
        out_map, kind = in_map.repeat_interleave(cout // cin), "depthwise"
        ctx.union(ctx.param_ids(w, 0, "out"), out_map)
    elif not transposed:
        slots = in_map.reshape(groups, cin // groups)
        ctx.union(slots[:1], slots)
        ctx.union(ctx.param_ids(w, 1, "in"), slots[0])
        w_out = ctx.param_ids(w, 0, "out").reshape(groups, cout // groups)
        ctx.union(w_out[:1], w_out)
        out_map, kind = w_out.reshape(-1), "conv-slots"
    else:
        slots = in_map.reshape(groups, cin // groups)
        ctx.union(slots[:1], slots)
        ctx.union(ctx.param_ids(w, 0, "in"), in_map)
        out_map, kind = ctx.param_ids(w, 1, "out").repeat(groups), "conv-slots"
    if isinstance(b, Ref):
        ctx.union(ctx.param_ids(b, 0, "out"), out_map)
    owner = ctx.owner(w)
    if owner is not None:
        ctx.record_use(owner, ctx.roots(in_map), out_map, kind, groups=groups)
    return _along_last(ctx, call.out, out_map, 1)


def rewrite_conv(rctx: RewriteContext, call: Call) -> tuple[Any, tuple, dict] | None:
    """A depthwise convolution's ``groups`` follows its channel count."""
    groups = int(call.arg(6, "groups", 1))
    x = call.args[0]
    if groups == 1 or rctx.masks(x)[1] is None or groups != rctx.shape(x)[1]:
        return None
    new = rctx.new_shape(x)[1]
    args = list(call.args)
    kwargs = dict(call.kwargs)
    if len(args) > 6:
        args[6] = new
    else:
        kwargs["groups"] = new
    return call.target, tuple(args), kwargs


register_op(F.conv1d, F.conv2d, F.conv3d, *_CONV_T, name="conv", rewrite=rewrite_conv)(conv)


# --- per-channel layers ---------------------------------------------------------------------------------------

def batch_norm(ctx: TraceContext, call: Call) -> T:
    """``F.batch_norm`` / ``F.instance_norm``: statistics, scale and shift per channel (dim 1)."""
    x = call.args[0]
    cmap = ctx.channel_map(x, 1)
    owner = None
    for pos, key, role in ((1, "running_mean", "stat"), (2, "running_var", "stat"), (3, "weight", "out"),
                           (4, "bias", "out")):
        ref = call.arg(pos, key)
        if isinstance(ref, Ref):
            ctx.union(ctx.param_ids(ref, 0, role), cmap)
            owner = owner or ctx.owner(ref)
    if owner is not None:
        ctx.record_use(owner, ctx.roots(cmap), ctx.roots(cmap), "norm")
    return ctx.ids(x)


register_op(F.batch_norm, F.instance_norm, name="batch_norm")(batch_norm)


def _norm_over_last(ctx: TraceContext, call: Call, k: int, params: list[Ref]) -> T:
    x = call.args[0]
    nd = len(ctx.shape(x))
    var = ctx.varying(ctx.ids(x))
    last = None
    for j in range(k):
        d = nd - k + j
        if d not in var:  # a normalised dim carrying no channels (spatial): its scale entries are never pruned
            continue
        cmap = ctx.channel_map(x, d)
        for p in params:
            ctx.union(ctx.param_ids(p, j, "out"), cmap)
        last = cmap
    owner = next((ctx.owner(p) for p in params if ctx.owner(p) is not None), None)
    if owner is not None and last is not None:
        ctx.record_use(owner, ctx.roots(last), ctx.roots(last), "norm")
    return ctx.ids(x)


def layer_norm(ctx: TraceContext, call: Call) -> T:
    """``F.layer_norm`` / ``F.rms_norm`` over the last dims (usually the channels): per-channel scale and shift
    (pruning changes the statistics slightly, as in every structured pruner)."""
    shape = call.arg(1, "normalized_shape")
    k = 1 if isinstance(shape, int) else len(shape)
    if call.target is F.rms_norm:
        params = [p for p in (call.arg(2, "weight"),) if isinstance(p, Ref)]
    else:
        params = [p for p in (call.arg(2, "weight"), call.arg(3, "bias")) if isinstance(p, Ref)]
    return _norm_over_last(ctx, call, k, params)


def rewrite_layer_norm(rctx: RewriteContext, call: Call) -> tuple[Any, tuple, dict] | None:
    shape = call.arg(1, "normalized_shape")
    k = 1 if isinstance(shape, int) else len(shape)
    x = call.args[0]
    if all(m is None for m in rctx.masks(x)[-k:]):
        return None
    new = tuple(rctx.new_shape(x)[-k:])
    args = list(call.args)
    kwargs = dict(call.kwargs)
    if len(args) > 1:
        args[1] = new
    else:
        kwargs["normalized_shape"] = new
    return call.target, tuple(args), kwargs


register_op(F.layer_norm, F.rms_norm, name="layer_norm", rewrite=rewrite_layer_norm)(layer_norm)


def group_norm(ctx: TraceContext, call: Call) -> T:
    """``F.group_norm``: channel slot i of every group is one unit, so every group keeps the same width; with one
    channel per group (instance-norm-like) channels are independent and the group count follows them."""
    x, groups = call.args[0], int(call.arg(1, "num_groups"))
    cmap = ctx.channel_map(x, 1)
    if groups != cmap.numel():
        slots = cmap.reshape(groups, -1)
        ctx.union(slots[:1], slots)
    owner = None
    for pos, key in ((2, "weight"), (3, "bias")):
        ref = call.arg(pos, key)
        if isinstance(ref, Ref):
            ctx.union(ctx.param_ids(ref, 0, "out"), cmap)
            owner = owner or ctx.owner(ref)
    if owner is not None:
        ctx.record_use(owner, ctx.roots(cmap), ctx.roots(cmap), "norm")
    return ctx.ids(x)


def rewrite_group_norm(rctx: RewriteContext, call: Call) -> tuple[Any, tuple, dict] | None:
    """One channel per group: the group count is the new channel count."""
    x, groups = call.args[0], int(call.arg(1, "num_groups"))
    if groups != rctx.shape(x)[1] or rctx.masks(x)[1] is None:
        return None
    args, kwargs = list(call.args), dict(call.kwargs)
    if len(args) > 1:
        args[1] = rctx.new_shape(x)[1]
    else:
        kwargs["num_groups"] = rctx.new_shape(x)[1]
    return call.target, tuple(args), kwargs


register_op(F.group_norm, name="group_norm", rewrite=rewrite_group_norm)(group_norm)


def prelu(ctx: TraceContext, call: Call) -> T:
    """``F.prelu`` with one slope per channel (dim 1)."""
    x, w = call.args[0], call.arg(1, "weight")
    if isinstance(w, Ref) and ctx.shape(w) and ctx.shape(w)[0] > 1:
        cmap = ctx.channel_map(x, 1)
        ctx.union(ctx.param_ids(w, 0, "out"), cmap)
        owner = ctx.owner(w)
        if owner is not None:
            ctx.record_use(owner, ctx.roots(cmap), ctx.roots(cmap), "norm")
    return ctx.ids(x)


register_op(F.prelu, torch.prelu, name="prelu")(prelu)


def embedding(ctx: TraceContext, call: Call) -> T:
    """``F.embedding(indices, W)``: the result's channels are W's columns (W's rows are the vocabulary)."""
    w = call.arg(1, "weight")
    out_map = ctx.param_ids(w, 1, "out")
    ctx.param_ids(w, 0, "index")
    owner = ctx.owner(w)
    if owner is not None:
        ctx.record_use(owner, None, out_map, "embedding")
    return _along_last(ctx, call.out, out_map)


register_op(F.embedding, torch.embedding, F.embedding_bag, name="embedding")(embedding)


# --- module rules ---------------------------------------------------------------------------------------------

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
            results.append(_along_last(ctx, out, ctx.roots(in_map)))
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


# --- einsum ---------------------------------------------------------------------------------------------------

def _einsum_letters(equation: str, shapes: list[tuple[int, ...]]) -> tuple[list[str], str]:
    """Operand subscripts and the output's, with ``...`` expanded to fresh capital letters."""
    equation = equation.replace(" ", "")
    lhs, _, rhs = equation.partition("->")
    terms = lhs.split(",")
    spare = iter("ABCDEFGHIJKLMNOPQRSTUVWXYZ")
    ellipsis = ""
    out_terms = []
    for term, shape in zip(terms, shapes, strict=True):
        if "..." in term:
            count = len(shape) - (len(term) - 3)
            if len(ellipsis) < count:
                ellipsis += "".join(next(spare) for _ in range(count - len(ellipsis)))
            term = term.replace("...", ellipsis[len(ellipsis) - count:])
        out_terms.append(term)
    if not rhs and "->" not in equation:
        letters = "".join(out_terms)
        rhs = "".join(sorted(c for c in set(letters) if letters.count(c) == 1))
    rhs = rhs.replace("...", ellipsis)
    return out_terms, rhs


def einsum(ctx: TraceContext, call: Call) -> T:
    """``torch.einsum``: a 2-D parameter operand is a dense layer (its contracted letter is the input's channels,
    its free letter the result's); two activations sharing batch letters (``bhid,bhjd->bhij``) are attention: each
    batch slice (head) is one unit; one operand whose letters are only permuted is a permute."""
    equation = call.args[0]
    operands = list(call.args[1]) if len(call.args) == 2 and isinstance(call.args[1], (list, tuple)) else \
        list(call.args[1:])
    if not isinstance(equation, str) or not all(isinstance(o, Ref) for o in operands):
        raise CannotFollow("einsum with non-tensor operands")
    terms, out = _einsum_letters(equation, [ctx.shape(o) for o in operands])
    out_shape = ctx.shape(call.out)
    if len(operands) == 1:
        term = terms[0]
        if sorted(term) == sorted(out) and len(set(term)) == len(term):
            return ctx.ids(operands[0]).permute(*[term.index(c) for c in out])
        raise CannotFollow("einsum reduction of one operand")
    if len(operands) != 2:
        raise CannotFollow("einsum of more than two operands")
    (a, b), (ta, tb) = operands, terms
    for w, tw, x, tx in ((b, tb, a, ta), (a, ta, b, tb)):
        if ctx.is_param(w) and len(tw) == 2:
            contracted = [c for c in tw if c in tx and c not in out]
            free = [c for c in tw if c in out and c not in tx]
            if len(contracted) == 1 and len(free) == 1:
                c, o = contracted[0], free[0]
                in_map = ctx.channel_map(x, tx.index(c))
                ctx.union(ctx.param_ids(w, tw.index(c), "in"), in_map)
                w_out = ctx.param_ids(w, tw.index(o), "out")
                owner = ctx.owner(w)
                if owner is not None:
                    ctx.record_use(owner, ctx.roots(in_map), w_out, "einsum")
                shape = [1] * len(out)
                shape[out.index(o)] = w_out.numel()
                return w_out.reshape(shape)
    batch = [c for c in ta if c in tb and c in out]
    if not batch or ctx.is_param(a) or ctx.is_param(b):
        raise CannotFollow(f"einsum '{equation}'")
    sizes = [out_shape[out.index(c)] for c in batch]

    def slices(ref: Ref, term: str) -> T:
        ids = ctx.expanded(ref).permute(*[term.index(c) for c in batch], *[i for i, c in enumerate(term)
                                                                          if c not in batch])
        return ids.reshape(int(np.prod(sizes)), -1)

    xa, xb = slices(a, ta), slices(b, tb)
    big = [i for i, s in enumerate(sizes) if s > 1]
    if len(big) == 1:
        heads = _attend(ctx, xa, [xb], (a, b, ta.index(batch[big[0]]) - len(ta)))
    else:
        ctx.union(xa[:, :1], xa)
        ctx.union(xa[:, :1], xb)
        heads = ctx.roots(xa[:, 0])
    ids = heads.reshape(sizes)
    order = sorted(range(len(batch)), key=lambda i: out.index(batch[i]))
    ids = ids.permute(*order)
    shape = [1] * len(out)
    for i in order:
        shape[out.index(batch[i])] = sizes[i]
    return ids.reshape(shape)


register_op(torch.einsum, name="einsum")(einsum)
