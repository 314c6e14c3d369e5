"""Tracing a model (torch.fx) into a channel-dependency graph: which channels must be pruned together.

Each tensor in the traced graph gets an id tensor: one id per element, stored compressed (size 1 along dims where
the ids do not vary). Layers that own channels (Conv, Linear, ...) create ids for their outputs; ops combine them
(an add merges the ids it adds, a concat concatenates them, a view reshapes them), see ``_ops.py`` and
``_handlers.py``. Ids merged into one union-find root form one *unit*: the channels that vanish together
(a conv filter, its BN entry, the next layer's input slice, every tensor it is added to...). Units with the same
set of member layers form a :class:`ChannelGroup` (a "layer" for ratios and criteria).

Building the graph runs the model once at the example input's size (use batch 1); nothing else touches data.
"""

from __future__ import annotations

import copy
import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
import torch.fx as fx
from torch import nn

from slimkit._errors import TraceError
from slimkit._select import matches
from slimkit.graph._handlers import handler_for
from slimkit.graph._ops import FUNCTION_RULES, METHOD_RULES, choose_unit_dim, dim_groups
from slimkit.graph._unionfind import UnionFind

log = logging.getLogger(__name__)


@dataclass
class ModuleUse:
    """One layer that owns parameters along channel dims: ids of its input and output channels (1-D)."""

    name: str
    module: nn.Module
    in_map: torch.Tensor | None
    out_map: torch.Tensor | None
    extra: dict[str, Any] = field(default_factory=dict)


@dataclass
class ChannelGroup:
    """Units (coupled channel sets) that touch the same layers; ``name`` is the first layer whose outputs they are."""

    name: str
    units: np.ndarray
    members: tuple[tuple[str, str], ...]  # (layer name, "in" | "out")
    sizes: np.ndarray  # channels per unit in the owning layer's output (for reporting)


class _Tracer(fx.Tracer):
    def __init__(self, leaves: Sequence[str]) -> None:
        super().__init__()
        self.leaves = tuple(leaves)
        self.stack: list[str] = []
        self.failed_in: list[str] = []

    def is_leaf_module(self, m: nn.Module, qualname: str) -> bool:
        handler = handler_for(m)
        if handler is not None and handler.leaf:
            return True
        if any(matches(qualname, p) for p in self.leaves):
            return True
        return super().is_leaf_module(m, qualname)

    def call_module(self, m, forward, args, kwargs):
        self.stack.append(self.path_of_module(m))
        try:
            return super().call_module(m, forward, args, kwargs)
        except Exception:
            if not self.failed_in:
                self.failed_in = list(self.stack)
            raise
        finally:
            self.stack.pop()


def trace(model: nn.Module, leaf_modules: Sequence[str] = ()) -> fx.GraphModule:
    """``torch.fx`` trace with extra leaf modules (names/globs/``re:``); a clear :class:`TraceError` if it fails."""
    tracer = _Tracer(leaf_modules)
    try:
        graph = tracer.trace(model)
    except Exception as error:
        where = tracer.failed_in[-1] if tracer.failed_in else "(top-level forward)"
        raise TraceError(
            f"torch.fx cannot trace the model: module '{where}' failed ({type(error).__name__}: {error}). "
            f"Workaround: pass leaf_modules=['{where}'] so it is kept as one opaque layer (its channels are then "
            "not pruned), or remove the data-dependent control flow from its forward") from None
    return fx.GraphModule(tracer.root, graph, type(model).__name__)


