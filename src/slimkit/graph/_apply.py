"""Removing units from the user's model: slice every parameter along its pruned dims, set each layer's size
attributes (``in_features``, ``num_features``, attention's ``num_heads``/``head_dim``/``all_head_size``, ...),
then run the pruned model once more and check, op by op, that every tensor has exactly the expected shape.

The result is the user's own model class with physically smaller layers (a ResNet stays a ResNet, an HF
``LlamaForCausalLM`` keeps ``generate`` and ``save_pretrained``). Sizes the forward reads from module attributes
are found three ways: a module type's ``resize`` rule, attention attributes named like a head count (set from the
heads each attention op kept), and width attributes named like a width (``hidden_size``, ``intermediate_size``) when
every parameter dim of that size in the module shrank alike. If the check still finds a stale size, the op's own
rewrite rule tells which integer argument is stale, and an attribute of the module running the op holding that
value is updated; anything left over is a :class:`TraceError` naming the module and op.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import nn

from slimkit._errors import TraceError
from slimkit._masks import MASK_SUFFIX
from slimkit.graph._capture import Ref
from slimkit.graph._context import module_map
from slimkit.graph._deadline import Deadline
from slimkit.graph._graph import DependencyGraph, shared_copy, unshare_
from slimkit.graph._rules import ResizeInfo, module_rule
from slimkit.graph._unionfind import unique_ids

log = logging.getLogger(__name__)

HEAD_NAMES = ("num_heads", "num_attention_heads", "n_head", "n_heads", "heads", "num_attention_heads_per_partition",
              "num_q_heads", "n_q_heads")
KV_NAMES = ("num_key_value_heads", "num_kv_heads", "n_kv_heads", "n_kv_head", "kv_heads", "num_kv")
GROUP_NAMES = ("num_key_value_groups", "n_rep", "num_queries_per_kv", "kv_groups", "num_kv_groups")
ALL_HEAD_NAMES = ("all_head_size", "inner_dim", "split_size", "attn_dim", "inner_size", "proj_size")
WIDTH_NAMES = ("hidden_size", "embed_dim", "d_model", "n_embd", "dim", "hidden_dim", "intermediate_size", "ffn_dim",
               "mlp_dim", "d_ff", "n_inner", "channels", "num_channels", "embedding_dim", "model_dim", "width",
               "hidden_features", "features", "emb_dim", "embedding_size")
_WIDTH_SET = frozenset(WIDTH_NAMES)
NEVER = ("idx", "index", "layer", "stride", "padding", "dilation", "kernel", "seed", "vocab", "position", "eps",
         "num_labels", "num_classes", "window", "shift", "patch", "max_", "depth")


@dataclass
class Removal:
    """Which indices of every captured tensor the removed units take away (a :class:`RewriteContext`)."""

    graph: DependencyGraph
    removed: np.ndarray
    _cache: dict[int, list[np.ndarray | None]] = field(default_factory=dict)
    _gone: np.ndarray | None = None

    def __post_init__(self) -> None:
        self.removed = unique_ids(self.removed)  # sorted and distinct, whatever the caller gathered

    def gone(self, ids: torch.Tensor | np.ndarray) -> np.ndarray:
        """Whether each id's unit is removed (same shape as ``ids``)."""
        if self._gone is None:
            self._gone = np.zeros(len(self.graph.uf), dtype=bool)
            self._gone[self.removed] = True
        return self._gone[self.graph.uf.find(ids)]

    def shape(self, ref: Ref) -> tuple[int, ...]:
        return self.graph.capture.values[ref.key].shape

    def masks(self, ref: Ref) -> list[np.ndarray | None]:
        found = self._cache.get(ref.key)
        if found is None:
            info = self.graph.capture.values[ref.key]
            pd = self.graph.params.get(info.name) if info.origin in ("param", "buffer") else None
            if pd is not None:
                found = self.param_masks(pd.name)
            else:
                found = _dim_masks(self.graph, self.graph.ctx.ids(ref), info.shape, self, ref)
            self._cache[ref.key] = found
        return found

    def new_shape(self, ref: Ref) -> tuple[int, ...]:
        return tuple(s - int(m.sum()) if m is not None else s for s, m in zip(self.shape(ref), self.masks(ref),
                                                                                 strict=True))

    def param_masks(self, name: str) -> list[np.ndarray | None]:
        """Per dim of a parameter or buffer, its removed indices (None: none)."""
        pd = self.graph.params[name]
        out = []
        for ids in pd.ids:
            r = self.gone(ids)
            out.append(r if r.any() else None)
        return out

    def keep(self, ids: torch.Tensor | None) -> np.ndarray | None:
        return None if ids is None else ~self.gone(ids)


