"""Checking a pruned model: run it once more on the example inputs and compare every op's result shape with the
one the removal implies; fix a stale size an op reads from a module attribute when the op's rewrite rule says
which argument is stale and one attribute of the module running it holds that value."""

from __future__ import annotations

import logging
from typing import Any

import torch
from torch import nn

from slimkit._errors import TraceError
from slimkit.graph._apply import NEVER, Removal, _int_attr, _set
from slimkit.graph._capture import Call, Capture, CaptureFailed, capture, eval_mode, op_key
from slimkit.graph._deadline import Deadline
from slimkit.graph._graph import DependencyGraph, _is_leaf
from slimkit.graph._rules import op_rule

log = logging.getLogger(__name__)

DATA_DEPENDENT = {op_key(f) for f in (torch.nonzero, torch.Tensor.nonzero, torch.masked_select,
                                      torch.Tensor.masked_select, torch.unique, torch.Tensor.unique,
                                      torch.unique_consecutive, torch.argwhere, torch.Tensor.argwhere)}
MAX_FIX_ROUNDS = 4


class UnfollowedSize(TraceError):
    """The pruned model's code uses a size at ``scope`` (a module path) that slimkit could not rewrite, such as a
    reshape to a width computed from another tensor's shape: the pruning cannot be applied to that module as is."""

    def __init__(self, message: str, scope: str) -> None:
        super().__init__(message)
        self.scope = scope


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
            raise UnfollowedSize(
                f"the pruned model does not follow the pruning at {call.where()}: {message}. The code there uses a "
                "size slimkit cannot rewrite (a constant, or an attribute it cannot tell apart): compute it from "
                f"the tensor (x.shape[-1], -1 in view) or keep that module's channels (skip=['{call.scope}'] or "
                f"leaf_modules=['{call.scope}'])", call.scope)
    raise TraceError(f"the pruned model still does not follow the pruning after {MAX_FIX_ROUNDS} attribute fixes: "
                     "keep the affected modules' channels (skip=[...])")


def _first_mismatch(graph: DependencyGraph, model: nn.Module, removal: Removal,
                    deadline: Deadline | None) -> tuple[Call, Call | None, str] | None:
    if _shapes_follow(graph, model, removal, deadline):
        return None
    try:
        cap = _recapture(graph, model, deadline, record_args=True)
    except CaptureFailed as error:
        if error.index >= len(graph.capture.calls) or error.partial is None:
            raise
        earlier = _compare(graph, removal, error.partial, complete=False)
        if earlier is not None:
            return earlier
        cause = error.__cause__
        return graph.capture.calls[error.index], error.call, f"{type(cause).__name__}: {cause}"
    return _compare(graph, removal, cap, complete=True)


def _shapes_follow(graph: DependencyGraph, model: nn.Module, removal: Removal, deadline: Deadline | None) -> bool:
    """Whether one forward recording only result shapes ran the recorded ops with the expected shapes: the usual
    case, settled without the full record; a failure or a mismatch is left to the full capture, which names it and
    holds the arguments an attribute fix reads."""
    try:
        cap = _recapture(graph, model, deadline, record_args=False)
    except CaptureFailed:
        return False
    return _compare(graph, removal, cap, complete=True) is None


def _recapture(graph: DependencyGraph, model: nn.Module, deadline: Deadline | None, *, record_args: bool) -> Capture:
    """The pruned ``model`` captured on the graph's example inputs, with the graph's leaves, in eval mode."""
    with eval_mode(model):
        return capture(model, graph.example_inputs, leaf_modules=graph.leaf_modules, is_leaf=_is_leaf,
                       deadline=deadline, record_args=record_args)


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
