"""Attention: scaled-dot-product attention and q·kᵀ / p·v matmuls (whole heads; GQA as whole key/value groups or
as query heads within groups), ``baddbmm`` scores, and ``einsum`` (a dense layer on a parameter, attention between
activations, a permute).

Heads are found where they are used, not where they are declared: everything in one batch slice of an attention
product is one unit, so q/k/v rows and output-projection columns of a head are pruned together whatever the code
calls them. Key/value heads repeated for GQA (``repeat_kv``, or SDPA's ``enable_gqa``) are recognised by their
repeated ids.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from slimkit.analysis._einsum import einsum_letters, einsum_operands
from slimkit.graph._capture import Call, Ref
from slimkit.graph._context import AttentionSite, CannotFollow, TraceContext
from slimkit.graph._layers import along_dim
from slimkit.graph._rules import register_op

T = torch.Tensor


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
        return along_dim(ctx, call.out, w_out)
    if ctx.is_param(a) and len(sa) == 2 and len(sb) >= 2:
        in_map = ctx.channel_map(b, -2)
        w_in, w_out = ctx.param_ids(a, 1, "in"), ctx.param_ids(a, 0, "out")
        ctx.union(w_in, in_map)
        return along_dim(ctx, call.out, w_out, -2)
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


def einsum(ctx: TraceContext, call: Call) -> T:
    """``torch.einsum``: a 2-D parameter operand is a dense layer (its contracted letter is the input's channels,
    its free letter the result's); two activations sharing batch letters (``bhid,bhjd->bhij``) are attention: each
    batch slice (head) is one unit; one operand whose letters are only permuted is a permute."""
    equation = call.args[0]
    operands = einsum_operands(call.args)
    if not isinstance(equation, str) or not all(isinstance(o, Ref) for o in operands):
        raise CannotFollow("einsum with non-tensor operands")
    terms, out = einsum_letters(equation, [ctx.shape(o) for o in operands])
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
