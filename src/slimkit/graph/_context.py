"""The typed context an op rule works with while channel ids flow through a captured forward.

Every tensor carries an *id tensor*: one int64 id per element, stored compressed (size 1 along dims where the ids
do not vary, so a (1, 64, 112, 112) activation whose ids vary only by channel is stored as (1, 64, 1, 1)). Ids
merged by the union-find belong to one *unit*, the channels that vanish together. Parameters and buffers are
different: each of their dims has its own 1-D ids (a weight's rows and columns are pruned independently), tagged
with a role (``out``: the filter/row a unit owns, ``in``: a consumer's column, ``stat``: running statistics,
``other``: a parameter used in plain tensor arithmetic, such as a class token or a position embedding).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import nn

from slimkit.graph._capture import Call, Capture, Ref, ValueInfo
from slimkit.graph._unionfind import UnionFind

log = logging.getLogger(__name__)

ROLES = ("out", "in", "stat", "other", "index")


class CannotFollow(Exception):
    """Raised by a rule when an op's use is outside what it supports; the engine then treats the op as opaque."""


@dataclass
class ModuleUse:
    """One layer that owns parameters along channel dims: ids of its input and output channels (1-D).

    ``kind`` says how (``linear``, ``conv``, ``depthwise``, ``conv-slots``, ``norm``, ``embedding``, ``mha``, ...).
    """

    name: str
    module: nn.Module | None
    in_map: torch.Tensor | None
    out_map: torch.Tensor | None
    kind: str = ""
    extra: dict[str, Any] = field(default_factory=dict)


@dataclass
class ParamDims:
    """Per-dim ids of one parameter or buffer (``ids[d]`` has ``shape[d]`` entries) and the roles each dim plays."""

    name: str
    shape: tuple[int, ...]
    ids: list[torch.Tensor]
    roles: list[set[str]]
    scalar: torch.Tensor | None = None


@dataclass
class AttentionSite:
    """An attention op (scaled-dot-product or a q·kᵀ / p·v matmul pair): where heads live, for size attributes."""

    call: int
    scope: str
    query: Ref
    key: Ref
    head_dim: int  # the dim of ``query`` / ``key`` holding heads
    n_rep: int = 1  # query heads per key/value head (GQA)
    kv_heads: int = 0  # key/value heads before any repeat
    gqa: str = "groups"


@dataclass
class OpaqueSite:
    """An op no rule follows: the ids it blocked (for ``pruning_info``)."""

    call: int
    where: str
    blocked: list[torch.Tensor]


