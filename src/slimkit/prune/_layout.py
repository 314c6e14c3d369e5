"""A channel-pruned model's layout, written down and rebuilt without running the pruning again.

Structured pruning changes two things about a model: its tensors' shapes and the size attributes modules keep
(``Conv2d.out_channels``, ``BatchNorm2d.num_features``, a shortcut's padding). Both are plain numbers, so a file can
hold them next to the weights; rebuilding is: build the unpruned architecture, give each tensor its recorded shape,
set each recorded attribute, load the weights. Everything a file says is checked to be a pruning (same tensors, same
rank, no dimension larger; an attribute the module already holds as a whole number, no larger) before anything is
allocated or set, so a damaged or hostile file cannot make a loader allocate absurd sizes or call a setter.
``save_pruned`` / ``load_pruned`` (Hugging Face folders) and the compressed container use it.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from slimkit._errors import CheckpointError


def _whole(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def _size_like(value: Any) -> bool:
    """A whole number or a tuple of them: the kinds of size attribute pruning rewrites."""
    return _whole(value) or (isinstance(value, tuple) and bool(value) and all(_whole(v) for v in value))


def pruned_shapes(model: nn.Module, shapes: dict[str, Any], where: str, *, fix: str) -> dict[str, tuple[int, ...]]:
    """The file's tensor shapes, each checked before anything is allocated: a tensor the model has, of the same
    rank, no dim larger than the unpruned one (pruning only removes). ``fix`` ends the error (what to do)."""
    full = {n: tuple(t.shape) for n, t in model.state_dict(keep_vars=True).items()}
    out = {}
    for name, shape in shapes.items():
        if (name not in full or not isinstance(shape, list | tuple) or len(shape) != len(full[name])
                or any(isinstance(d, bool) or not isinstance(d, int) or not 0 <= d <= f
                       for d, f in zip(shape, full[name]))):
            raise CheckpointError(f"{where}: the shape {list(shape) if isinstance(shape, tuple) else shape!r} of "
                                  f"'{name}' is not a pruning of the model's {list(full.get(name, ()))}: {fix}")
        out[name] = tuple(shape)
    return out


#: the size attributes pruning sets on torch's own modules (their slimkit module rules and a view's shape); any other
#: attribute of a torch module (a stride, a padding, a flatten's dims) pruning never changes, so a file may not either
_TORCH_SIZE_ATTRIBUTES = frozenset({
    "in_features", "out_features", "in_channels", "out_channels", "groups", "num_features", "num_channels",
    "num_groups", "normalized_shape", "embedding_dim", "num_parameters", "embed_dim", "kdim", "vdim", "head_dim",
    "num_heads", "unflattened_size"})


def _may_set(module: nn.Module, attr: str) -> bool:
    """Whether pruning can have set ``attr`` on ``module``: never a private name; on a module of torch's own only a
    size attribute its rule sets; on a model's own module any whole number (pruning rewrites sizes a model's code
    keeps, such as a shortcut's padding or a head count, wherever they are)."""
    if attr.startswith("_"):
        return False
    return attr in _TORCH_SIZE_ATTRIBUTES or not type(module).__module__.startswith("torch.nn")


