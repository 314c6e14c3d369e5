"""From a captured forward to coupled channel groups.

Ids flow through the recorded calls in order (each op's rule: ``_ops.py``, ``_movement.py``, ``_layers.py``,
``_attention.py``). Ids merged
into one union-find root form one *unit*: the channels that vanish together (a conv filter, its BN entry, the next
layer's input slice, every tensor it is added to; an attention head with its q/k/v rows and output-projection
columns). Units with the same set of member layers form a :class:`ChannelGroup` (a "layer" for ratios and
criteria), of kind ``heads``, ``residual`` (a residual stream: the hidden / embedding width) or ``channels``
(MLP width, conv filters).
"""

from __future__ import annotations

import copy
import copyreg
import logging
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn

from slimkit._errors import TraceError
from slimkit.graph import _attention, _layers, _modules, _movement, _ops  # noqa: F401  (registers the rules)
from slimkit.graph._capture import Call, Capture, Ref, capture, eval_mode, run_model
from slimkit.graph._context import CannotFollow, ModuleUse, ParamDims, TraceContext, _named_tensor, module_map
from slimkit.graph._deadline import Deadline
from slimkit.graph._rules import module_rule, op_rule
from slimkit.graph._unionfind import UnionFind, unique_ids

log = logging.getLogger(__name__)

KINDS = ("heads", "channels", "residual")
GQA_MODES = ("groups", "query")


@dataclass
class ChannelGroup:
    """Units (coupled channel sets) that touch the same layers; ``name`` is the first layer whose outputs they are.

    ``kind``: ``heads`` (attention heads / key-value groups), ``residual`` (a residual stream's width) or
    ``channels`` (anything else: MLP width, conv filters). ``sizes``: channels per unit in the owning layer.
    """

    name: str
    units: np.ndarray
    members: tuple[tuple[str, str], ...]  # (layer name, "in" | "out")
    sizes: np.ndarray
    kind: str = "channels"


@dataclass(frozen=True)
class UnitSlice:
    """A parameter (or buffer) dim some of whose indices belong to a group's units: ``positions[i]`` is the unit
    (index into ``group.units``) owning index i along ``dim``, -1 for none. ``roles`` say how the dim is used
    (``out``: the unit's own filter/row, ``in``: a consumer's column, ``stat``, ``other``)."""

    param: str
    dim: int
    positions: np.ndarray
    roles: frozenset[str]


def shared_copy(model: nn.Module) -> nn.Module:
    """A deep copy of ``model`` that shares its parameter tensors (buffers are copied). Pruning replaces the
    copy's parameters with new, smaller ones and never writes into a shared one, so the original stays untouched
    while peak memory stays near one model (a 1B-parameter model is not duplicated)."""
    memo: dict[int, Any] = {id(p): p for p in model.parameters()}
    return _copy_module(model, memo)


#: attribute values a copy can share: immutable, so nothing done to the copy reaches the original through them
_IMMUTABLE = (int, float, bool, complex, str, bytes, type(None), torch.dtype, torch.device, torch.Size, type)


#: torch's own ``__setstate__`` overrides that only fill in attributes missing from old pickles (``padding_mode``,
#: ``_qkv_same_embed_dim``, ``dim``, ...): a live module already has them, so copying its fields is the same copy.
#: (RNNBase's is left out: it rebuilds its flat weight lists.)
_COMPAT_SETSTATE = frozenset(
    getattr(nn, name).__setstate__ for name in (
        "Conv2d", "AvgPool3d", "LogSoftmax", "Softmax", "Softmin", "MultiheadAttention", "TransformerDecoderLayer",
        "TransformerEncoderLayer", "Upsample", "Module"))


