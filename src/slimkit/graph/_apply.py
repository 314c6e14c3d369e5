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
from slimkit.graph._capture import Call, Capture, CaptureFailed, Ref, capture, op_key
from slimkit.graph._deadline import Deadline
from slimkit.graph._graph import DependencyGraph, _is_leaf, shared_copy, unshare_
from slimkit.graph._rules import ResizeInfo, module_rule, op_rule

log = logging.getLogger(__name__)

HEAD_NAMES = ("num_heads", "num_attention_heads", "n_head", "n_heads", "heads", "num_attention_heads_per_partition",
              "num_q_heads", "n_q_heads")
KV_NAMES = ("num_key_value_heads", "num_kv_heads", "n_kv_heads", "n_kv_head", "kv_heads", "num_kv")
GROUP_NAMES = ("num_key_value_groups", "n_rep", "num_queries_per_kv", "kv_groups", "num_kv_groups")
ALL_HEAD_NAMES = ("all_head_size", "inner_dim", "split_size", "attn_dim", "inner_size", "proj_size")
WIDTH_NAMES = ("hidden_size", "embed_dim", "d_model", "n_embd", "dim", "hidden_dim", "intermediate_size", "ffn_dim",
               "mlp_dim", "d_ff", "n_inner", "channels", "num_channels", "embedding_dim", "model_dim", "width",
               "hidden_features", "features", "emb_dim", "embedding_size")
NEVER = ("idx", "index", "layer", "stride", "padding", "dilation", "kernel", "seed", "vocab", "position", "eps",
         "num_labels", "num_classes", "window", "shift", "patch", "max_", "depth")
DATA_DEPENDENT = {op_key(f) for f in (torch.nonzero, torch.Tensor.nonzero, torch.masked_select,
                                      torch.Tensor.masked_select, torch.unique, torch.Tensor.unique,
                                      torch.unique_consecutive, torch.argwhere, torch.Tensor.argwhere)}
MAX_FIX_ROUNDS = 4


@dataclass
class Removal:
    """Which indices of every captured tensor the removed units take away (a :class:`RewriteContext`)."""

    graph: DependencyGraph
    removed: np.ndarray
    _cache: dict[int, list[np.ndarray | None]] = field(default_factory=dict)
    _gone: np.ndarray | None = None

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
    removal = Removal(graph, np.unique(np.asarray(list(removed) if not isinstance(removed, np.ndarray) else removed,
                                                  dtype=np.int64)))
    target = model if model is not None else shared_copy(graph.model)
    changed = _slice_parameters(target, removal)
    attributes: dict[str, dict[str, Any]] = {}
    _resize_modules(target, removal, changed, attributes)
    _attention_attributes(target, removal, attributes)
    _width_attributes(target, removal, changed, attributes)
    if verify:
        verify_removal(graph, target, removal, attributes, deadline=deadline)
    unshare_(target, graph.original_params)
    target.slimkit_attributes = attributes
    return target


def _slice_parameters(model: nn.Module, removal: Removal) -> set[str]:
    """Replace every parameter/buffer with pruned dims by its slice (ties kept); returns the changed names."""
    names = {id(t): n for n, t in model.named_parameters()}
    names.update({id(t): n for n, t in model.named_buffers()})
    new: dict[int, torch.Tensor] = {}
    changed: set[str] = set()
    for module in model.modules():
        for store in (module._parameters, module._buffers):
            for attr, t in list(store.items()):
                if t is None:
                    continue
                name = names.get(id(t))
                if name is None or name not in removal.graph.params:
                    continue
                if id(t) not in new:
                    masks = removal.param_masks(name)
                    if all(m is None for m in masks):
                        continue
                    value = t.detach()
                    for d, m in enumerate(masks):
                        if m is not None:
                            value = value.index_select(d, torch.as_tensor(np.flatnonzero(~m), dtype=torch.long))
                    value = value.clone() if value.data_ptr() == t.data_ptr() else value
                    new[id(t)] = nn.Parameter(value, requires_grad=t.requires_grad) if isinstance(
                        t, nn.Parameter) else value
                    changed.add(name)
                store[attr] = new[id(t)]
    return changed


def _owners(model: nn.Module, changed: set[str]) -> dict[str, nn.Module]:
    owners = {}
    for name in changed:
        owner = name.rpartition(".")[0]
        owners[owner] = model.get_submodule(owner) if owner else model
    return owners