def _dim_masks(graph: DependencyGraph, ids: torch.Tensor, shape: tuple[int, ...], removal: Removal,
               ref: Ref) -> list[np.ndarray | None]:
    """Per dim, which indices are removed; checks the removed set is a union of whole slices (the tensor stays
    rectangular)."""
    r = removal.gone(ids).reshape(tuple(ids.shape))
    if not r.any():
        return [None] * len(shape)
    pad = len(shape) - r.ndim
    r = r.reshape((1,) * pad + r.shape)
    varying = [d for d, size in enumerate(r.shape) if size > 1]
    if len(varying) == 1:  # ids along one dim only (a conv's or linear's channels): any cut of it is rectangular
        single: list[np.ndarray | None] = [None] * r.ndim
        single[varying[0]] = r.reshape(-1)
        return single
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
    if not np.array_equal(recon, r) or all(m is None for m in masks):
        producer = graph.capture.values[ref.key].producer
        where = graph.capture.calls[producer].where() if producer is not None else "an input"
        raise TraceError(f"pruning would cut a non-rectangular piece out of the result of {where}: its channels "
                         "are coupled in a way slimkit cannot follow; skip the layers around it (skip=[...])")
    return masks


def apply_removal(graph: DependencyGraph, removed: Iterable[int], *, model: nn.Module | None = None,
                  verify: bool = True, deadline: Deadline | None = None) -> nn.Module:
    """The graph's model with the units ``removed`` (union-find roots) physically removed.

    Works on ``model`` if given (a :func:`shared_copy` of ``graph.model``, e.g. with a criterion's weight updates),
    else on a fresh shared copy; ``graph.model`` itself is left as it is. With ``verify`` the pruned model is run
    once on the example inputs and every op's result shape checked (:func:`verify_removal`).
    """
    removal = Removal(graph, removed if isinstance(removed, np.ndarray) else list(removed))
    target = model if model is not None else shared_copy(graph.model)
    changed = _slice_parameters(target, removal)
    attributes: dict[str, dict[str, Any]] = {}
    _resize_modules(target, removal, changed, attributes)
    _attention_attributes(target, removal, attributes)
    _width_attributes(target, removal, changed, attributes)
    if verify:
        from slimkit.graph._verify import verify_removal

        verify_removal(graph, target, removal, attributes, deadline=deadline)
    unshare_(target, graph.original_params)
    target.slimkit_attributes = attributes
    return target


def _slice_parameters(model: nn.Module, removal: Removal) -> set[str]:
    """Replace every parameter/buffer with pruned dims by its slice (ties kept); returns the changed names."""
    names: dict[int, str] = {}  # a tensor's name as named_parameters / named_buffers give it (the first one met)
    new: dict[int, torch.Tensor] = {}
    changed: set[str] = set()
    for module_name, module in model.named_modules():
        prefix = f"{module_name}." if module_name else ""
        for store in (module._parameters, module._buffers):
            for attr, t in list(store.items()):
                if t is None:
                    continue
                name = names.setdefault(id(t), prefix + attr)
                # a `<param>_mask` buffer (unstructured pruning's weight_mask, torch.nn.utils.prune's) is never read
                # by the forward, so the capture does not see it: it follows its parameter's slicing
                follows = name if name in removal.graph.params else _masked_param(name, t, removal)
                if follows is None:
                    continue
                if id(t) not in new:
                    masks = removal.param_masks(follows)
                    if all(m is None for m in masks):
                        continue
                    value = t.detach()
                    for d, m in enumerate(masks):
                        if m is not None:
                            value = value.index_select(d, torch.as_tensor(np.flatnonzero(~m), dtype=torch.long,
                                                                          device=value.device))
                    value = value.clone() if value.data_ptr() == t.data_ptr() else value
                    new[id(t)] = nn.Parameter(value, requires_grad=t.requires_grad) if isinstance(
                        t, nn.Parameter) else value
                    if follows == name:  # the graph's own tensors: what later steps read back by name
                        changed.add(name)
                store[attr] = new[id(t)]
    return changed


def _masked_param(name: str, tensor: torch.Tensor, removal: Removal) -> str | None:
    """The parameter a ``<param>_mask`` buffer ``name`` masks, when the graph holds it with the buffer's shape."""
    if not name.endswith(MASK_SUFFIX):
        return None
    param = name[: -len(MASK_SUFFIX)]
    held = removal.graph.params.get(param)
    return param if held is not None and tuple(held.shape) == tuple(tensor.shape) else None


def _owners(modules: dict[str, nn.Module], changed: set[str]) -> dict[str, nn.Module]:
    return {owner: modules[owner] for owner in {name.rpartition(".")[0] for name in changed}}


