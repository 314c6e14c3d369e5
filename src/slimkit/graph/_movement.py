"""Data movement (view, permute, cat, split, roll, expand, indexing, padding, pooling): each op replayed on the
id tensors themselves, so cat/split/chunk offsets, flatten (each channel owns H×W inputs), permutes, rolls and
channel shuffles come out exactly; next to each, the rewrite of its shape arguments after pruning."""

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
from slimkit.graph._ops import _first
from slimkit.graph._rules import RewriteContext, register_op

T = torch.Tensor


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
