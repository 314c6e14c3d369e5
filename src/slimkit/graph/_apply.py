"""Removing units from a traced graph: slice every layer and parameter, and rewrite the shape arguments
(view/reshape sizes, split sizes, slice bounds, pad widths) so the smaller model runs exactly like the old one
minus the removed channels."""

from __future__ import annotations

import operator
from typing import Any

import numpy as np
import torch
import torch.fx as fx
from torch import nn

from slimkit._errors import TraceError
from slimkit.graph._graph import DependencyGraph
from slimkit.graph._handlers import _take, handler_for


def _dim_masks(graph: DependencyGraph, ids: torch.Tensor, shape: tuple[int, ...], removed: np.ndarray,
               node_name: str) -> list[np.ndarray | None]:
    """Per dim, which indices are removed (None: nothing along that dim). Checks the removed set is a union of
    whole slices, i.e. the tensor stays rectangular."""
    r = np.isin(graph.uf.find(ids.reshape(-1)), removed).reshape(tuple(ids.shape))
    if not r.any():
        return [None] * len(shape)
    masks: list[np.ndarray | None] = []
    recon = np.zeros_like(r)
    for d in range(r.ndim):
        if r.shape[d] == 1:
            masks.append(None)
            continue
        other = tuple(i for i in range(r.ndim) if i != d)
        md = r.all(axis=other) if other else r.copy()
        masks.append(md if md.any() else None)
        if md.any():
            recon |= md.reshape([-1 if i == d else 1 for i in range(r.ndim)])
    if not np.array_equal(recon, r):
        raise TraceError(f"pruning would cut a non-rectangular piece out of node '{node_name}': its channels are "
                         "coupled in a way slimkit cannot follow; skip the layers around it (skip=[...])")
    return masks


def _new_shape(shape: tuple[int, ...], masks: list[np.ndarray | None]) -> tuple[int, ...]:
    return tuple(s - int(m.sum()) if m is not None else s for s, m in zip(shape, masks, strict=True))


def _set_module(root: nn.Module, name: str, module: nn.Module) -> None:
    parent_name, _, attr = name.rpartition(".")
    parent = root.get_submodule(parent_name) if parent_name else root
    setattr(parent, attr, module)


def _new_index(mask: np.ndarray | None, p: int | None, size: int) -> int | None:
    if p is None or mask is None:
        return p
    q = p + size if p < 0 else p
    q = min(max(q, 0), size)
    return q - int(mask[:q].sum())


def apply_removal(graph: DependencyGraph, removed: np.ndarray) -> fx.GraphModule:
    """Remove the units ``removed`` (union-find roots) from ``graph.gm`` in place and return it."""
    removed = np.unique(np.asarray(removed, dtype=np.int64))
    gm = graph.gm
    masks: dict[fx.Node, Any] = {}
    for node in gm.graph.nodes:
        ids, shape = graph.ids.get(node), graph.shapes.get(node)
        if isinstance(ids, torch.Tensor):
            masks[node] = _dim_masks(graph, ids, shape, removed, node.name)
        elif isinstance(ids, tuple) and shape is not None:
            masks[node] = tuple(_dim_masks(graph, t, s, removed, node.name) if isinstance(t, torch.Tensor) else None
                                for t, s in zip(ids, shape, strict=True))
    for name, use in graph.uses.items():
        keep_in = None if use.in_map is None else ~np.isin(graph.uf.find(use.in_map), removed)
        keep_out = None if use.out_map is None else ~np.isin(graph.uf.find(use.out_map), removed)
        if (keep_in is not None and not keep_in.all()) or (keep_out is not None and not keep_out.all()):
            handler = handler_for(use.module)
            _set_module(gm, name, handler.prune(use.module, keep_in, keep_out))
    for target, ids in graph.attr_ids.items():
        param_masks = _dim_masks(graph, ids, tuple(ids.shape), removed, target)
        if all(m is None for m in param_masks):
            continue
        owner_name, _, attr = target.rpartition(".")
        owner = gm.get_submodule(owner_name) if owner_name else gm
        old = getattr(owner, attr)
        new = old.detach()
        for d, m in enumerate(param_masks):
            if m is not None:
                new = _take(new, d, ~m)
        setattr(owner, attr, nn.Parameter(new, requires_grad=old.requires_grad) if isinstance(
            old, nn.Parameter) else new)
    for node in list(gm.graph.nodes):
        _rewrite(graph, node, masks)
    gm.graph.eliminate_dead_code()
    gm.recompile()
    return gm


