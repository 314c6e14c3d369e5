"""Rules for ops that own channels through parameters: ``F.linear``, convolutions, norms, embeddings, PReLU and
GPT-2's ``addmm`` projection (attention is in ``_attention.py``, module size attributes in ``_modules.py``).

A parameter's dims are pruned independently: ``F.linear(x, W, b)`` ties W's columns to x's channels and W's rows
to the result's channels (and to b), whichever module owns W, so a tied LM head or a projection written with
``F.linear`` on someone else's weight is followed like an ``nn.Linear``.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F

from slimkit.graph._capture import Call, Ref
from slimkit.graph._context import CannotFollow, TraceContext
from slimkit.graph._rules import RewriteContext, register_op

T = torch.Tensor


def along_dim(ctx: TraceContext, out: Ref, ids: T, dim: int = -1) -> T:
    """1-D ids placed along ``dim`` of a result (size 1 elsewhere)."""
    shape = [1] * len(ctx.shape(out))
    shape[dim] = ids.numel()
    return ids.reshape(shape)


# --- dense layers ---------------------------------------------------------------------------------------------

def linear(ctx: TraceContext, call: Call) -> T:
    """``F.linear(x, W, b)``: x's last-dim channels are W's columns, the result's channels are W's rows and b."""
    x, w, b = call.arg(0, "input"), call.arg(1, "weight"), call.arg(2, "bias")
    in_map = ctx.channel_map(x, -1)
    ctx.join_param(w, 1, "in", in_map)
    w_out = ctx.param_ids(w, 0, "out")
    if isinstance(b, Ref):
        ctx.join_param(b, 0, "out", w_out)
    owner = ctx.owner(w)
    if owner is not None:
        ctx.record_use(owner, ctx.roots(in_map), w_out, "linear")
    return along_dim(ctx, call.out, w_out)


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
            ctx.union(ctx.ids(b), along_dim(ctx, call.out, w_out))
    owner = ctx.owner(w)
    if owner is not None:
        ctx.record_use(owner, ctx.roots(in_map), w_out, "linear-t")
    return along_dim(ctx, call.out, w_out)


register_op(torch.addmm, T.addmm, name="addmm")(addmm)


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
        ctx.join_param(w, in_dim, "in", in_map)
        out_map, kind = ctx.param_ids(w, out_dim, "out"), "conv"
    elif not transposed and groups == cin and cout % cin == 0:
        out_map, kind = in_map.repeat_interleave(cout // cin), "depthwise"
        ctx.join_param(w, 0, "out", out_map)
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
        ctx.join_param(b, 0, "out", out_map)
    owner = ctx.owner(w)
    if owner is not None:
        ctx.record_use(owner, ctx.roots(in_map), out_map, kind, groups=groups)
    return along_dim(ctx, call.out, out_map, 1)


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
            ctx.join_param(ref, 0, role, cmap)
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
    return along_dim(ctx, call.out, out_map)


register_op(F.embedding, torch.embedding, F.embedding_bag, name="embedding")(embedding)