class TraceContext:
    """What an op rule reads and writes. ``call`` results are returned by the rule; the helpers below are the
    vocabulary: ``ids``/``shape`` of a value, ``param_ids`` of a parameter dim, ``union``/``block``/``fresh`` on ids,
    ``channel_map`` (the ids along one dim), ``replay`` (run a data-movement op on the ids themselves),
    ``record_use`` (a layer owning channels), ``mark_heads`` / ``mark_residual`` (what kind of unit an id is)."""

    def __init__(self, capture: Capture, model: nn.Module, *, gqa: str = "groups") -> None:
        self.capture = capture
        self.model = model
        self.gqa = gqa
        self.uf = UnionFind()
        self.uses: dict[str, ModuleUse] = {}
        self.params: dict[str, ParamDims] = {}
        self.marks: dict[str, list[torch.Tensor]] = {"heads": [], "residual": []}
        self.attention: list[AttentionSite] = []
        self.opaque_sites: list[OpaqueSite] = []
        self.call: Call | None = None
        self.reshapes: list[tuple[Ref, Ref]] = []
        self._ids: dict[int, torch.Tensor] = {}
        self._modules: dict[str, nn.Module] | None = None

    # --- values ---------------------------------------------------------------------------------------------
    def info(self, ref: Ref) -> ValueInfo:
        return self.capture.values[ref.key]

    def shape(self, ref: Ref) -> tuple[int, ...]:
        """The real shape of a tensor value."""
        return self.capture.values[ref.key].shape

    def is_param(self, ref: Any) -> bool:
        """Whether ``ref`` is a parameter or buffer of the model."""
        return isinstance(ref, Ref) and self.info(ref).origin in ("param", "buffer")

    def data(self, ref: Ref) -> torch.Tensor | None:
        """The real values of a small integer/bool tensor (indices, masks), else None."""
        return self.info(ref).data

    def owner(self, ref: Ref) -> str | None:
        """The qualified name of the module owning parameter ``ref`` (None for other tensors)."""
        if not self.is_param(ref):
            return None
        return self.info(ref).name.rpartition(".")[0]

    def ids(self, ref: Ref) -> torch.Tensor:
        """The (compressed) element ids of a value, broadcastable to its shape."""
        found = self._ids.get(ref.key)
        if found is not None:
            return found
        info = self.info(ref)
        if info.origin in ("param", "buffer"):
            ids = self._element_view(ref)
        else:  # example inputs, constants, and results of ops nobody followed: never pruned
            ids = self.uf.fresh(1, blocked=True).reshape([1] * len(info.shape))
        self._ids[ref.key] = ids
        return ids

    def set_ids(self, ref: Ref, ids: torch.Tensor) -> None:
        """Store the ids of a result (compressed)."""
        shape = self.shape(ref)
        while ids.dim() < len(shape):
            ids = ids.unsqueeze(0)
        self._ids[ref.key] = self.compress(ids)

    def expanded(self, ref: Ref) -> torch.Tensor:
        """Ids at the value's full shape (contiguous)."""
        return self.ids(ref).expand(self.shape(ref)).contiguous()

    def param_dims(self, ref: Ref | str) -> ParamDims:
        """The per-dim ids of a parameter or buffer (by value or by qualified name)."""
        if isinstance(ref, Ref):
            name, shape = self.info(ref).name, self.info(ref).shape
        else:
            name = ref
            shape = tuple(self.tensor(name).shape)
        pd = self.params.get(name)
        if pd is None:
            pd = ParamDims(name, tuple(shape), [self.uf.fresh(s) for s in shape], [set() for _ in shape])
            self.params[name] = pd
        return pd

    def param_ids(self, ref: Ref | str, dim: int, role: str) -> torch.Tensor:
        """The 1-D ids along ``dim`` of a parameter (a value, or a qualified name such as ``attn.in_proj_weight``),
        tagged with ``role``; for any other tensor, its channel map along ``dim``."""
        if isinstance(ref, Ref) and not self.is_param(ref):
            return self.channel_map(ref, dim)
        pd = self.param_dims(ref)
        dim = dim % len(pd.shape)
        pd.roles[dim].add(role)
        return pd.ids[dim]

    def join_param(self, ref: Ref | str, dim: int, role: str, ids: torch.Tensor) -> None:
        """``union(param_ids(ref, dim, role), ids)``: the parameter's ``dim`` carries the units ``ids`` (1-D, one per
        index). A parameter seen here first takes ``ids`` for that dim instead of fresh ids merged into them (the
        same roots, without the allocation and the union: most of a BatchNorm's or a conv's rule)."""
        name = ref if isinstance(ref, str) else self.info(ref).name if self.is_param(ref) else None
        if name is not None and name not in self.params and ids.dim() == 1:
            shape = tuple(self.tensor(name).shape) if isinstance(ref, str) else self.info(ref).shape
            d = dim % len(shape) if shape else 0
            if shape and ids.numel() == shape[d]:
                self.params[name] = ParamDims(name, tuple(shape), [ids.clone() if i == d else self.uf.fresh(s)
                                                                   for i, s in enumerate(shape)],
                                              [{role} if i == d else set() for i in range(len(shape))])
                return
        self.union(self.param_ids(ref, dim, role), ids)

    def tensor(self, name: str) -> torch.Tensor:
        """The model's parameter or buffer called ``name``."""
        return _named_tensor(self.model, name, self.modules())

    def modules(self) -> dict[str, nn.Module]:
        """The model's submodules by qualified name (``""``: the model), from one walk."""
        if self._modules is None:
            self._modules = module_map(self.model)
        return self._modules

    def _element_view(self, ref: Ref) -> torch.Tensor:
        """A parameter used in plain arithmetic: its ids vary along its last dim of size > 1 (a class token's or
        position embedding's channels, a relative-position table's heads); other dims are not pruned through it."""
        pd = self.param_dims(ref)
        shape = pd.shape
        varying = [d for d, s in enumerate(shape) if s > 1]
        if not shape:
            if pd.scalar is None:
                pd.scalar = self.uf.fresh(1).reshape(())
            return pd.scalar
        d = varying[-1] if varying else len(shape) - 1
        pd.roles[d].add("other")
        view = [1] * len(shape)
        view[d] = shape[d]
        return pd.ids[d].reshape(view)

    # --- id algebra -----------------------------------------------------------------------------------------
    def fresh(self, shape: int | tuple[int, ...], blocked: bool = False) -> torch.Tensor:
        return self.uf.fresh(shape, blocked)

    def union(self, a: torch.Tensor, b: torch.Tensor) -> None:
        """Ids at the same (broadcast) position become one unit."""
        self.uf.union(a, b)

    def block(self, ids: torch.Tensor) -> None:
        """These ids' units are never pruned."""
        self.uf.block(ids)

    def roots(self, ids: torch.Tensor) -> torch.Tensor:
        return self.uf.roots(ids)

    def compress(self, ids: torch.Tensor) -> torch.Tensor:
        """Roots of ``ids``, narrowed to size 1 along every dim where they do not vary."""
        r = self.uf.find(ids)
        r = r.reshape(tuple(ids.shape))
        for d in range(r.ndim):
            if r.shape[d] > 1 and (r == r.take([0], axis=d)).all():
                r = r.take([0], axis=d)
        return torch.from_numpy(np.array(r, dtype=np.int64, copy=True))

    def varying(self, ids: torch.Tensor) -> list[int]:
        """The dims along which ``ids`` vary."""
        r = self.uf.find(ids).reshape(tuple(ids.shape))
        return [d for d in range(r.ndim) if r.shape[d] > 1 and not (r == r.take([0], axis=d)).all()]

    def merge_along(self, ids: torch.Tensor, dims: Sequence[int]) -> torch.Tensor:
        """Merge ids across ``dims`` (other dims held fixed); returns the roots."""
        dims = sorted({d % ids.dim() for d in dims})
        if not dims:
            return self.roots(ids)
        rest = [d for d in range(ids.dim()) if d not in dims]
        flat = ids.permute(*rest, *dims).reshape(-1, int(np.prod([ids.shape[d] for d in dims])))
        self.uf.union(flat[:, :1], flat)
        return self.roots(ids)

    def channel_map(self, ref: Ref | torch.Tensor, dim: int, size: int | None = None) -> torch.Tensor:
        """The 1-D ids along ``dim`` of a value a layer consumes (merged along every other dim)."""
        if isinstance(ref, Ref):
            ids, size = self.ids(ref), self.shape(ref)[dim]
        else:
            ids = ref
            size = size if size is not None else ids.shape[dim]
        dim = dim % ids.dim()
        others = [d for d in range(ids.dim()) if d != dim]
        if all(ids.shape[d] == 1 for d in others):  # the ids vary along ``dim`` alone: nothing to merge
            r = self.roots(ids.reshape(-1))
        else:
            r = self.merge_along(ids, others)
            for d in reversed(others):
                r = r.narrow(d, 0, 1)
            r = r.reshape(-1)
        return r.expand(size).contiguous() if r.numel() == 1 and size != 1 else r.clone()

    def constrain(self, ids: torch.Tensor, dims: list[int]) -> None:
        """Make ids vary along at most one of ``dims`` (a reshape must stay a reshape after pruning)."""
        from slimkit.graph._ops import choose_unit_dim

        r = self.roots(ids)
        varying = [d for d in dims if d in self.varying(r)]
        if len(varying) <= 1:
            return
        keep = varying[choose_unit_dim([r.shape[d] for d in varying])]
        others = [d for d in dims if d != keep]
        rest = [d for d in range(r.dim()) if d not in dims]
        t = r.permute(*rest, *others, keep).reshape(-1, int(np.prod([r.shape[d] for d in others])), r.shape[keep])
        self.uf.union(t[:, :1, :], t)

    def constrain_reshape(self, before: torch.Tensor, after: torch.Tensor) -> None:
        """``before`` (full shape) was reshaped into ``after``: merged or split dims keep at most one varying
        factor, so the pruned tensor reshapes the same way."""
        from slimkit.graph._ops import dim_groups

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

    def defer_reshape(self, before: Ref, after: Ref) -> None:
        """Check ``before`` → ``after`` (a reshape) with :meth:`constrain_reshape` once every op has been followed:
        which factor of a split channel dim carries the units (heads or head_dim, say) is only known then."""
        self.reshapes.append((before, after))

    def settle_reshapes(self) -> None:
        """Apply the deferred reshape constraints until none merges anything more."""
        while True:
            before = self.uf.size, int((self.uf.parent[: self.uf.size] != np.arange(self.uf.size)).sum())
            for a, b in self.reshapes:
                self.constrain_reshape(self.expanded(a), self.expanded(b))
            after = self.uf.size, int((self.uf.parent[: self.uf.size] != np.arange(self.uf.size)).sum())
            if after == before:
                return

    def blocked_like(self, out: Any) -> Any:
        """Blocked ids for every tensor in a result structure."""
        if isinstance(out, Ref):
            return self.uf.fresh(1, blocked=True).reshape([1] * len(self.shape(out)))
        if isinstance(out, (tuple, list)):
            return tuple(self.blocked_like(o) for o in out)
        if isinstance(out, dict):
            return {k: self.blocked_like(v) for k, v in out.items()}
        return None

    def opaque(self, call: Call, reason: str = "") -> Any:
        """An op no rule follows: its tensor inputs' channels are blocked and its results get blocked ids, so an
        unsupported op makes pruning less thorough but never wrong."""
        blocked = []
        for ref in call.refs():
            ids = self.ids(ref)
            if not self.uf.is_blocked(ids).all():
                blocked.append(ids.reshape(-1))
                self.uf.block(ids)
        if blocked:
            self.opaque_sites.append(OpaqueSite(call.index, call.where() + (f" ({reason})" if reason else ""),
                                                blocked))
            log.debug("opaque %s: its channels are not pruned", call.where())
        return self.blocked_like(call.out)

    # --- layers, heads, replay ------------------------------------------------------------------------------
    def record_use(self, name: str, in_map: torch.Tensor | None, out_map: torch.Tensor | None, kind: str,
                   **extra: Any) -> ModuleUse:
        """Record that module ``name`` owns channels: its input ids ``in_map`` and output ids ``out_map``. A layer
        used twice must prune the same channels both times, so its maps are merged."""
        key = name
        prev = self.uses.get(key)
        if prev is not None and prev.kind != kind:
            key = f"{name}#{kind}"
            prev = self.uses.get(key)
        if prev is not None:
            for a, b in ((prev.in_map, in_map), (prev.out_map, out_map)):
                if a is not None and b is not None:
                    self.uf.union(a, b)
            return prev
        module = self.modules().get(name)
        if module is None:  # not an nn.Module truth test: an empty Sequential is falsy
            module = self.model.get_submodule(name)
        self.uses[key] = ModuleUse(name, module, in_map, out_map, kind, dict(extra))
        return self.uses[key]

    def mark_heads(self, ids: torch.Tensor) -> None:
        """These ids are attention heads (or key/value groups): their groups are of kind ``heads``."""
        self.marks["heads"].append(ids.reshape(-1))

    def mark_residual(self, ids: torch.Tensor) -> None:
        """These ids are a residual stream's channels (hidden / embedding width): kind ``residual``."""
        self.marks["residual"].append(ids.reshape(-1))

    def replay(self, call: Call, data: Sequence[int | str] = (0,)) -> Any:
        """Run a data-movement op on id tensors: arguments at ``data`` positions (ints) or keywords (strs) are
        replaced by their full-shape ids (lists of tensors too), other tensors by their real values. Raises
        :class:`CannotFollow` if the op cannot run on integer ids."""

        def sub(obj: Any, as_data: bool) -> Any:
            if isinstance(obj, Ref):
                if as_data:
                    return self.expanded(obj)
                real = self.data(obj)
                if real is None:
                    info = self.info(obj)
                    real = torch.zeros(info.shape, dtype=info.dtype)
                return real
            if isinstance(obj, (tuple, list)):
                return type(obj)(sub(o, as_data) for o in obj)
            if isinstance(obj, dict):
                return {k: sub(v, as_data) for k, v in obj.items()}
            return obj

        args = tuple(sub(a, i in data) for i, a in enumerate(call.args))
        kwargs = {k: sub(v, k in data) for k, v in call.kwargs.items()}
        try:
            return call.target(*args, **kwargs)
        except Exception as error:
            raise CannotFollow(f"cannot replay on channel ids: {type(error).__name__}: {error}") from None


def module_map(model: nn.Module) -> dict[str, nn.Module]:
    """Every submodule of ``model`` by each of its qualified names (``""``: the model itself)."""
    return dict(model.named_modules(remove_duplicate=False))


def _named_tensor(model: nn.Module, name: str, modules: dict[str, nn.Module] | None = None) -> torch.Tensor:
    """Parameter or buffer ``name`` of ``model``; ``modules`` (:func:`module_map`) saves walking the path."""
    owner, _, attr = name.rpartition(".")
    module = modules.get(owner) if modules is not None else None
    if module is None:
        module = model.get_submodule(owner) if owner else model
    value = getattr(module, attr)
    if not isinstance(value, torch.Tensor):
        raise KeyError(f"'{name}' is not a parameter or buffer")
    return value