def _set(attributes: dict[str, dict[str, Any]], module_name: str, module: nn.Module, attr: str, value: Any) -> None:
    setattr(module, attr, value)
    attributes.setdefault(module_name, {})[attr] = value


def _resize_modules(model: nn.Module, removal: Removal, changed: set[str],
                    attributes: dict[str, dict[str, Any]]) -> None:
    uses_by_module: dict[str, Any] = {}
    for use in removal.graph.uses.values():
        uses_by_module.setdefault(use.name, use)
    for name, module in _owners(model, changed).items():
        rule = module_rule(module)
        if rule is None or rule.resize is None:
            continue
        use = uses_by_module.get(name)
        info = ResizeInfo(use, removal.keep(use.in_map) if use else None, removal.keep(use.out_map) if use else None)
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


# --- checking the pruned model --------------------------------------------------------------------------------

def verify_removal(graph: DependencyGraph, model: nn.Module, removal: Removal,
                   attributes: dict[str, dict[str, Any]] | None = None, *, deadline: Deadline | None = None) -> None:
    """Run ``model`` (pruned) on the example inputs and check every op's result shape against the expected one.

    A stale size an op reads from a module attribute is fixed when the op's rewrite rule and the attribute's
    value make it unambiguous; otherwise :class:`TraceError` names the module and op.
    """
    attributes = attributes if attributes is not None else {}
    for _ in range(MAX_FIX_ROUNDS):
        problem = _first_mismatch(graph, model, removal, deadline)
        if problem is None:
            return
        call, actual_call, message = problem
        if actual_call is None or not _fix_attributes(graph, model, removal, call, actual_call, attributes):
            raise TraceError(f"the pruned model does not follow the pruning at {call.where()}: {message}. The code "
                             "there uses a size slimkit cannot rewrite (a constant, or an attribute it cannot tell "
                             "apart): compute it from the tensor (x.shape[-1], -1 in view) or keep that module's "
                             f"channels (skip=['{call.scope}'] or leaf_modules=['{call.scope}'])")
    raise TraceError(f"the pruned model still does not follow the pruning after {MAX_FIX_ROUNDS} attribute fixes: "
                     "keep the affected modules' channels (skip=[...])")


def _first_mismatch(graph: DependencyGraph, model: nn.Module, removal: Removal,
                    deadline: Deadline | None) -> tuple[Call, Call | None, str] | None:
    was_training = model.training
    model.eval()
    try:
        cap = capture(model, graph.example_inputs, leaf_modules=graph.leaf_modules, is_leaf=_is_leaf,
                      deadline=deadline)
    except CaptureFailed as error:
        if error.index >= len(graph.capture.calls) or error.partial is None:
            raise
        earlier = _compare(graph, removal, error.partial, complete=False)
        if earlier is not None:
            return earlier
        cause = error.__cause__
        return graph.capture.calls[error.index], error.call, f"{type(cause).__name__}: {cause}"
    finally:
        model.train(was_training)
    return _compare(graph, removal, cap, complete=True)


def _compare(graph: DependencyGraph, removal: Removal, cap: Capture,
             complete: bool) -> tuple[Call, Call | None, str] | None:
    calls, after = graph.capture.calls, cap.calls
    for i, call in enumerate(calls):
        if i >= len(after):
            return (call, None, "the pruned model ran fewer ops") if complete else None
        other = after[i]
        if op_key(call.target) != op_key(other.target) or call.module_name != other.module_name:
            return call, None, f"the pruned model ran {other.where()} instead"
        rule = op_rule(call.target) if call.module is None else None
        if op_key(call.target) in DATA_DEPENDENT or (rule is not None and rule.name == "constant"):
            continue  # a data-dependent size, or a factory sized from a pruned tensor: its users are checked
        for r1, r2 in zip(call.outs(), other.outs(), strict=False):
            expected, actual = removal.new_shape(r1), cap.values[r2.key].shape
            if expected != actual:
                return call, other, f"result shape {tuple(actual)}, expected {tuple(expected)}"
    for r1, r2 in zip(graph.capture.output_refs(), cap.output_refs(), strict=False):
        if graph.capture.values[r1.key].shape != cap.values[r2.key].shape:
            return calls[-1], None, "the model's output shape changed"
    return None


