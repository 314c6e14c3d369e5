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
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from slimkit._errors import TraceError
from slimkit.graph._capture import Call, Ref
from slimkit.graph._context import CannotFollow, TraceContext
from slimkit.graph._rules import RewriteContext, register_op

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


# --- data movement --------------------------------------------------------------------------------------------

_RESHAPES = {T.view, T.reshape, T.flatten, T.unflatten, torch.reshape, torch.flatten, torch.unflatten,
             T.view_as, T.reshape_as}


def _store(ctx: TraceContext, result: Any) -> Any:
    if isinstance(result, torch.Tensor):
        return result
    if isinstance(result, (tuple, list)):
        return tuple(_store(ctx, r) for r in result)
    return None


def movement(ctx: TraceContext, call: Call) -> Any:
    """Data movement (view, permute, cat, split, roll, expand, ...): the op replayed on the ids. A reshape that
    merges or splits channel dims keeps at most one varying factor, so the pruned tensor reshapes alike."""
    data: Sequence[int | str] = (0, "input", "tensors") if call.target in (torch.cat, torch.concat, torch.concatenate,
                                                                             torch.stack, torch.hstack, torch.vstack,
                                                                             torch.column_stack) else (0, "input")
    result = ctx.replay(call, data)
    if call.target in _RESHAPES and isinstance(result, torch.Tensor) and isinstance(call.out, Ref):
        ctx.defer_reshape(call.args[0], call.out)
    return _store(ctx, result)


def split(ctx: TraceContext, call: Call) -> Any:
    """``split``/``chunk`` into equal parts: slot i of every part is one unit, so the parts stay equal (the code
    keeps calling ``chunk(2)`` or ``split(size)``); the parts are replayed on the ids."""
    result = ctx.replay(call, (0, "input"))
    section = call.arg(1, "split_size_or_sections", call.kwargs.get("split_size", call.kwargs.get("chunks")))
    if isinstance(result, (tuple, list)) and isinstance(section, int) and len(result) > 1:
        src = call.args[0]
        dim = call.arg(2, "dim", 0) % len(ctx.shape(src))
        if dim in ctx.varying(ctx.ids(src)):
            for part in result[1:]:
                ctx.union(result[0].narrow(dim, 0, part.shape[dim]), part)
    return _store(ctx, result)


def _sizes(call: Call, start: int) -> tuple[list, bool]:
    rest = list(call.args[start:])
    if len(rest) == 1 and isinstance(rest[0], (tuple, list, torch.Size)):
        return list(rest[0]), True
    if not rest and "size" in call.kwargs:
        return list(call.kwargs["size"]), True
    if not rest and "shape" in call.kwargs:
        return list(call.kwargs["shape"]), True
    return rest, False


def rewrite_sizes(rctx: RewriteContext, call: Call) -> tuple[Any, tuple, dict] | None:
    """view/reshape/expand: sizes of pruned dims become their new sizes (-1 stays -1)."""
    out = call.out
    if not isinstance(out, Ref):
        return None
    masks = rctx.masks(out)
    if all(m is None for m in masks):
        return None
    new = rctx.new_shape(out)
    sizes, packed = _sizes(call, 1)
    sizes = [new[i] if masks[i] is not None and not (isinstance(a, int) and a == -1) else a
             for i, a in enumerate(sizes)]
    kwargs = {k: v for k, v in call.kwargs.items() if k not in ("size", "shape")}
    if packed:
        return call.target, (call.args[0], tuple(sizes)), kwargs
    return call.target, (call.args[0], *sizes), kwargs


def rewrite_unflatten(rctx: RewriteContext, call: Call) -> tuple[Any, tuple, dict] | None:
    out = call.out
    masks = rctx.masks(out)
    if all(m is None for m in masks):
        return None
    src = call.args[0]
    dim = call.arg(1, "dim") % len(rctx.shape(src))
    sizes = list(call.arg(2, "sizes"))
    new = rctx.new_shape(out)
    sizes = [new[dim + i] if masks[dim + i] is not None and a != -1 else a for i, a in enumerate(sizes)]
    return call.target, (src, dim, tuple(sizes)), {}