def _plain_module_class(cls: type) -> bool:
    """Whether ``cls`` copies the way ``nn.Module`` does (no ``__deepcopy__``/pickling hooks of its own, unlike
    ``torch.fx.GraphModule`` or a parametrized module): only then may :func:`_copy_module` copy it field by field."""
    return (getattr(cls, "__deepcopy__", None) is None and cls not in copyreg.dispatch_table
            and cls.__getstate__ is nn.Module.__getstate__
            and cls.__setstate__ in _COMPAT_SETSTATE and cls.__reduce_ex__ is object.__reduce_ex__
            and cls.__reduce__ is object.__reduce__)


def _copy_module(module: nn.Module, memo: dict[int, Any]) -> nn.Module:
    """``copy.deepcopy(module, memo)``, several times faster: module dicts, parameters (shared through ``memo``)
    and immutable attributes are handled directly, so ``deepcopy`` only walks what can be mutated (buffers, hooks,
    configs, lists). Tied submodules stay tied; a class with its own copy protocol gets ``deepcopy`` itself."""
    if id(module) in memo:
        return memo[id(module)]
    cls = type(module)
    if not _plain_module_class(cls):
        return copy.deepcopy(module, memo)
    new = cls.__new__(cls)
    memo[id(module)] = new
    state: dict[str, Any] = {}
    for key, value in module.__dict__.items():
        if key == "_modules":
            state[key] = {n: None if m is None else _copy_module(m, memo) for n, m in value.items()}
        elif key == "_parameters":
            state[key] = {n: None if p is None else memo[id(p)] if id(p) in memo else copy.deepcopy(p, memo)
                          for n, p in value.items()}
        elif key == "_buffers":
            state[key] = {n: None if b is None else _copy_tensor(b, memo) for n, b in value.items()}
        elif id(value) in memo:  # already copied through another reference: stays one object
            state[key] = memo[id(value)]
        elif type(value) in _IMMUTABLE or (type(value) is tuple and all(type(v) in _IMMUTABLE for v in value)):
            state[key] = value
        elif type(value) in (dict, OrderedDict, set, list) and not value:
            state[key] = memo[id(value)] = type(value)()
        else:
            state[key] = copy.deepcopy(value, memo)
    new.__dict__.update(state)
    return new


def _copy_tensor(tensor: torch.Tensor, memo: dict[int, Any]) -> torch.Tensor:
    """A buffer's copy (one copy per tensor, however many modules hold it)."""
    if id(tensor) not in memo:
        plain = (type(tensor) is torch.Tensor and tensor.layout is torch.strided and not tensor.is_quantized
                 and not tensor.requires_grad and not tensor.__dict__)
        storage = tensor.untyped_storage() if plain else None
        # only a tensor owning its whole storage is cloned: views, expanded (stride-0) and tagged tensors keep what
        # deepcopy gives them (shared storage between views, no materialisation, their __dict__)
        if (plain and id(storage) not in memo and tensor.storage_offset() == 0 and tensor.is_contiguous()
                and storage.nbytes() == tensor.numel() * tensor.element_size()):
            memo[id(tensor)] = clone = tensor.clone()
            memo[id(storage)] = clone.untyped_storage()  # later views of this storage map onto the clone
            memo.setdefault(id(memo), []).append(storage)  # keeps the key's object alive, as deepcopy does
        else:
            memo[id(tensor)] = copy.deepcopy(tensor, memo)
    return memo[id(tensor)]


def unshare_(model: nn.Module, original_params: set[int]) -> None:
    """Replace every parameter of ``model`` that is still one of ``original_params`` by a copy (ties kept)."""
    done: dict[int, nn.Parameter] = {}
    for module in model.modules():
        for name, p in list(module._parameters.items()):
            if p is None or id(p) not in original_params:
                continue
            if id(p) not in done:
                done[id(p)] = nn.Parameter(p.detach().clone(), requires_grad=p.requires_grad)
            module._parameters[name] = done[id(p)]


