"""How channel ids flow through tensor functions and methods (``x + y``, ``x.view``, ``torch.cat``, ``F.pad``,
attention, ...), each rule next to the rewrite of the op's shape arguments.

Data-movement ops are replayed on the id tensors themselves, so cat/split/chunk offsets, flatten (each channel
owns H×W inputs), permutes, rolls and channel shuffles come out exactly. Ops that combine values position-wise
merge the ids they combine (broadcasting aside: a mask or a rotary table shared by every head couples nothing).
Reductions do not couple the reduced channels (a mean over channels just averages fewer of them). Anything
unknown is *opaque*: its channels are blocked, so an unsupported op makes pruning less thorough but never wrong.
"""

from __future__ import annotations

import operator
from typing import Any

import torch
import torch.nn.functional as F

from slimkit.graph._capture import Call, Ref
from slimkit.graph._context import CannotFollow, TraceContext
from slimkit.graph._rules import register_op

T = torch.Tensor


def choose_unit_dim(sizes: list[int]) -> int:
    """Which factor of a split channel dim is pruned. Two factors: the larger (``(groups, C/groups)`` of a
    channel shuffle prunes C/groups); three or more: the largest but the innermost (``(3, heads, head_dim)``
    of a fused qkv projection prunes whole heads). Ties go to the inner of the candidates."""
    if len(sizes) == 2:
        return 0 if sizes[0] > sizes[1] else 1
    best = 0
    for i, size in enumerate(sizes[:-1]):
        if size >= sizes[best]:
            best = i
    return best


def dim_groups(a: tuple[int, ...], b: tuple[int, ...]) -> list[tuple[list[int], list[int]]]:
    """Pair the dims of shape ``a`` with those of ``b`` (same numel) that a reshape merges or splits."""
    groups, i, j = [], 0, 0
    while i < len(a) or j < len(b):
        gi, gj = ([i] if i < len(a) else []), ([j] if j < len(b) else [])
        pa, pb = (a[i] if i < len(a) else 1), (b[j] if j < len(b) else 1)
        i, j = i + 1, j + 1
        while pa != pb:
            if pa < pb and i < len(a):
                gi.append(i)
                pa *= a[i]
                i += 1
            elif j < len(b):
                gj.append(j)
                pb *= b[j]
                j += 1
            else:
                raise ValueError("shapes do not pair")
        groups.append((gi, gj))
    return groups


def _first(call: Call) -> Ref:
    refs = call.refs()
    if not refs:
        raise CannotFollow("no tensor argument")
    return refs[0]


def _single_out(call: Call) -> Ref:
    if not isinstance(call.out, Ref):
        raise CannotFollow("expected one tensor result")
    return call.out


# --- position-wise ops ----------------------------------------------------------------------------------------

def _aligned(ctx: TraceContext, ref: Ref, nd: int) -> tuple[T, tuple[int, ...]]:
    ids, shape = ctx.ids(ref), ctx.shape(ref)
    pad = nd - len(shape)
    if pad < 0:
        raise CannotFollow("operand has more dims than the result")
    return ids.reshape([1] * pad + list(ids.shape)), (1,) * pad + tuple(shape)


def _combine(ctx: TraceContext, call: Call, residual: bool) -> T:
    out = _single_out(call)
    out_shape = ctx.shape(out)
    nd = len(out_shape)
    ops = [_aligned(ctx, r, nd) for r in call.refs()]
    if not ops:
        raise CannotFollow("no tensor operand")
    full = [i for i, (_, s) in enumerate(ops) if s == tuple(out_shape)]
    if not full:  # every operand broadcasts somewhere: the one carrying the most channel variation leads
        lead = max(range(len(ops)), key=lambda i: (len(ctx.varying(ops[i][0])),
                                                   sum(a == b for a, b in zip(ops[i][1], out_shape, strict=True))))
        full = [lead]
    ref_ids = ops[full[0]][0]
    if residual and len(full) > 1:  # two different channel sets added: a residual stream (not x + f(x) of one)
        varying = [set(ctx.varying(ops[i][0])) for i in full]
        for a in range(len(full)):
            for b in range(a + 1, len(full)):
                ra, rb = torch.broadcast_tensors(ctx.roots(ops[full[a]][0]), ctx.roots(ops[full[b]][0]))
                if varying[a] & varying[b] and not torch.equal(ra, rb):
                    ctx.mark_residual(ref_ids)
    for i in full[1:]:
        ctx.union(ref_ids, ops[i][0])
    roots = ctx.roots(ref_ids)
    for i, (ids_b, s_b) in enumerate(ops):
        if i in full:
            continue
        broadcast = {d for d in range(nd) if s_b[d] == 1 and out_shape[d] > 1}
        var = ctx.varying(roots)
        if not broadcast & set(var):
            ctx.union(roots, ids_b)
            continue
        # ``b`` is shared by several units of the full operand (a mask or rotary table shared by all heads, a
        # per-head scale shared by every channel of a head): keep the outermost varying dim, couple the rest.
        keep = min(var)
        roots = ctx.merge_along(roots, [d for d in var if d != keep])
        if keep in broadcast:
            ctx.block(ids_b)
        else:
            ctx.union(roots, ids_b)
        roots = ctx.roots(roots)
    return ctx.roots(roots)


