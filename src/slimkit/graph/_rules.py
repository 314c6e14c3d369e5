"""The graph's extension points: one registry entry per op and one per module type.

An :class:`OpRule` says, side by side, how channel ids pass through an op (``propagate``) and how the op's shape
arguments change once units are removed (``rewrite``: used to check the pruned model and to fix size attributes or
graph constants). Register a function or tensor method with ``@register_op(torch.roll, torch.Tensor.roll)``.

A :class:`ModuleRule` is for a module type: ``resize`` sets its size attributes (``in_features``,
``num_features``, ...) from its already-sliced parameters; a ``leaf`` rule records the whole module call as one op
(``nn.MultiheadAttention``, whose fused kernels are not worth following inside). Register with
``@register_module(nn.Linear)``, or with a ``"package.module.Class"`` string for a type whose package should not
be imported (``"transformers.pytorch_utils.Conv1D"``).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np
from torch import nn

from slimkit.graph._capture import Call, Ref, op_key, op_name

if TYPE_CHECKING:
    from slimkit.graph._context import ModuleUse, TraceContext


class RewriteContext(Protocol):
    """What a rewrite sees: which indices of each value are removed."""

    def masks(self, ref: Ref) -> list[np.ndarray | None]:
        """Per dim of the value, a boolean array of removed indices (None: nothing removed along that dim)."""

    def shape(self, ref: Ref) -> tuple[int, ...]:
        """The value's shape before pruning."""

    def new_shape(self, ref: Ref) -> tuple[int, ...]:
        """The value's shape after pruning."""


Propagate = Callable[["TraceContext", Call], Any]
Rewrite = Callable[[RewriteContext, Call], "tuple[Any, tuple, dict] | None"]


@dataclass(frozen=True)
class OpRule:
    """``propagate(ctx, call)`` returns the ids of ``call.out`` (same structure); ``rewrite(rctx, call)`` returns the
    ``(target, args, kwargs)`` the op must be called with after pruning, or None when they do not change."""

    name: str
    propagate: Propagate
    rewrite: Rewrite | None = None
    doc: str = ""


@dataclass(frozen=True)
class ResizeInfo:
    """What a module's ``resize`` sees: its use (channel maps and kind), which of its in/out channels stay, and the
    tensors resize rules already replaced in this removal (``id(old) → new``, shared by every rule: a tensor two
    modules share is transformed once and stays shared)."""

    use: ModuleUse | None
    keep_in: np.ndarray | None
    keep_out: np.ndarray | None
    replaced: dict[int, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class ModuleRule:
    """``resize(module, info)`` sets the module's size attributes after its parameters were sliced and returns
    ``{attribute: new value}``; ``leaf`` (a propagate function) makes every call of the module one recorded op;
    ``macs(call, shape, module)`` counts such a call's multiply-accumulates from its inputs' shapes (``shape``
    maps a recorded value to its shape, before or after a removal)."""

    name: str
    resize: Callable[[nn.Module, ResizeInfo], dict[str, Any]] | None = None
    leaf: Propagate | None = None
    macs: Callable[[Any, Callable[[Any], tuple[int, ...]], nn.Module], int] | None = None


_OPS: dict[Any, OpRule] = {}
_MODULES: dict[Any, ModuleRule] = {}


def register_op(*targets: Any, rewrite: Rewrite | None = None, name: str | None = None
                ) -> Callable[[Propagate], Propagate]:
    """Decorator on a propagate function: ``@register_op(torch.roll, torch.Tensor.roll, rewrite=...)``."""

    def decorator(fn: Propagate) -> Propagate:
        rule = OpRule(name or fn.__name__, fn, rewrite, (fn.__doc__ or "").strip())
        for target in targets:
            _OPS[op_key(target)] = rule
        return fn

    return decorator


def op_rule(target: Any) -> OpRule | None:
    """The rule for a recorded target (None: the op is opaque)."""
    try:
        return _OPS.get(op_key(target))
    except TypeError:  # an unhashable target
        return None


def op_rules() -> dict[str, tuple[OpRule, list[str]]]:
    """Every registered rule by name, with the ops it covers."""
    out: dict[str, tuple[OpRule, list[str]]] = {}
    for target, rule in _OPS.items():
        out.setdefault(rule.name, (rule, []))[1].append(op_name(target))
    return out


def register_module(*types: type | str, resize: Callable[[nn.Module, ResizeInfo], dict[str, Any]] | None = None,
                    leaf: Propagate | None = None, macs: Callable[..., int] | None = None,
                    name: str | None = None) -> ModuleRule:
    """Register a :class:`ModuleRule` for module types (classes, or ``"package.module.Class"`` strings)."""
    label = name or ", ".join(t if isinstance(t, str) else t.__name__ for t in types)
    rule = ModuleRule(label, resize, leaf, macs)
    for t in types:
        _MODULES[t] = rule
    return rule


def module_rule(module: nn.Module) -> ModuleRule | None:
    """The rule for ``module``'s type or its nearest registered base class."""
    for klass in type(module).__mro__:
        rule = _MODULES.get(klass) or _MODULES.get(f"{klass.__module__}.{klass.__qualname__}")
        if rule is not None:
            return rule
    return None


def module_rules() -> dict[str, ModuleRule]:
    """Every registered module rule by name."""
    return {rule.name: rule for rule in _MODULES.values()}