def _ints(obj: Any, path: tuple = ()) -> dict[tuple, int]:
    if isinstance(obj, bool):
        return {}
    if isinstance(obj, int):
        return {path: obj}
    if isinstance(obj, (tuple, list)):
        out: dict[tuple, int] = {}
        for i, o in enumerate(obj):
            out.update(_ints(o, (*path, i)))
        return out
    if isinstance(obj, dict):
        out = {}
        for k, o in obj.items():
            out.update(_ints(o, (*path, k)))
        return out
    return {}


def _fix_attributes(graph: DependencyGraph, model: nn.Module, removal: Removal, call: Call, actual: Call,
                    attributes: dict[str, dict[str, Any]]) -> bool:
    """Update module attributes holding a value the op still receives unpruned (an int, or a whole shape/pad
    tuple); the same attribute of every module of the same type running the same op is updated alike."""
    stale = _stale_arguments(removal, call, actual)
    if not stale:
        return False
    fixes: list[tuple[int, tuple[str, ...], tuple]] = []
    for path, old, new in stale:
        if any(path[:len(done)] == done for _, _, done in fixes):
            continue  # inside a tuple already fixed as a whole
        for level, scope in enumerate(_scopes(call.scope)[:2]):  # the module running the op, or its parent
            module = model.get_submodule(scope) if scope else model
            names = _holding(module, old)
            if names:
                for attr in names:
                    log.info("pruning: %s.%s %s -> %s (read by %s)", scope or "<root>", attr, old, new, call.where())
                    _set(attributes, scope, module, attr, new)
                fixes.append((level, tuple(names), path))
                break
    if not fixes:
        return False
    kind = [type(model.get_submodule(s) if s else model) for s in _scopes(call.scope)]
    for other in graph.capture.calls:  # the same op in every block of the same kind
        if other is call or op_key(other.target) != op_key(call.target):
            continue
        chain = _scopes(other.scope)
        if [type(model.get_submodule(s) if s else model) for s in chain] != kind:
            continue
        expected = _rewritten(removal, other)
        if expected is None:
            continue
        for level, names, path in fixes:
            old, new = _at(other, path), _at_args(expected, path)
            if old is None or new is None or old == new:
                continue
            module = model.get_submodule(chain[level]) if chain[level] else model
            for attr in names:
                if module.__dict__.get(attr) == old:
                    _set(attributes, chain[level], module, attr, new)
    return True


def _scopes(scope: str) -> list[str]:
    chain = [scope]
    while chain[-1]:
        chain.append(chain[-1].rpartition(".")[0])
    return chain


def _holding(module: nn.Module, value: Any) -> list[str]:
    return [a for a, v in vars(module).items() if not a.startswith("_") and not any(w in a.lower() for w in NEVER)
            and (_int_attr(module, a) == value if isinstance(value, int) else v == value)]


def _rewritten(removal: Removal, call: Call) -> tuple[tuple, dict] | None:
    rule = op_rule(call.target)
    if rule is None or rule.rewrite is None:
        return None
    try:
        result = rule.rewrite(removal, call)
    except TraceError:
        return None
    return None if result is None else (result[1], result[2])


def _at(call: Call, path: tuple) -> Any:
    return _at_args((call.args, call.kwargs), path)


def _at_args(args: tuple[tuple, dict], path: tuple) -> Any:
    obj: Any = args
    for key in path:
        try:
            obj = obj[key]
        except (IndexError, KeyError, TypeError):
            return None
    return obj


def _stale_arguments(removal: Removal, call: Call, actual: Call) -> list[tuple[tuple, Any, Any]]:
    """(path, old, new) of each argument the pruned run passed unchanged where the rewrite expects a new value:
    integers, and whole int tuples (a pad or shape tuple held in one attribute)."""
    expected = _rewritten(removal, call)
    if expected is None:
        return []
    before, after, got = _ints((call.args, call.kwargs)), _ints(expected), _ints((actual.args, actual.kwargs))
    stale = []
    for side, (old_side, new_side, got_side) in enumerate(zip((call.args, call.kwargs), expected,
                                                              (actual.args, actual.kwargs), strict=True)):
        keys = range(len(old_side)) if side == 0 else old_side.keys()
        for k in keys:
            old, new, now = _at_args(old_side, (k,)), _at_args(new_side, (k,)), _at_args(got_side, (k,))
            if isinstance(old, tuple) and _ints(old) and old == now and new is not None and tuple(new) != old:
                stale.append(((side, k), old, tuple(new)))
    stale += [(p, before[p], after[p]) for p in after if p in before and p in got and got[p] == before[p]
              and after[p] != before[p]]
    return stale