def elementwise(ctx: TraceContext, call: Call) -> T:
    """Position-wise ops (activations, ``mul``, ``where``, comparisons): tensor operands' ids at a position are
    one unit; an operand broadcast along a dim where the others' units differ couples nothing along it."""
    return _combine(ctx, call, residual=False)


def add(ctx: TraceContext, call: Call) -> T:
    """``+`` / ``-``: as :func:`elementwise`; two operands that both carry channels mark a residual stream."""
    return _combine(ctx, call, residual=True)


def passthrough(ctx: TraceContext, call: Call) -> T:
    """``x.float()``, ``x.contiguous()``, ``x.to(y)``, dropout, ``zeros_like(x)``: the first tensor's ids."""
    return ctx.ids(_first(call))


def constant(ctx: TraceContext, call: Call) -> Any:
    """Tensor factories (``arange``, ``zeros``, ``x.new_ones``): blocked ids; their size never follows pruning."""
    return ctx.blocked_like(call.out)


_ACTIVATIONS = [
    torch.relu, torch.relu_, torch.sigmoid, torch.tanh, torch.exp, torch.log, torch.abs, torch.neg, torch.sqrt,
    torch.rsqrt, torch.sin, torch.cos, torch.erf, torch.reciprocal, torch.square, torch.sign, torch.clamp,
    torch.clip, torch.floor, torch.ceil, torch.round, torch.log1p, torch.expm1, torch.logical_not, torch.isnan,
    torch.isinf, torch.nan_to_num, torch.sigmoid_,
    F.relu, F.relu6, F.gelu, F.silu, F.hardswish, F.hardsigmoid, F.sigmoid, F.tanh, F.leaky_relu, F.elu,
    F.hardtanh, F.mish, F.softplus, F.selu, F.celu, F.softsign, F.logsigmoid, F.tanhshrink,
    F.threshold, F.hardshrink, F.softshrink,
]
_ACTIVATION_METHODS = [
    "relu", "relu_", "sigmoid", "sigmoid_", "tanh", "tanh_", "exp", "exp_", "log", "abs", "abs_", "neg", "neg_",
    "sqrt", "sqrt_", "rsqrt", "rsqrt_", "sin", "cos", "erf", "reciprocal", "square", "sign", "clamp", "clamp_",
    "clip", "clamp_min", "clamp_max", "clamp_min_", "clamp_max_", "floor", "ceil", "round", "log1p", "expm1",
    "logical_not", "isnan", "isinf", "nan_to_num", "__neg__", "__abs__", "__invert__", "bitwise_not", "pow_",
    "masked_fill", "masked_fill_", "fill_", "zero_", "__eq__", "__ne__", "__lt__", "__le__", "__gt__", "__ge__",
    "eq", "ne", "lt", "le", "gt", "ge", "__and__", "__or__", "__xor__", "logical_and", "logical_or", "logical_xor",
    "bitwise_and", "bitwise_or", "__mul__", "__rmul__", "mul", "mul_", "__imul__", "__truediv__", "__rtruediv__",
    "__itruediv__", "div", "div_", "true_divide", "__pow__", "__rpow__", "pow", "__floordiv__", "floor_divide",
    "__mod__", "remainder", "fmod", "maximum", "minimum", "fmax", "fmin", "lerp", "lerp_",
    "addcmul", "addcdiv", "where", "xlogy", "copysign", "hypot", "atan2",
]
_ELEMENTWISE_FUNCS = [
    torch.mul, torch.multiply, torch.div, torch.divide, torch.true_divide, torch.pow, torch.maximum, torch.minimum,
    torch.fmax, torch.fmin, torch.where, torch.masked_fill, torch.lerp, torch.addcmul, torch.addcdiv, torch.eq,
    torch.ne, torch.lt, torch.le, torch.gt, torch.ge, torch.logical_and, torch.logical_or, torch.floor_divide,
    torch.remainder, torch.fmod, torch.xlogy, torch.copysign, torch.hypot, torch.atan2, operator.mul,
    operator.truediv, F.dropout, F.alpha_dropout, F.feature_alpha_dropout, F.dropout1d, F.dropout2d, F.dropout3d,
]
register_op(*_ACTIVATIONS, *_ELEMENTWISE_FUNCS, *[getattr(T, m) for m in _ACTIVATION_METHODS if hasattr(T, m)],
            name="elementwise")(elementwise)