class _Builder(fx.Interpreter):
    def __init__(self, gm: fx.GraphModule) -> None:
        super().__init__(gm)
        self.uf = UnionFind()
        self.ids: dict[fx.Node, Any] = {}
        self.shapes: dict[fx.Node, Any] = {}
        self.uses: dict[str, ModuleUse] = {}
        self.attr_ids: dict[str, torch.Tensor] = {}
        self.modules = dict(gm.named_modules())

    # --- helpers used by op rules and handlers -------------------------------------------------------------
    def tensor_args(self, node: fx.Node) -> list[fx.Node]:
        found: list[fx.Node] = []
        fx.node.map_arg((node.args, node.kwargs), lambda n: found.append(n) if _has_tensor(self.ids.get(n)) else None)
        return found

    def ids_of(self, node: fx.Node) -> torch.Tensor:
        return self.ids[node]

    def shape_of(self, node: fx.Node) -> tuple[int, ...]:
        return tuple(self.shapes[node])

    def expand(self, node: fx.Node) -> torch.Tensor:
        return self.ids[node].expand(self.shapes[node]).contiguous()

    def substitute(self, node: fx.Node) -> tuple[tuple, dict]:
        def value(n: fx.Node) -> Any:
            ids, shape = self.ids.get(n), self.shapes.get(n)
            if isinstance(ids, torch.Tensor):
                return ids.expand(shape).contiguous()
            if isinstance(ids, tuple) and _has_tensor(ids):
                return tuple(t.expand(s).contiguous() if isinstance(t, torch.Tensor) else None
                             for t, s in zip(ids, shape, strict=True))
            return self.env[n]

        return fx.node.map_arg(node.args, value), fx.node.map_arg(node.kwargs, value)

    def compress(self, ids: torch.Tensor) -> torch.Tensor:
        r = self.uf.roots(ids)
        for d in range(r.dim()):
            if r.shape[d] > 1 and bool((r == r.narrow(d, 0, 1)).all()):
                r = r.narrow(d, 0, 1)
        return r.contiguous()

    def compress_tree(self, value: Any) -> Any:
        if isinstance(value, torch.Tensor):
            return self.compress(value)
        if isinstance(value, (tuple, list)):
            return tuple(self.compress_tree(v) for v in value)
        return None

    def blocked_like(self, out: Any) -> Any:
        if isinstance(out, torch.Tensor):
            return self.uf.fresh(1, blocked=True).reshape([1] * out.dim())
        if isinstance(out, (tuple, list)):
            return tuple(self.blocked_like(v) for v in out)
        return None

    def opaque(self, node: fx.Node, out: Any) -> Any:
        """Unknown op: its inputs' channels are blocked and its outputs get blocked ids."""
        for arg in self.tensor_args(node):
            ids = self.ids[arg]
            for t in (ids if isinstance(ids, tuple) else (ids,)):
                if isinstance(t, torch.Tensor):
                    self.uf.block(t)
        if isinstance(out, (torch.Tensor, tuple, list)):
            log.debug("opaque op %s (%s): its channels are not pruned", node.name, node.target)
        return self.blocked_like(out)

    def varies(self, ids: torch.Tensor, d: int) -> bool:
        r = self.uf.roots(ids)
        return bool((r != r.narrow(d, 0, 1)).any())

    def merge_along(self, ids: torch.Tensor, dims: Sequence[int]) -> torch.Tensor:
        """Merge ids across ``dims`` (other dims held fixed); returns the roots."""
        dims = [d % ids.dim() for d in dims]
        rest = [d for d in range(ids.dim()) if d not in dims]
        flat = ids.permute(*rest, *dims).reshape(-1, int(np.prod([ids.shape[d] for d in dims])) if dims else 1)
        self.uf.union(flat[:, :1], flat)
        return self.uf.roots(ids)

    def channel_map(self, node: fx.Node | torch.Tensor, dim: int) -> torch.Tensor:
        """Ids of the channels along ``dim`` for a layer consuming ``node`` (merged along every other dim)."""
        ids = self.ids[node] if isinstance(node, fx.Node) else node
        size = self.shapes[node][dim] if isinstance(node, fx.Node) else ids.shape[dim]
        dim = dim % ids.dim()
        others = [d for d in range(ids.dim()) if d != dim]
        r = self.merge_along(ids, others) if others else self.uf.roots(ids)
        for d in reversed(others):
            r = r.narrow(d, 0, 1)
        return r.reshape(-1).expand(size).contiguous() if r.numel() == 1 else r.reshape(-1).clone()

    def constrain(self, ids: torch.Tensor, dims: list[int]) -> None:
        """Make ids vary along at most one of ``dims`` (a reshape must stay a reshape after pruning)."""
        r = self.uf.roots(ids)
        varying = [d for d in dims if r.shape[d] > 1 and self.varies(r, d)]
        if len(varying) <= 1:
            return
        keep = varying[choose_unit_dim([r.shape[d] for d in varying])]
        others = [d for d in dims if d != keep]
        rest = [d for d in range(r.dim()) if d not in dims]
        t = r.permute(*rest, *others, keep).reshape(-1, int(np.prod([r.shape[d] for d in others])), r.shape[keep])
        self.uf.union(t[:, :1, :], t)

    def constrain_reshape(self, before: torch.Tensor, after: torch.Tensor) -> None:
        try:
            groups = dim_groups(tuple(before.shape), tuple(after.shape))
        except (ValueError, IndexError):
            self.uf.union(before.reshape(-1)[:1], before)
            return
        for gi, gj in groups:
            if len(gi) > 1:
                self.constrain(before, gi)
            if len(gj) > 1:
                self.constrain(after, gj)

    def record(self, name: str, module: nn.Module, in_map: torch.Tensor | None, out_map: torch.Tensor | None,
               **extra: Any) -> ModuleUse:
        if name in self.uses:  # a layer called twice: both calls must prune the same channels
            prev = self.uses[name]
            for a, b in ((prev.in_map, in_map), (prev.out_map, out_map)):
                if a is not None and b is not None:
                    self.uf.union(a, b)
            return prev
        self.uses[name] = ModuleUse(name, module, in_map, out_map, dict(extra))
        return self.uses[name]

    # --- the interpreter ------------------------------------------------------------------------------------
    def run_node(self, n: fx.Node) -> Any:
        out = super().run_node(n)
        self.shapes[n] = _shapes(out)
        try:
            self.ids[n] = self._rule(n, out)
        except TraceError:
            raise
        except Exception as error:
            raise TraceError(
                f"cannot follow channels through node '{n.name}' ({n.op} {_target_name(n)}): "
                f"{type(error).__name__}: {error}. Workaround: mark the module containing it as a leaf "
                "(leaf_modules=[...]) or skip it (skip=[...])") from error
        return out

    def _rule(self, n: fx.Node, out: Any) -> Any:
        if n.op == "placeholder":
            return self.blocked_like(out)
        if n.op == "get_attr":
            if not isinstance(out, torch.Tensor):
                return None
            ids = self.uf.fresh(tuple(out.shape)) if out.dim() else self.uf.fresh(1).reshape(())
            if n.target in self.attr_ids:
                self.uf.union(self.attr_ids[n.target], ids)
            else:
                self.attr_ids[n.target] = ids
            return ids
        if n.op == "output":
            fx.node.map_arg(n.args, lambda a: self.uf.block(self.ids[a]) if isinstance(
                self.ids.get(a), torch.Tensor) else [self.uf.block(t) for t in self.ids.get(a) or ()
                                                     if isinstance(t, torch.Tensor)])
            return None
        if n.op == "call_module":
            module = self.modules[n.target]
            handler = handler_for(module)
            if handler is None:
                return self.opaque(n, out)
            return handler.trace(self, n, module, out)
        rule = FUNCTION_RULES.get(n.target) if n.op == "call_function" else METHOD_RULES.get(n.target)
        if rule is None:
            return self.opaque(n, out) if _has_tensor(out) else None
        if not self.tensor_args(n):
            return self.blocked_like(out) if _has_tensor(out) else None
        return rule(self, n, out)