def propagate(capture_: Capture, model: nn.Module, *, gqa: str = "groups",
              deadline: Deadline | None = None) -> TraceContext:
    """Run every op rule over the captured calls; returns the context holding ids, uses and groups' raw data."""
    deadline = deadline or Deadline(None)
    ctx = TraceContext(capture_, model, gqa=gqa)
    for call in capture_.calls:
        deadline.check(call.where)
        ctx.call = call
        _store(ctx, call, call.out, _run(ctx, call))
    ctx.call = None
    ctx.settle_reshapes()
    for ref in capture_.output_refs():
        ctx.block(ctx.ids(ref))
    return ctx


def _run(ctx: TraceContext, call: Call) -> Any:
    if call.module is not None:
        rule = module_rule(call.module)
        fn = rule.leaf if rule is not None else None
        if fn is None:
            return ctx.opaque(call, "a leaf module")
    else:
        rule = op_rule(call.target)
        if rule is None:
            return ctx.opaque(call)
        fn = rule.propagate
    try:
        return fn(ctx, call)
    except CannotFollow as reason:
        return ctx.opaque(call, str(reason))
    except TraceError:
        raise
    except Exception as error:  # a rule that does not cover this use: safe (blocked), and said
        log.warning("channel rule for %s failed (%s: %s); its channels are kept", call.where(),
                    type(error).__name__, error)
        return ctx.opaque(call, f"rule failed: {type(error).__name__}")


def _store(ctx: TraceContext, call: Call, out: Any, ids: Any) -> None:
    if isinstance(out, Ref):
        if not isinstance(ids, torch.Tensor) or not _fits(ids, ctx.shape(out)):
            if isinstance(ids, torch.Tensor):
                log.warning("channel rule for %s returned ids of shape %s for a result of shape %s; kept",
                            call.where(), tuple(ids.shape), ctx.shape(out))
            ids = ctx.blocked_like(out)
        ctx.set_ids(out, ids)
    elif isinstance(out, (tuple, list)):
        parts = ids if isinstance(ids, (tuple, list)) and len(ids) == len(out) else [None] * len(out)
        for o, i in zip(out, parts, strict=True):
            _store(ctx, call, o, i)
    elif isinstance(out, dict):
        parts = ids if isinstance(ids, dict) else {}
        for k, o in out.items():
            _store(ctx, call, o, parts.get(k))


def _fits(ids: torch.Tensor, shape: tuple[int, ...]) -> bool:
    if ids.dim() > len(shape):
        return False
    tail = list(ids.shape)
    return all(t in (1, s) for t, s in zip(tail, shape[len(shape) - len(tail):], strict=True))


def _equal_rows(rows: np.ndarray) -> list[np.ndarray]:
    """Indices of equal rows, one array per distinct row (ascending within each). Rows are hashed to one int64
    each (random odd multipliers, wrapping), grouped by a 1-D unique, and the grouping is checked row by row; a
    collision (never seen) falls back to exact bytes. ``np.unique(axis=0)`` sorts rows as records, 10x slower."""
    weights = np.random.default_rng(0).integers(1, 2**62, size=rows.shape[1], dtype=np.int64) | 1
    with np.errstate(over="ignore"):
        keys = (rows * weights).sum(axis=1)
    _, first, inverse = np.unique(keys, return_index=True, return_inverse=True)
    inverse = inverse.reshape(-1)
    if (rows == rows[first[inverse]]).all():
        order = np.argsort(inverse, kind="stable")
        return np.split(order, np.cumsum(np.bincount(inverse))[:-1])
    exact: dict[bytes, list[int]] = {}
    for i, row in enumerate(rows):
        exact.setdefault(row.tobytes(), []).append(i)
    return [np.asarray(v) for v in exact.values()]