register_op(torch.add, torch.sub, torch.subtract, torch.rsub, operator.add, operator.sub, T.add, T.add_, T.sub,
            T.sub_, T.__add__, T.__radd__, T.__iadd__, T.__sub__, T.__rsub__, T.__isub__, T.subtract,
            name="add")(add)
register_op(T.contiguous, T.clone, torch.clone, T.detach, torch.detach, T.float, T.double, T.half, T.bfloat16,
            T.to, T.type_as, T.type, T.cpu, T.requires_grad_, T.data, T.long, T.int, T.bool, T.short, T.byte,
            T.char, torch.zeros_like, torch.ones_like, torch.empty_like, torch.full_like, torch.rand_like,
            torch.randn_like, torch.randint_like,             name="passthrough")(passthrough)
register_op(torch.arange, torch.zeros, torch.ones, torch.full, torch.empty, torch.tensor, torch.as_tensor,
            torch.eye, torch.linspace, torch.logspace, torch.rand, torch.randn, torch.randint, torch.randperm,
            torch.from_numpy, torch.triu_indices, torch.tril_indices, torch.empty_strided, torch.scalar_tensor,
            T.new_zeros, T.new_ones, T.new_full, T.new_empty, T.new_tensor,
            name="constant")(constant)


# --- reductions and scans -------------------------------------------------------------------------------------

def _dims_arg(call: Call, position: int = 1, keyword: str = "dim", ndim: int = 0) -> list[int] | None:
    dims = call.arg(position, keyword, None)
    if dims is None or isinstance(dims, Ref):
        return None
    if isinstance(dims, (list, tuple)):
        return sorted({int(d) % max(ndim, 1) for d in dims}) if dims else None
    if isinstance(dims, int):
        return [dims % max(ndim, 1)]
    raise CannotFollow(f"reduction over {dims!r}")


def reduction(ctx: TraceContext, call: Call) -> Any:
    """``sum``/``mean``/``amax``/``var``/``norm`` over ``dim``: when the input's units vary only along the reduced
    dims the result carries no channels (pruning changes its value, not its shape); otherwise the reduced dims are
    merged within each kept slice."""
    x = _first(call)
    nd = len(ctx.shape(x))
    dims = _dims_arg(call, 1, "dim", nd)
    ids = ctx.ids(x)
    var = ctx.varying(ids)
    reduced = list(range(nd)) if dims is None else dims
    if set(var) <= set(reduced):
        return ctx.blocked_like(call.out)
    merged = ctx.merge_along(ids, reduced)
    outs = call.outs()
    result_ndim = len(ctx.shape(outs[0]))
    if result_ndim == nd:
        for d in reduced:
            merged = merged.narrow(d, 0, 1)
    else:
        for d in reversed(reduced):
            merged = merged.narrow(d, 0, 1).squeeze(d)
    if isinstance(call.out, tuple):
        return tuple(merged for _ in call.out)
    return merged


register_op(torch.sum, torch.mean, torch.amax, torch.amin, torch.var, torch.std, torch.norm, torch.logsumexp,
            torch.prod, torch.any, torch.all, torch.argmax, torch.argmin, torch.max, torch.min, torch.var_mean,
            torch.std_mean, torch.count_nonzero, torch.median, torch.nansum, torch.nanmean,
            T.sum, T.mean, T.amax, T.amin, T.var, T.std, T.norm, T.logsumexp, T.prod, T.any, T.all, T.argmax,
            T.argmin, T.max, T.min, T.count_nonzero, T.median, T.nansum, T.nanmean,
            torch.linalg.vector_norm, name="reduction")(reduction)


def along(ctx: TraceContext, call: Call) -> Any:
    """Shape-preserving ops along one dim (softmax, cumsum, sort, normalize): ids unchanged (pruning along the dim
    renormalises over fewer entries)."""
    ids = ctx.ids(_first(call))
    if isinstance(call.out, tuple):
        return tuple(ids for _ in call.out)
    return ids


register_op(torch.softmax, torch.log_softmax, F.softmax, F.log_softmax, F.softmin, F.normalize, torch.cumsum,
            torch.cumprod, torch.sort, torch.argsort, torch.cummax, torch.cummin, torch.logcumsumexp,
            T.softmax, T.log_softmax, T.cumsum, T.cumprod, T.sort, T.argsort, T.cumsum_, name="along")(along)
