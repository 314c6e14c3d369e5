"""The one case a ``torch.fx.GraphModule`` comes back: the model's own code passes a size as a constant.

``x.view(-1, 16 * 5 * 5)`` in a classic LeNet cannot follow pruning in place: no attribute holds the 400, and a
module's source is not ours to edit. When the check of the pruned model finds such a constant and the model can
be traced symbolically, the same removal is applied to a ``torch.fx`` trace of it instead, whose graph holds the
constants as node arguments that each op's rewrite rule updates. The GraphModule keeps the model's submodules and
parameter names (its ``state_dict`` keys are the model's), trains and exports like the model, but is not its class;
``pruning_info`` says why it was returned.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
import torch.fx as fx
from torch import nn

from slimkit._errors import TraceError
from slimkit._select import matches
from slimkit.graph._apply import Removal, apply_removal
from slimkit.graph._capture import Call, Ref, capture
from slimkit.graph._deadline import Deadline
from slimkit.graph._graph import DependencyGraph, _is_leaf, propagate, unshare_
from slimkit.graph._rules import op_rule
from slimkit.graph._unionfind import unique_ids
from slimkit.graph._verify import verify_removal

log = logging.getLogger(__name__)


class _Tracer(fx.Tracer):
    def __init__(self, leaves: Sequence[str]) -> None:
        super().__init__()
        self.leaves = tuple(leaves)

    def is_leaf_module(self, m: nn.Module, qualname: str) -> bool:
        return _is_leaf(m) or any(matches(qualname, p) for p in self.leaves) or super().is_leaf_module(m, qualname)


def symbolic_trace(model: nn.Module, leaf_modules: Sequence[str] = ()) -> fx.GraphModule:
    """``torch.fx`` trace keeping leaf modules whole; :class:`TraceError` if the model's code cannot be traced."""
    tracer = _Tracer(leaf_modules)
    try:
        graph = tracer.trace(model)
    except Exception as error:
        raise TraceError(f"torch.fx cannot trace {type(model).__name__} ({type(error).__name__}: {error})") from None
    return fx.GraphModule(tracer.root, graph, type(model).__name__)


def prune_as_graph_module(graph: DependencyGraph, removal: Removal, model: nn.Module,
                          deadline: Deadline | None = None) -> tuple[nn.Module, dict[str, dict[str, Any]]]:
    """Apply ``removal`` (of ``graph``) to a ``torch.fx`` trace of ``model`` (unpruned, with any criterion weight
    updates) and rewrite the traced constants; returns the pruned GraphModule and the attributes set."""
    if isinstance(graph.example_inputs, dict):
        raise TraceError("keyword inputs: the GraphModule fallback needs positional example inputs")
    gm = symbolic_trace(model, graph.leaf_modules)
    gm.eval()
    cap = capture(gm, graph.example_inputs, leaf_modules=graph.leaf_modules, is_leaf=_is_leaf, deadline=deadline)
    traced = DependencyGraph(gm, cap, propagate(cap, gm, gqa=graph.ctx.gqa, deadline=deadline), graph.example_inputs)
    traced.leaf_modules = graph.leaf_modules
    traced.original_params = graph.original_params
    removed = _map_removal(graph, removal, traced)
    new_removal = Removal(traced, removed)
    for name in graph.params:
        if name in traced.params and not _same(removal.param_masks(name), new_removal.param_masks(name)):
            raise TraceError(f"the traced model couples '{name}' differently from the model: cannot rewrite it")
    pruned = apply_removal(traced, removed, model=gm, verify=False)
    attributes = pruned.__dict__.pop("slimkit_attributes", {})
    for call in cap.calls:
        _rewrite_node(new_removal, call)
    gm.graph.eliminate_dead_code()
    gm.recompile()
    verify_removal(traced, gm, new_removal, attributes, deadline=deadline)
    unshare_(gm, graph.original_params)
    return gm, attributes


def _same(a: list[np.ndarray | None], b: list[np.ndarray | None]) -> bool:
    return all((x is None and y is None) or (x is not None and y is not None and np.array_equal(x, y))
               for x, y in zip(a, b, strict=True))


def _map_removal(graph: DependencyGraph, removal: Removal, traced: DependencyGraph) -> np.ndarray:
    """The traced graph's units holding exactly the parameter slices the removal takes."""
    roots: list[np.ndarray] = []
    for name, masks in ((n, removal.param_masks(n)) for n in graph.params):
        pd = traced.params.get(name)
        if pd is None:
            continue
        for ids, mask in zip(pd.ids, masks, strict=True):
            if mask is not None:
                roots.append(traced.uf.find(ids[torch.as_tensor(mask)]))
    return unique_ids(np.concatenate(roots)) if roots else np.zeros(0, dtype=np.int64)


def _rewrite_node(removal: Removal, call: Call) -> None:
    node = call.node
    if node is None or node.op not in ("call_function", "call_method") or call.module is not None:
        return
    name = call.target.__name__ if hasattr(call.target, "__name__") else None
    if (node.op == "call_function" and node.target is not call.target) or (
            node.op == "call_method" and node.target != name):
        return  # the node is a Python function that ran this op inside: nothing to rewrite at this level
    rule = op_rule(call.target)
    if rule is None or rule.rewrite is None:
        return
    result = rule.rewrite(removal, call)
    if result is None:
        return
    target, args, kwargs = result
    node.args = _merge(node.args, args)
    node.kwargs = {k: _merge(node.kwargs.get(k), v) for k, v in kwargs.items()}
    if target is not call.target:
        if node.op == "call_method":
            node.target = target.__name__
        else:
            node.target = target


def _merge(old: Any, new: Any) -> Any:
    """New constant arguments, with the node's own graph inputs where the call had tensors."""
    if isinstance(new, Ref):
        return old
    if isinstance(new, (tuple, list)):
        olds = list(old) if isinstance(old, (tuple, list)) else [None] * len(new)
        olds += [None] * (len(new) - len(olds))
        return type(new)(_merge(o, n) for o, n in zip(olds, new, strict=False))
    return new