def rewrite_split(rctx: RewriteContext, call: Call) -> tuple[Any, tuple, dict] | None:
    """split/chunk along a pruned dim: the new part sizes (an int if they are all equal, as the code had)."""
    src = call.args[0]
    if not isinstance(call.out, tuple):
        return None
    dim = call.arg(2, "dim", 0) % len(rctx.shape(src))
    if rctx.masks(src)[dim] is None:
        return None
    parts = [rctx.new_shape(r)[dim] for r in call.out]
    section = call.arg(1, "split_size_or_sections", call.kwargs.get("split_size", call.kwargs.get("chunks")))
    if call.name.endswith("chunk"):
        if len(set(parts[:-1])) <= 1 and parts[-1] <= parts[0]:
            return None  # the same chunk count still splits the pruned dim right
        return torch.split, (src, parts), {"dim": dim}
    if isinstance(section, int) and len(set(parts[:-1])) <= 1 and parts[-1] <= parts[0]:
        return call.target, (src, parts[0]), {"dim": dim}
    return call.target, (src, parts), {"dim": dim}


def rewrite_narrow(rctx: RewriteContext, call: Call) -> tuple[Any, tuple, dict] | None:
    src = call.args[0]
    dim = call.arg(1, "dim") % len(rctx.shape(src))
    mask = rctx.masks(src)[dim]
    if mask is None:
        return None
    start, length = call.arg(2, "start"), call.arg(3, "length")
    size = rctx.shape(src)[dim]
    new_start = _new_index(mask, start, size)
    new_stop = _new_index(mask, start + length, size)
    return call.target, (src, dim, new_start, new_stop - new_start), {}


def _new_index(mask: np.ndarray | None, p: int | None, size: int) -> int | None:
    if p is None or mask is None:
        return p
    q = p + size if p < 0 else p
    q = min(max(q, 0), size)
    return q - int(mask[:q].sum())


register_op(T.view, T.reshape, torch.reshape, T.expand, name="reshape", rewrite=rewrite_sizes)(movement)
register_op(T.unflatten, torch.unflatten, name="unflatten", rewrite=rewrite_unflatten)(movement)
register_op(T.split, torch.split, T.chunk, torch.chunk, T.tensor_split, torch.tensor_split, T.split_with_sizes,
            name="split", rewrite=rewrite_split)(split)
register_op(T.narrow, torch.narrow, name="narrow", rewrite=rewrite_narrow)(movement)
register_op(T.flatten, torch.flatten, T.view_as, T.reshape_as, T.expand_as, T.permute, torch.permute,
            T.transpose, torch.transpose, T.swapaxes, torch.swapaxes, T.swapdims, torch.swapdims, T.movedim,
            torch.movedim, T.moveaxis, torch.moveaxis, T.squeeze, torch.squeeze, T.unsqueeze, torch.unsqueeze,
            T.repeat, T.tile, torch.tile, T.repeat_interleave, torch.repeat_interleave, T.unbind, torch.unbind,
            torch.cat, torch.concat, torch.concatenate, torch.stack, torch.hstack, torch.vstack, T.select,
            torch.select, T.flip, torch.flip, T.roll, torch.roll, T.t, torch.t, T.T, T.mT, T.mH, T.H,
            T.index_select, torch.index_select, T.gather, torch.gather, torch.take_along_dim, T.take_along_dim,
            T.unfold, T.diagonal, torch.diagonal, T.rot90, torch.rot90, F.pixel_shuffle, F.pixel_unshuffle,
            torch.pixel_shuffle, torch.pixel_unshuffle, torch.channel_shuffle, F.channel_shuffle,
            torch.native_channel_shuffle, T.ravel, torch.ravel,
            name="movement")(movement)


# --- indexing -------------------------------------------------------------------------------------------------