def _has_tensor(value: Any) -> bool:
    return isinstance(value, torch.Tensor) or (isinstance(value, (tuple, list)) and any(
        isinstance(v, torch.Tensor) for v in value))


def _shapes(value: Any) -> Any:
    if isinstance(value, torch.Tensor):
        return tuple(value.shape)
    if isinstance(value, (tuple, list)) and any(isinstance(v, torch.Tensor) for v in value):
        return tuple(tuple(v.shape) if isinstance(v, torch.Tensor) else None for v in value)
    return None


def _target_name(n: fx.Node) -> str:
    return n.target if isinstance(n.target, str) else getattr(n.target, "__name__", str(n.target))


class DependencyGraph:
    """The traced model (a private copy), its channel ids and the coupled channel groups.

    Build with :func:`build_graph`. ``groups`` lists prunable groups in graph order.
    """

    def __init__(self, builder: _Builder, gm: fx.GraphModule, example_inputs: tuple) -> None:
        self.gm = gm
        self.uf = builder.uf
        self.ids = builder.ids
        self.shapes = builder.shapes
        self.uses = builder.uses
        self.attr_ids = builder.attr_ids
        self.example_inputs = example_inputs
        self.groups: list[ChannelGroup] = []

    def protect(self, names: Sequence[str]) -> None:
        """Block every channel of these layers (inputs and outputs): they keep their exact shape."""
        for name in names:
            use = self.uses[name]
            for m in (use.in_map, use.out_map):
                if m is not None:
                    self.uf.block(m)

    def finalize(self, selectable: Sequence[str] | None = None) -> None:
        """Form the groups: units = unblocked roots; a group's ``name`` is its first output-owning layer."""
        members: dict[int, list[tuple[str, str]]] = {}
        sizes: dict[int, int] = {}
        for name, use in self.uses.items():
            for side, m in (("out", use.out_map), ("in", use.in_map)):
                if m is None:
                    continue
                roots = self.uf.find(m)
                for r in np.unique(roots[~self.uf.blocked[roots]]):
                    members.setdefault(int(r), []).append((name, side))
                if side == "out":
                    for r, c in zip(*np.unique(roots, return_counts=True), strict=True):
                        sizes.setdefault(int(r), int(c))
        by_sig: dict[tuple, list[int]] = {}
        for root, mem in members.items():
            if not any(side == "out" for _, side in mem):
                continue  # only consumed (e.g. a padding channel fed to a conv): nothing to score it by
            by_sig.setdefault(tuple(mem), []).append(root)
        order = {name: i for i, name in enumerate(self.uses)}
        groups = []
        for sig, roots in by_sig.items():
            owner = min((n for n, s in sig if s == "out"), key=order.__getitem__)
            if selectable is not None and owner not in selectable:
                continue
            units = np.array(sorted(roots), dtype=np.int64)
            groups.append(ChannelGroup(owner, units, sig, np.array([sizes.get(int(u), 1) for u in units])))
        groups.sort(key=lambda g: order[g.name])
        self.groups = groups

    def layer_names(self) -> list[str]:
        return list(self.uses)

    def unit_positions(self, ids: torch.Tensor, units: np.ndarray) -> np.ndarray:
        """Index of each entry of ``ids`` (1-D map) within ``units``, -1 if not one of them."""
        roots = self.uf.find(ids.reshape(-1))
        order = np.argsort(units)
        pos = np.searchsorted(units, roots, sorter=order)
        pos = np.clip(pos, 0, len(units) - 1)
        hit = units[order[pos]] == roots
        return np.where(hit, order[pos], -1)