def _set(attributes: dict[str, dict[str, Any]], module_name: str, module: nn.Module, attr: str, value: Any) -> None:
    setattr(module, attr, value)
    attributes.setdefault(module_name, {})[attr] = value


def _resize_modules(model: nn.Module, removal: Removal, changed: set[str],
                    attributes: dict[str, dict[str, Any]]) -> None:
    uses_by_module: dict[str, Any] = {}
    for use in removal.graph.uses.values():
        uses_by_module.setdefault(use.name, use)
    modules = module_map(model)
    owners = _owners(modules, changed)
    ancestors = {name.rsplit(".", k)[0] for name in owners for k in range(1, name.count(".") + 1)}
    for name in uses_by_module:  # a leaf module (one recorded op) owns its children's channels too
        if name in ancestors and name not in owners:
            owners[name] = modules[name]
    replaced: dict[int, Any] = {}
    for name, module in owners.items():
        rule = module_rule(module)
        if rule is None or rule.resize is None:
            continue
        use = uses_by_module.get(name)
        info = ResizeInfo(use, removal.keep(use.in_map) if use else None, removal.keep(use.out_map) if use else None,
                          replaced)
        for attr, value in rule.resize(module, info).items():
            attributes.setdefault(name, {})[attr] = value


def _int_attr(module: nn.Module, attr: str) -> int | None:
    value = module.__dict__.get(attr)
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def _attention_attributes(model: nn.Module, removal: Removal, attributes: dict[str, dict[str, Any]]) -> None:
    """Head-count attributes of each module running an attention op, from the heads that op kept."""
    by_scope: dict[str, dict[str, tuple[int, int]]] = {}
    widths: dict[str, dict[int, int]] = {}
    conflicts: set[str] = set()
    for site in removal.graph.ctx.attention:
        q_shape = removal.shape(site.query)
        hq = q_shape[site.head_dim]
        hq_new = removal.new_shape(site.query)[site.head_dim]
        n_rep, kv = site.n_rep, site.kv_heads or hq
        if site.gqa == "query" and n_rep > 1:
            kv_new, rep_new = kv, hq_new // kv
        else:
            kv_new, rep_new = hq_new // n_rep, n_rep
        found = {"heads": (hq, hq_new), "kv": (kv, kv_new), "groups": (n_rep, rep_new)}
        if by_scope.setdefault(site.scope, found) != found:
            conflicts.add(site.scope)
        # heads × head size: the head size is the last dim of q (scores) or of the result (p · v)
        for size in {q_shape[-1], removal.shape(site.key)[-1]}:
            widths.setdefault(site.scope, {})[hq * size] = hq_new * size
    for scope, found in by_scope.items():
        if scope in conflicts:
            continue
        module = model.get_submodule(scope) if scope else model
        for names, key in ((HEAD_NAMES, "heads"), (KV_NAMES, "kv"), (GROUP_NAMES, "groups")):
            old, new = found[key]
            if old == new:
                continue
            for attr in names:
                if _int_attr(module, attr) == old:
                    _set(attributes, scope, module, attr, new)
        for attr in ALL_HEAD_NAMES:
            value = _int_attr(module, attr)
            if value is not None and widths[scope].get(value, value) != value:
                _set(attributes, scope, module, attr, widths[scope][value])


def _width_attributes(model: nn.Module, removal: Removal, changed: set[str],
                      attributes: dict[str, dict[str, Any]]) -> None:
    """Width attributes (``hidden_size``, ``intermediate_size``, ...) of modules whose own or direct children's
    parameter dims of that size all shrank to the same new size."""
    if not changed:
        return
    new_shapes = {n: tuple(t.shape) for n, t in list(model.named_parameters()) + list(model.named_buffers())}
    old_shapes = {n: removal.graph.params[n].shape for n in changed}
    for name, module in model.named_modules():
        if _WIDTH_SET.isdisjoint(module.__dict__):
            continue
        candidates = [a for a in WIDTH_NAMES if _int_attr(module, a) is not None and a not in attributes.get(name, {})]
        if not candidates:
            continue
        prefix = f"{name}." if name else ""
        dims: list[tuple[int, int]] = []
        for pname, new_shape in new_shapes.items():
            if not pname.startswith(prefix) or pname[len(prefix):].count(".") > 1:
                continue
            old_shape = old_shapes.get(pname, new_shape)
            dims.extend(zip(old_shape, new_shape, strict=True))
        for attr in candidates:
            value = _int_attr(module, attr)
            news = {n for o, n in dims if o == value}
            if len(news) == 1 and value not in news:
                _set(attributes, name, module, attr, news.pop())