def _first_values(keys: list[np.ndarray], values: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """Per-layer arrays of roots (met in layer order) and a value per root: the distinct roots, sorted, and each
    one's value where it was first met (a unit's channel count in its first producing layer; that layer)."""
    if not keys:
        return np.zeros(0, np.int64), np.zeros(0, np.int64)
    distinct, first = np.unique(np.concatenate(keys), return_index=True)
    return distinct, np.concatenate(values)[first]


def _lookup(distinct: np.ndarray, values: np.ndarray, queries: np.ndarray, default: int) -> np.ndarray:
    """``values`` at the positions of ``queries`` in the sorted ``distinct``, ``default`` where a query is absent."""
    if not len(distinct):
        return np.full(len(queries), default, dtype=np.int64)
    at = np.minimum(np.searchsorted(distinct, queries), len(distinct) - 1)
    return np.where(distinct[at] == queries, values[at], default)


class DependencyGraph:
    """A captured model, its channel ids and the coupled channel groups.

    ``model`` is a private copy of the caller's model (sharing its parameters until pruning replaces them) that
    the capture ran on. Build with :func:`build_graph`; ``groups`` lists prunable groups in order of first use.
    """

    def __init__(self, model: nn.Module, capture_: Capture, ctx: TraceContext, example_inputs: Any) -> None:
        self.model = model
        self.capture = capture_
        self.ctx = ctx
        self.example_inputs = example_inputs
        self.groups: list[ChannelGroup] = []
        self.original_params = {id(p) for p in model.parameters()}
        self.leaf_modules: tuple[str, ...] = ()
        self._slices: list[list[UnitSlice]] | None = None
        self._modules: tuple[nn.Module, dict[str, nn.Module]] | None = None  # graph.model's modules by name

    @property
    def uf(self) -> UnionFind:
        return self.ctx.uf

    @property
    def uses(self) -> dict[str, ModuleUse]:
        return self.ctx.uses

    @property
    def params(self) -> dict[str, ParamDims]:
        return self.ctx.params

    def run(self, inputs: Any, model: nn.Module | None = None) -> Any:
        """Call the graph's model (or ``model``) on inputs shaped like the example (tensor, tuple or dict)."""
        return run_model(model if model is not None else self.model, inputs)

    def protect(self, names: Sequence[str]) -> None:
        """Block every channel of these layers (inputs and outputs): they keep their exact shape."""
        for name in names:
            use = self.uses[name]
            for m in (use.in_map, use.out_map):
                if m is not None:
                    self.uf.block(m)

    def finalize(self, selectable: Sequence[str] | None = None, kinds: Sequence[str] | None = None) -> None:
        """Form the groups: units = unblocked roots; a group's ``name`` is its first output-owning layer; only
        groups whose name is in ``selectable`` and whose kind is in ``kinds`` (default: all) are kept."""
        # Vectorised: a model has tens of thousands of (root, layer) memberships, too many for a Python loop each.
        # A membership is coded use-index * 2 + side (0 out, 1 in), so code order is the order layers are met.
        self.uf.flatten()
        names = list(self.uses)
        member_roots, member_codes, out_roots, out_counts = [], [], [], []
        for i, use in enumerate(self.uses.values()):
            for side, m in ((0, use.out_map), (1, use.in_map)):
                if m is None:
                    continue
                roots, counts = np.unique(self.uf.find(m), return_counts=True)
                if side == 0:
                    out_roots.append(roots)
                    out_counts.append(counts)
                roots = roots[~self.uf.blocked[roots]]
                member_roots.append(roots)
                member_codes.append(np.full(len(roots), 2 * i + side, dtype=np.int64))
        self.groups = []
        self._slices = None
        if not sum(len(r) for r in member_roots):
            return
        size_roots, size_of = _first_values(out_roots, out_counts)  # a unit's channels in its first producer
        roots, codes = np.concatenate(member_roots), np.concatenate(member_codes)
        order = np.lexsort((codes, roots))
        roots, codes = roots[order], codes[order]
        unit_roots, starts, lengths = np.unique(roots, return_index=True, return_counts=True)
        # each unit's signature (its sorted member codes) as one padded row; equal rows = one group
        width = int(lengths.max())
        rows = np.full((len(unit_roots), width), -1, dtype=np.int64)
        column = np.arange(len(roots)) - np.repeat(starts, lengths)
        rows[np.repeat(np.arange(len(unit_roots)), lengths), column] = codes
        owns_output = (rows % 2 == 0) & (rows >= 0)
        keep = owns_output.any(axis=1)  # only consumed (e.g. a padding channel fed to a conv): nothing to score it by
        unit_roots, rows = unit_roots[keep], rows[keep]
        by_signature = _equal_rows(rows)
        marked = {}
        for kind, ids in self.ctx.marks.items():
            marked[kind] = np.zeros(len(self.uf), dtype=bool)
            if ids:
                marked[kind][self.uf.find(torch.cat(ids))] = True
        found = []
        for members_at in by_signature:
            units = unit_roots[members_at]  # ascending
            sig = rows[members_at[0]]
            codes_ = sig[sig >= 0]
            members = tuple((names[c // 2], "in" if c % 2 else "out") for c in codes_.tolist())
            owner = names[int(codes_[codes_ % 2 == 0][0]) // 2]
            if selectable is not None and owner not in selectable:
                continue
            kind = ("heads" if marked["heads"][units].any() else
                    "residual" if marked["residual"][units].any() else "channels")
            if kinds is not None and kind not in kinds:
                continue
            sizes = _lookup(size_roots, size_of, units, 1)
            # the order layers are met, then the smallest unit: the order a loop over the uses would find them
            found.append(((int(codes_[0]), int(units[0])), ChannelGroup(owner, units, members, sizes, kind)))
        found.sort(key=lambda item: item[0])
        index = {name: i for i, name in enumerate(names)}
        self.groups = sorted((g for _, g in found), key=lambda g: index[g.name])

    def slices(self, group: int | ChannelGroup) -> list[UnitSlice]:
        """Every parameter dim holding units of a group (by index or object; computed once for all groups)."""
        if self._slices is None:
            self._slices = self._all_slices()
        if isinstance(group, ChannelGroup):
            group = next(i for i, g in enumerate(self.groups) if g is group)
        return self._slices[group]

    def _all_slices(self) -> list[list[UnitSlice]]:
        # every parameter dim's ids looked up at once; a Python step only per (dim, group) that meet
        out: list[list[UnitSlice]] = [[] for _ in self.groups]
        dims = [(name, d, pd.roles[d], ids.reshape(-1)) for name, pd in self.params.items()
                for d, ids in enumerate(pd.ids)]
        if not self.groups or not dims:
            return out
        units = np.concatenate([g.units for g in self.groups])
        owner = np.concatenate([np.full(len(g.units), i) for i, g in enumerate(self.groups)])
        local = np.concatenate([np.arange(len(g.units)) for g in self.groups])
        order = np.argsort(units)
        units, owner, local = units[order], owner[order], local[order]
        lengths = np.array([len(ids) for *_, ids in dims])
        roots = self.uf.find(torch.cat([ids for *_, ids in dims]))
        at = np.clip(np.searchsorted(units, roots), 0, len(units) - 1)
        hit = units[at] == roots
        group_of = np.where(hit, owner[at], -1)
        position = np.where(hit, local[at], -1)
        dim_of = np.repeat(np.arange(len(dims)), lengths)
        starts = np.concatenate([[0], np.cumsum(lengths)])
        n = len(self.groups)
        for code in unique_ids(dim_of[hit] * n + group_of[hit]).tolist():  # by dim, then group: the order met
            di, gi = divmod(code, n)
            a, b = starts[di], starts[di + 1]
            name, d, roles, _ = dims[di]
            pos = np.where(group_of[a:b] == gi, position[a:b], -1)
            out[gi].append(UnitSlice(name, d, pos, frozenset(roles)))
        return out

    def tensor(self, name: str, model: nn.Module | None = None) -> torch.Tensor:
        """The current value of parameter/buffer ``name`` in the graph's model (or ``model``)."""
        if model is not None and model is not self.model:
            return _named_tensor(model, name)
        if self._modules is None or self._modules[0] is not self.model:  # scoring asks for every weight
            self._modules = (self.model, module_map(self.model))
        return _named_tensor(self.model, name, self._modules[1])

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

    def opaque_ops(self) -> list[dict[str, Any]]:
        """Every op no rule followed that blocked channels, with the layers whose channels it froze."""
        out: list[dict[str, Any]] = []
        if not self.ctx.opaque_sites:
            return out
        names = list(self.uses)
        roots, users = [], []
        for i, use in enumerate(self.uses.values()):
            if use.out_map is not None:
                r = unique_ids(self.uf.find(use.out_map))
                roots.append(r)
                users.append(np.full(len(r), i))
        owned, owner_of = _first_values(roots, users)  # a root's owner: the first layer whose output holds it
        for site in self.ctx.opaque_sites:
            owners = _lookup(owned, owner_of, unique_ids(self.uf.find(torch.cat(site.blocked))), -1)
            froze = sorted({names[i] for i in owners[owners >= 0].tolist()})
            if froze:
                out.append({"op": site.where, "froze": froze})
        return out


def build_graph(model: nn.Module, example_inputs: Any, *, leaf_modules: Sequence[str] = (),
                copy_model: bool = True, gqa: str = "groups", deadline: Deadline | None = None) -> DependencyGraph:
    """Capture one forward of ``model`` (a copy sharing its parameters unless ``copy_model=False``) on
    ``example_inputs`` (a tensor, a tuple, or a dict of keyword inputs; batch 1 is enough) and follow channels.
    Returns the graph *before* protection/finalisation: call :meth:`DependencyGraph.protect` and
    :meth:`DependencyGraph.finalize`, or use :func:`dependency_graph`."""
    if gqa not in GQA_MODES:
        from slimkit._errors import ConfigError

        raise ConfigError(f"gqa '{gqa}' is unknown: use 'groups' (whole key/value groups) or 'query' (query heads "
                          "within every group)")
    source = shared_copy(model) if copy_model else model
    deadline = deadline or Deadline(None)
    with eval_mode(source):
        cap = capture(source, example_inputs, leaf_modules=leaf_modules, is_leaf=_is_leaf, deadline=deadline)
        ctx = propagate(cap, source, gqa=gqa, deadline=deadline)
    graph = DependencyGraph(source, cap, ctx, example_inputs)
    graph.leaf_modules = tuple(leaf_modules)
    return graph


def _is_leaf(module: nn.Module) -> bool:
    rule = module_rule(module)
    return rule is not None and rule.leaf is not None


def dependency_graph(model: nn.Module, example_inputs: Any, *, skip: Sequence[str] | str = (),
                     protect_first: bool = False, layers: Sequence[str] | str | None = None,
                     leaf_modules: Sequence[str] = (), kinds: Sequence[str] | None = None, gqa: str = "groups",
                     deadline: Deadline | None = None) -> DependencyGraph:
    """The channel-dependency graph of ``model`` with protected layers blocked and groups formed.

    ``skip`` (names/globs/``re:``) and, if ``protect_first``, the first layer keep all their channels; the model's
    outputs always do. ``layers`` restricts which groups are prunable (by the name of the group's first layer),
    ``kinds`` by kind (``heads``, ``channels``, ``residual``).
    """
    from slimkit._select import as_patterns, select_names

    graph = build_graph(model, example_inputs, leaf_modules=leaf_modules, gqa=gqa, deadline=deadline)
    names = graph.layer_names()
    skipped = select_names(names, as_patterns(skip)) if skip else []
    if protect_first and names:
        skipped.append(names[0])
    graph.protect(skipped)
    selectable = None if layers is None else select_names(names, layers)
    graph.finalize(selectable, kinds)
    return graph