def build_graph(model: nn.Module, example_inputs: torch.Tensor | tuple, *, leaf_modules: Sequence[str] = (),
                copy_model: bool = True) -> DependencyGraph:
    """Trace ``model`` (a deep copy unless ``copy_model=False``) and follow channels with one forward of
    ``example_inputs`` (batch 1 is enough). Returns the graph *before* protection/finalisation: call
    :meth:`DependencyGraph.protect` and :meth:`DependencyGraph.finalize`, or use :func:`dependency_graph`."""
    inputs = example_inputs if isinstance(example_inputs, tuple) else (example_inputs,)
    source = copy.deepcopy(model) if copy_model else model
    gm = trace(source, leaf_modules)
    gm.eval()
    builder = _Builder(gm)
    with torch.no_grad():
        builder.run(*inputs)
    return DependencyGraph(builder, gm, inputs)


def dependency_graph(model: nn.Module, example_inputs: torch.Tensor | tuple, *, skip: Sequence[str] | str = (),
                     protect_first: bool = False, layers: Sequence[str] | str | None = None,
                     leaf_modules: Sequence[str] = ()) -> DependencyGraph:
    """The channel-dependency graph of ``model`` with protected layers blocked and groups formed.

    ``skip`` (names/globs/``re:``) and, if ``protect_first``, the first layer keep all their channels; the output
    layer always does (graph outputs are never pruned). ``layers`` restricts which groups are prunable (by the
    name of the group's first layer).
    """
    from slimkit._select import as_patterns, select_names

    graph = build_graph(model, example_inputs, leaf_modules=leaf_modules)
    names = graph.layer_names()
    skipped = select_names(names, as_patterns(skip)) if skip else []
    if protect_first and names:
        skipped.append(names[0])
    graph.protect(skipped)
    selectable = None if layers is None else select_names(names, layers)
    graph.finalize(selectable)
    return graph