def _sizes_arg(node: fx.Node, start: int) -> tuple[list, bool]:
    rest = list(node.args[start:])
    if len(rest) == 1 and isinstance(rest[0], (tuple, list, torch.Size)):
        return list(rest[0]), True
    return rest, False


def _rewrite(graph: DependencyGraph, node: fx.Node, masks: dict) -> None:
    if node.op not in ("call_method", "call_function"):
        return
    target = node.target
    out_masks = masks.get(node)
    src = node.args[0] if node.args and isinstance(node.args[0], fx.Node) else None
    in_masks = masks.get(src) if src is not None else None
    if target in ("view", "reshape", "expand", torch.reshape):
        if not isinstance(out_masks, list) or all(m is None for m in out_masks):
            return
        sizes, packed = _sizes_arg(node, 1)
        new_sizes = _new_shape(graph.shapes[node], out_masks)
        sizes = [new_sizes[i] if out_masks[i] is not None and not (isinstance(a, int) and a == -1) else a
                 for i, a in enumerate(sizes)]
        node.args = (node.args[0], tuple(sizes)) if packed else (node.args[0], *sizes)
    elif target in ("unflatten", torch.unflatten):
        if not isinstance(out_masks, list) or all(m is None for m in out_masks):
            return
        dim = node.args[1] if len(node.args) > 1 else node.kwargs["dim"]
        sizes = list(node.args[2] if len(node.args) > 2 else node.kwargs["sizes"])
        dim = dim % len(graph.shapes[src])
        new_sizes = _new_shape(graph.shapes[node], out_masks)
        sizes = [new_sizes[dim + i] if out_masks[dim + i] is not None and a != -1 else a for i, a in enumerate(sizes)]
        node.args, node.kwargs = (node.args[0], dim, tuple(sizes)), {}
    elif target in ("chunk", "split", torch.chunk, torch.split):
        if not isinstance(in_masks, list) or not isinstance(out_masks, tuple):
            return
        dim = node.kwargs.get("dim", node.args[2] if len(node.args) > 2 else 0)
        dim = dim % len(graph.shapes[src])
        if in_masks[dim] is None:
            return
        parts = [(_new_shape(s, m) if m is not None else s)[dim] for s, m in zip(graph.shapes[node], out_masks,
                                                                                   strict=True)]
        if node.op == "call_method":
            node.target, node.args, node.kwargs = "split", (node.args[0], parts), {"dim": dim}
        else:
            node.target, node.args, node.kwargs = torch.split, (node.args[0], parts), {"dim": dim}
    elif target is operator.getitem and isinstance(in_masks, list):
        if all(m is None for m in in_masks):
            return
        index = node.args[1] if isinstance(node.args[1], tuple) else (node.args[1],)
        shape = graph.shapes[src]
        new_index, d = [], 0
        for k, item in enumerate(index):
            if item is Ellipsis:
                d = len(shape) - (len(index) - k - 1 - sum(1 for x in index[k + 1:] if x is None))
                new_index.append(item)
                continue
            if item is None:
                new_index.append(item)
                continue
            m = in_masks[d] if d < len(in_masks) else None
            if isinstance(item, slice) and m is not None:
                if item.step not in (None, 1):
                    raise TraceError(f"node '{node.name}' slices pruned channels with a step: skip its layers")
                item = slice(_new_index(m, item.start, shape[d]), _new_index(m, item.stop, shape[d]))
            elif isinstance(item, int) and m is not None:
                item = _new_index(m, item, shape[d])
            elif m is not None:
                raise TraceError(f"node '{node.name}' indexes pruned channels with {type(item).__name__}: "
                                 "skip its layers")
            new_index.append(item)
            d += 1
        node.args = (node.args[0], tuple(new_index) if isinstance(node.args[1], tuple) else new_index[0])
    elif target is torch.nn.functional.pad and isinstance(out_masks, list):
        amounts = list(node.args[1] if len(node.args) > 1 else node.kwargs["pad"])
        shape = graph.shapes[node]
        for k in range(len(amounts) // 2):
            d = len(shape) - 1 - k
            m = out_masks[d]
            if m is None:
                continue
            left, right = amounts[2 * k], amounts[2 * k + 1]
            amounts[2 * k] = left - int(m[:left].sum())
            amounts[2 * k + 1] = right - int(m[shape[d] - right:].sum())
        rest = node.args[2:]
        node.args = (node.args[0], tuple(amounts), *rest)
        node.kwargs = {k: v for k, v in node.kwargs.items() if k != "pad"}