def _index_tuple(index: Any) -> tuple:
    return index if isinstance(index, tuple) else (index,)


def _tensor_index_dims(ctx: TraceContext, x: Ref, index: tuple) -> list[int]:
    """Dims of ``x`` indexed by a tensor (advanced indexing)."""
    nd = len(ctx.shape(x))
    dims, d = [], 0
    for k, item in enumerate(index):
        if item is Ellipsis:
            d = nd - sum(1 for it in index[k + 1:] if it is not None)
            continue
        if item is None:
            continue
        if isinstance(item, (Ref, list)):
            info_dims = 1
            if isinstance(item, Ref) and ctx.info(item).dtype == torch.bool:
                info_dims = len(ctx.shape(item))
            dims.extend(range(d, d + info_dims))
            d += info_dims
            continue
        d += 1
    return dims


def getitem(ctx: TraceContext, call: Call) -> Any:
    """``x[...]``: slices and ints replayed on the ids; a dim indexed by a tensor is never pruned (merged)."""
    x = call.args[0]
    dims = _tensor_index_dims(ctx, x, _index_tuple(call.args[1]))
    var = set(ctx.varying(ctx.ids(x)))
    if dims and var & set(dims):
        ctx.set_ids(x, ctx.merge_along(ctx.ids(x), [d for d in dims if d in var]))
    return _store(ctx, ctx.replay(call, (0,)))


def rewrite_getitem(rctx: RewriteContext, call: Call) -> tuple[Any, tuple, dict] | None:
    src, index = call.args[0], call.args[1]
    masks = rctx.masks(src)
    if all(m is None for m in masks):
        return None
    items = _index_tuple(index)
    shape = rctx.shape(src)
    new_index, d = [], 0
    for k, item in enumerate(items):
        if item is Ellipsis:
            d = len(shape) - sum(1 for x in items[k + 1:] if x is not None)
            new_index.append(item)
            continue
        if item is None:
            new_index.append(item)
            continue
        m = masks[d] if d < len(masks) else None
        if isinstance(item, slice) and m is not None:
            if item.step not in (None, 1):
                raise TraceError(f"{call.where()} slices pruned channels with a step: skip its layers")
            item = slice(_new_index(m, item.start, shape[d]), _new_index(m, item.stop, shape[d]))
        elif isinstance(item, int) and m is not None:
            item = _new_index(m, item, shape[d])
        elif m is not None:
            raise TraceError(f"{call.where()} indexes pruned channels with {type(item).__name__}: skip its layers")
        new_index.append(item)
        d += 1
    return call.target, (src, tuple(new_index) if isinstance(index, tuple) else new_index[0]), {}


register_op(T.__getitem__, operator.getitem, name="getitem", rewrite=rewrite_getitem)(getitem)


def setitem(ctx: TraceContext, call: Call) -> Any:
    """``x[...] = v``: the written region's ids are merged with ``v``'s; the result is ``x`` with its ids."""
    x, index = call.args[0], call.args[1]
    value = call.args[2] if len(call.args) > 2 else None
    ids = ctx.expanded(x)
    dims = _tensor_index_dims(ctx, x, _index_tuple(index))
    var = set(ctx.varying(ids))
    if dims and var & set(dims):
        ids = ctx.merge_along(ids, [d for d in dims if d in var])

    def real(obj: Any) -> Any:
        if isinstance(obj, Ref):
            found = ctx.data(obj)
            if found is None:
                raise CannotFollow("a float tensor used as an index")
            return found
        if isinstance(obj, tuple):
            return tuple(real(o) for o in obj)
        return obj

    region = ids[real(index)]
    if isinstance(value, Ref):
        v = ctx.ids(value)
        try:
            ctx.union(region, v)
        except RuntimeError as error:
            raise CannotFollow(f"cannot broadcast the written value: {error}") from None
    return ctx.roots(ids)


register_op(T.__setitem__, name="setitem")(setitem)


# --- padding --------------------------------------------------------------------------------------------------