def _size_attributes(modules: dict[str, nn.Module], module_name: Any, attrs: Any, where: str, *,
                     fix: str) -> list[tuple[nn.Module, str, int | tuple[int, ...]]]:
    """(module, attribute, value) for each size attribute the file sets, checked: only an attribute pruning may
    have set (:func:`_may_set`), that the module already holds as its own whole number (or tuple of them), to a
    whole number (or a tuple of as many) no larger — never a property or method, whose setter would run code
    (transformers' ``use_kernels`` fetches kernels from the Hub). Modules are looked up in ``modules`` (the model's
    ``named_modules``), never by attribute access, which would run a property's getter."""
    module = modules.get(module_name) if isinstance(module_name, str) else None
    if module is None or not isinstance(attrs, dict):
        raise CheckpointError(f"{where}: attributes of '{module_name}', which the model does not have: {fix}")
    out = []
    for attr, value in attrs.items():
        current = vars(module).get(attr) if isinstance(attr, str) and _may_set(module, attr) else None
        value = tuple(value) if isinstance(value, list) else value
        # pruning only shrinks: a size above the unpruned module's would only allocate more at the first forward
        same_kind = (_whole(current) and _whole(value) and value <= current) or (
            isinstance(current, tuple) and isinstance(value, tuple) and len(current) == len(value)
            and all(_whole(v) for v in (*current, *value)) and all(v <= c for v, c in zip(value, current)))
        if not same_kind:
            raise CheckpointError(f"{where}: '{module_name}.{attr}' = {value!r} is not a size attribute pruning sets "
                                  f"(a whole number the module already holds, no larger): {fix}")
        out.append((module, attr, value))
    return out


def reshape_(model: nn.Module, shapes: dict[str, tuple[int, ...]]) -> None:
    """Give every parameter/buffer named in ``shapes`` an (uninitialised) tensor of that shape, ties kept."""
    names = {id(t): n for n, t in model.state_dict(keep_vars=True).items()}
    done: dict[int, torch.Tensor] = {}
    for module in model.modules():
        for store in (module._parameters, module._buffers):
            for attr, t in list(store.items()):
                if t is None or names.get(id(t)) not in shapes:
                    continue
                shape = shapes[names[id(t)]]
                if tuple(t.shape) == shape:
                    continue
                if id(t) not in done:
                    empty = torch.empty(shape, dtype=t.dtype, device=t.device)
                    done[id(t)] = nn.Parameter(empty, requires_grad=t.requires_grad) if isinstance(
                        t, nn.Parameter) else empty
                store[attr] = done[id(t)]


def apply_layout_(model: nn.Module, shapes: dict[str, Any], attributes: Any, where: str, *, fix: str) -> None:
    """Make the unpruned ``model`` the pruned layout a file records: every shape and attribute checked first
    (:func:`pruned_shapes`, :func:`_size_attributes`), then the tensors reshaped (uninitialised: load the weights
    next) and the attributes set."""
    checked = pruned_shapes(model, shapes, where, fix=fix)
    if not isinstance(attributes, dict):
        raise CheckpointError(f"{where}: its size attributes are {type(attributes).__name__}, not a mapping: {fix}")
    modules = dict(model.named_modules())
    settings = [s for name, attrs in attributes.items()
                for s in _size_attributes(modules, name, attrs, where, fix=fix)]
    reshape_(model, checked)
    for module, attr, value in settings:
        setattr(module, attr, value)


def changed_size_attributes(model: nn.Module, reference: nn.Module) -> dict[str, dict[str, Any]] | None:
    """The size attributes (whole numbers, tuples of them) in which ``model``'s modules differ from ``reference``'s
    — the unpruned architecture — as JSON keeps them; None when a difference is not a pruning (a module missing or
    of another class, a size that grew, an attribute of another kind)."""
    theirs = dict(reference.named_modules())
    out: dict[str, dict[str, Any]] = {}
    for name, module in model.named_modules():
        other = theirs.get(name)
        if other is None or type(other) is not type(module):
            return None
        changed = {}
        for attr, value in vars(module).items():
            if attr.startswith("_") or not _size_like(value):
                continue
            before = vars(other).get(attr)
            if before == value:
                continue
            if not _may_set(module, attr) or not _size_like(before) or type(before) is not type(value) or (
                    _whole(value) and value > before) or (
                    isinstance(value, tuple) and (len(value) != len(before)
                                                  or any(v > b for v, b in zip(value, before)))):
                return None
            changed[attr] = list(value) if isinstance(value, tuple) else value
        if changed:
            out[name] = changed
    return out