def pad(ctx: TraceContext, call: Call) -> T:
    """``F.pad`` (constant): padded channels get new ids (they merge with whatever they are added to, as in the
    ResNet option-A shortcut); padded spatial borders inherit their channel's id."""
    src = call.args[0]
    real_shape = ctx.shape(src)
    ids = ctx.ids(src)
    amounts = list(call.arg(1, "pad"))
    mode = call.arg(2, "mode", "constant")
    if mode != "constant":
        var = set(ctx.varying(ids))
        if any(len(real_shape) - 1 - k in var for k in range(len(amounts) // 2)):
            raise CannotFollow(f"'{mode}' padding of a pruned dim")
        return ids
    for k in range(len(amounts) // 2):
        d = len(real_shape) - 1 - k
        left, right = int(amounts[2 * k]), int(amounts[2 * k + 1])
        if left == 0 and right == 0:
            continue
        varying = d in ctx.varying(ids)
        if not varying:
            continue
        if left < 0 or right < 0:
            raise CannotFollow("negative padding (cropping) of a pruned dim")
        ids = ids.expand(tuple(real_shape)) if ids.shape[d] == 1 else ids
        parts = []
        for count in (left, right):
            shape = list(ids.shape)
            shape[d] = count
            other = [s if i == d else 1 for i, s in enumerate(shape)]
            parts.append(ctx.fresh(count).reshape(other).expand(shape))
        ids = torch.cat([parts[0], ids, parts[1]], dim=d)
    return ids


def rewrite_pad(rctx: RewriteContext, call: Call) -> tuple[Any, tuple, dict] | None:
    out = call.out
    masks = rctx.masks(out)
    amounts = list(call.arg(1, "pad"))
    shape = rctx.shape(out)
    changed = False
    for k in range(len(amounts) // 2):
        d = len(shape) - 1 - k
        m = masks[d]
        if m is None:
            continue
        left, right = amounts[2 * k], amounts[2 * k + 1]
        amounts[2 * k] = left - int(m[:left].sum())
        amounts[2 * k + 1] = right - int(m[shape[d] - right:].sum())
        changed = True
    if not changed:
        return None
    kwargs = {k: v for k, v in call.kwargs.items() if k != "pad"}
    return call.target, (call.args[0], tuple(amounts), *call.args[2:]), kwargs


register_op(F.pad, torch.constant_pad_nd, rewrite=rewrite_pad, name="pad")(pad)


# --- spatial ops ----------------------------------------------------------------------------------------------

def spatial(ctx: TraceContext, call: Call) -> Any:
    """Pooling / interpolation over the dims after the channel dim 1: channels kept, spatial ids merged."""
    src = _first(call)
    cmap = ctx.channel_map(src, 1)
    outs = call.outs()
    results = []
    for out in outs:
        shape = [1] * len(ctx.shape(out))
        shape[1] = cmap.numel()
        results.append(cmap.reshape(shape))
    return tuple(results) if isinstance(call.out, tuple) else results[0]


register_op(F.max_pool1d, F.max_pool2d, F.max_pool3d, F.avg_pool1d, F.avg_pool2d, F.avg_pool3d,
            F.adaptive_avg_pool1d, F.adaptive_avg_pool2d, F.adaptive_avg_pool3d, F.adaptive_max_pool1d,
            F.adaptive_max_pool2d, F.adaptive_max_pool3d, F.interpolate, F.upsample, F.lp_pool2d, F.lp_pool1d,
            torch.max_pool1d, torch.max_pool2d, torch.avg_pool1d, torch.adaptive_avg_pool1d,
            torch.adaptive_max_pool1d, F.max_pool2d_with_indices if hasattr(F, "max_pool2d_with_indices")
            else F.max_pool2d, torch._C._nn.avg_pool2d, torch._C._nn.adaptive_avg_pool2d,
            torch._C._nn.upsample_nearest2d, torch._C._nn.upsample_bilinear2d, name="spatial")(spatial)
