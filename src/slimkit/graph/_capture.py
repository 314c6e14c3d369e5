"""Capturing a model: one real forward recorded op by op (``TorchFunctionMode`` + module hooks).

Every torch function or tensor method the forward calls is recorded as a :class:`Call` whose tensor arguments are
:class:`Ref` s to :class:`ValueInfo` records (shape, dtype, where the tensor came from: the example inputs, a
parameter or buffer of the model, a constant, or an earlier call). Module boundaries come from global forward
hooks, so each call knows the module whose code ran it (its ``scope``); modules marked as leaves are recorded as one
call (their inside is not looked at).

The forward runs on real tensors, so Python control flow, data-dependent branches, caches and keyword-only
arguments all work as in the user's own code. The cost is one forward at the example size plus a few microseconds
per op.
"""

from __future__ import annotations

import contextlib
import weakref
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn
from torch.overrides import TorchFunctionMode

from slimkit._errors import TraceError
from slimkit.graph._deadline import Deadline

#: argument types :meth:`_Recorder.refs` returns as they are, without looking inside
_ATOMS = frozenset({int, float, bool, str, type(None), torch.dtype, torch.device})

#: integer / bool tensors up to this many elements keep their values (indices and masks an op needs to be replayed)
KEEP_DATA = 1 << 20


@dataclass(frozen=True, slots=True)
class Ref:
    """A tensor argument or result of a recorded call: an index into :attr:`Capture.values`."""

    key: int


@dataclass(eq=False)
class ValueInfo:
    """One tensor seen during capture.

    ``origin``: ``"input"`` (an example input), ``"param"`` / ``"buffer"`` (of the model; ``name`` is its qualified
    name), ``"const"`` (a tensor the recorder did not see being made) or ``"op"`` (made by call ``producer``).
    ``data`` keeps the values of small integer/bool tensors (indices, masks) so ops using them can be replayed.
    """

    shape: tuple[int, ...]
    dtype: torch.dtype
    origin: str
    name: str | None = None
    producer: int | None = None
    data: torch.Tensor | None = None


@dataclass(eq=False)
class Call:
    """One recorded op: ``target(*args, **kwargs)`` with tensors replaced by :class:`Ref`.

    ``scope`` is the qualified name of the innermost module whose forward ran it (``""`` for the root). For a leaf
    module's call, ``module`` is the module, ``module_name`` its name and ``target`` its type.
    """

    index: int
    target: Any
    args: tuple
    kwargs: dict
    out: Any
    scope: str
    module: nn.Module | None = None
    module_name: str | None = None
    node: Any = None  # the torch.fx node that ran it, when a GraphModule was captured node by node

    @property
    def name(self) -> str:
        """A readable name of the op (``linear``, ``Tensor.view``, ``MultiheadAttention``)."""
        return op_name(self.target)

    def arg(self, position: int, keyword: str, default: Any = None) -> Any:
        """The argument given at ``position`` or as ``keyword`` (``default`` if neither)."""
        if position < len(self.args):
            return self.args[position]
        return self.kwargs.get(keyword, default)

    def refs(self) -> list[Ref]:
        """Every tensor argument, in order (including those inside lists)."""
        found: list[Ref] = []
        _walk((self.args, self.kwargs), found)
        return found

    def outs(self) -> list[Ref]:
        """Every tensor result, in order."""
        found: list[Ref] = []
        _walk(self.out, found)
        return found

    def where(self) -> str:
        """``op 'Tensor.view' in module 'encoder.layer.0.attention'`` (for error messages)."""
        if self.module_name is not None:
            return f"module '{self.module_name}' ({self.name})"
        return f"op '{self.name}' in module '{self.scope or '<root>'}'"


def _walk(obj: Any, found: list[Ref]) -> None:
    if isinstance(obj, Ref):
        found.append(obj)
    elif isinstance(obj, (tuple, list)):
        for item in obj:
            _walk(item, found)
    elif isinstance(obj, dict):
        for item in obj.values():
            _walk(item, found)


def op_key(func: Any) -> Any:
    """The registry key of a recorded target: property getters (``x.T``) are keyed by their descriptor."""
    if getattr(func, "__name__", None) == "__get__" and hasattr(func, "__self__"):
        return func.__self__
    return func


def op_name(target: Any) -> str:
    target = op_key(target)
    if isinstance(target, type):
        return target.__name__
    owner = getattr(target, "__objclass__", None)
    name = getattr(target, "__name__", None) or repr(target)
    if owner is not None and issubclass(owner, torch._C.TensorBase):
        return f"Tensor.{name}"
    qualname = getattr(target, "__qualname__", "")
    if qualname.startswith(("Tensor.", "TensorBase.")):
        return "Tensor." + qualname.split(".", 1)[1]
    return name


@dataclass(eq=False)
class Capture:
    """A recorded forward: the calls in order, every tensor seen, the inputs and the output structure."""

    values: list[ValueInfo]
    calls: list[Call]
    inputs: tuple[tuple, dict]
    output: Any
    params: dict[str, Ref] = field(default_factory=dict)  # parameter/buffer name -> its value

    def info(self, ref: Ref) -> ValueInfo:
        return self.values[ref.key]

    def output_refs(self) -> list[Ref]:
        found: list[Ref] = []
        _walk(self.output, found)
        return found


def split_inputs(example_inputs: Any) -> tuple[tuple, dict]:
    """``(args, kwargs)`` for ``model(*args, **kwargs)``: a tensor is one argument, a tuple/list several, a dict
    keyword arguments (``{"input_ids": ..., "attention_mask": ...}``)."""
    if isinstance(example_inputs, Mapping):
        return (), dict(example_inputs)
    if isinstance(example_inputs, (tuple, list)):
        return tuple(example_inputs), {}
    return (example_inputs,), {}


def run_model(model: nn.Module, example_inputs: Any) -> Any:
    """Call ``model`` the way :func:`split_inputs` describes."""
    args, kwargs = split_inputs(example_inputs)
    return model(*args, **kwargs)


def _is_leaf_candidate(module: nn.Module, name: str, leaf_patterns: Sequence[str],
                       is_leaf: Callable[[nn.Module], bool]) -> bool:
    from slimkit._select import matches

    return is_leaf(module) or any(matches(name, p) for p in leaf_patterns)


class CaptureFailed(TraceError):
    """The model's forward raised during capture; ``index`` is the number of ops it completed and ``call`` the op
    that raised (with its arguments), when the error came from a torch op."""

    def __init__(self, message: str, index: int, call: Call | None, partial: Capture | None = None) -> None:
        super().__init__(message)
        self.index = index
        self.call = call
        self.partial = partial


class _Recorder(TorchFunctionMode):
    def __init__(self, model: nn.Module, leaf_patterns: Sequence[str], is_leaf: Callable[[nn.Module], bool],
                 deadline: Deadline, record_args: bool = True) -> None:
        super().__init__()
        self.deadline = deadline
        self.record_args = record_args
        # one walk of the modules for every name (as named_parameters / named_buffers name them: first name wins)
        self.params: dict[int, str] = {}
        self.buffers: dict[int, str] = {}
        self.names: dict[int, str] = {}
        self.leaves: set[int] = set()
        for n, m in model.named_modules():
            self.names[id(m)] = n
            if n and _is_leaf_candidate(m, n, leaf_patterns, is_leaf):
                self.leaves.add(id(m))
            if not record_args:
                continue
            prefix = f"{n}." if n else ""
            for store, names in ((m._parameters, self.params), (m._buffers, self.buffers)):
                for attr, t in store.items():
                    if t is not None and id(t) not in names:
                        names[id(t)] = prefix + attr
        self.key_of: dict[int, int] = {}
        self.alive: list[torch.Tensor] = []
        self.releases: list[weakref.finalize] = []
        self.values: list[ValueInfo] = []
        self.calls: list[Call] = []
        self.stack: list[str] = []
        self.suppress = 0
        self.pending: list[tuple] = []
        self.failed_at: str | None = None
        self.failed_call: Call | None = None
        self.named_refs: dict[str, Ref] = {}
        self.node: Any = None

    # --- values ---------------------------------------------------------------------------------------------
    def _new(self, t: torch.Tensor, origin: str, name: str | None = None, producer: int | None = None) -> Ref:
        data = None
        if (not t.is_floating_point() and not t.is_complex() and t.numel() <= KEEP_DATA
                and t.device.type != "meta"):
            self.suppress += 1  # the copy is the recorder's, not the model's: a leaf module's hooks run in the mode
            try:
                data = t.detach().to("cpu", copy=True)  # ids live on the CPU; so do the indices replayed on them
            finally:
                self.suppress -= 1
        self.values.append(ValueInfo(tuple(t.shape), t.dtype, origin, name, producer, data))
        key = len(self.values) - 1
        self.key_of[id(t)] = key
        if origin in ("op", "const"):
            # a result dies when the forward no longer needs it, as in a plain forward (the capture's peak memory
            # is the model's, not every activation at once); its id, free for a new tensor, leaves the map with it
            try:
                self.releases.append(weakref.finalize(t, self.key_of.pop, id(t), None))
            except TypeError:  # a tensor type without weak references stays alive until the capture ends
                self.alive.append(t)
        else:
            self.alive.append(t)
        return Ref(key)

    def release(self) -> None:
        """Forget every tensor: nothing outlives the capture through the recorder."""
        for finalizer in self.releases:
            finalizer.detach()
        self.releases.clear()
        self.alive.clear()

    def ref(self, t: torch.Tensor) -> Ref:
        key = self.key_of.get(id(t))
        if key is not None:
            return Ref(key)
        name = self.params.get(id(t))
        if name is not None:
            ref = self._new(t, "param", name)
            self.named_refs[name] = ref
            return ref
        name = self.buffers.get(id(t))
        if name is not None:
            ref = self._new(t, "buffer", name)
            self.named_refs[name] = ref
            return ref
        return self._new(t, "const")

    def refs(self, obj: Any) -> Any:
        # called for every argument of every op: the common types are tested first, by exact type
        kind = type(obj)
        if kind in _ATOMS:
            return obj
        if isinstance(obj, torch.Tensor):
            return self.ref(obj)
        if kind is tuple:
            return tuple([self.refs(o) for o in obj])
        if kind is list:
            return [self.refs(o) for o in obj]
        if isinstance(obj, torch.Size):
            return obj
        if isinstance(obj, (tuple, list)):
            return tuple([self.refs(o) for o in obj])
        if isinstance(obj, Mapping):
            return {k: self.refs(v) for k, v in obj.items()}
        return obj

    def results(self, obj: Any, producer: int) -> Any:
        if isinstance(obj, torch.Tensor):
            if not self.record_args:  # nothing will look this tensor up: its shape is all that is kept
                self.values.append(ValueInfo(tuple(obj.shape), obj.dtype, "op", producer=producer))
                return Ref(len(self.values) - 1)
            return self._new(obj, "op", producer=producer)
        if isinstance(obj, (tuple, list)):
            return tuple(self.results(o, producer) for o in obj)
        if isinstance(obj, Mapping):
            return {k: self.results(v, producer) for k, v in obj.items()}
        return None

    # --- the mode -------------------------------------------------------------------------------------------
    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if self.suppress:
            return func(*args, **kwargs)
        scope = self.stack[-1] if self.stack else ""
        self.deadline.check(lambda: f"{op_name(func)} in '{scope}'")
        try:
            out = func(*args, **kwargs)
        except Exception:
            if self.failed_at is None:
                self.failed_at = f"op '{op_name(func)}' in module '{scope or '<root>'}'"
                self.failed_call = Call(len(self.calls), func, self.refs(tuple(args)), self.refs(kwargs), None, scope)
            raise
        mutated = getattr(func, "__name__", "") == "__setitem__"
        if not mutated and not _has_tensor(out):
            return out
        if self.record_args:
            call = Call(len(self.calls), func, self.refs(tuple(args)), self.refs(kwargs), None, scope, node=self.node)
        else:
            call = Call(len(self.calls), func, (), {}, None, scope, node=self.node)
        self.calls.append(call)
        call.out = self.results(args[0], call.index) if mutated else self.results(out, call.index)
        return out

    # --- module boundaries ----------------------------------------------------------------------------------
    def pre_hook(self, module: nn.Module, args: tuple) -> None:
        self.stack.append(self.names.get(id(module), self.stack[-1] if self.stack else ""))

    def post_hook(self, module: nn.Module, args: tuple, out: Any) -> None:
        if self.stack:
            self.stack.pop()

    def leaf_pre_hook(self, module: nn.Module, args: tuple, kwargs: dict) -> None:
        if self.suppress == 0:
            scope = self.stack[-2] if len(self.stack) > 1 else ""
            if self.record_args:
                self.pending.append((module, self.refs(tuple(args)), self.refs(dict(kwargs)), scope))
            else:
                self.pending.append((module, (), {}, scope))
        self.suppress += 1

    def leaf_post_hook(self, module: nn.Module, args: tuple, kwargs: dict, out: Any) -> None:
        self.suppress -= 1
        if self.suppress == 0 and self.pending:
            mod, refs, kwrefs, scope = self.pending.pop()
            call = Call(len(self.calls), type(mod), refs, kwrefs, None, scope, mod, self.names.get(id(mod)))
            self.calls.append(call)
            call.out = self.results(out, call.index)


class _NodeRunner(torch.fx.Interpreter):
    """Runs a GraphModule node by node, telling the recorder which node is running."""

    def __init__(self, module: torch.fx.GraphModule, recorder: _Recorder) -> None:
        super().__init__(module)
        self.recorder = recorder

    def run_node(self, n: torch.fx.Node) -> Any:
        self.recorder.node = n
        try:
            return super().run_node(n)
        finally:
            self.recorder.node = None


@contextlib.contextmanager
def eval_mode(model: nn.Module) -> Iterator[None]:
    """``model`` in eval mode, and every module's own mode back afterwards. A model already in eval mode (the
    usual case) is walked once: ``train()`` sets an attribute on every module, twice per capture. A module class
    with its own ``train`` gets the ``train()`` calls."""
    modules = list(model.modules())
    training = [m.training for m in modules]
    if any(type(m).train is not nn.Module.train for m in modules):
        model.eval()
    else:
        for m in modules:
            if m.training:
                m.training = False
    try:
        yield
    finally:
        for m, mode in zip(modules, training, strict=True):
            if m.training != mode:
                m.training = mode


def _has_tensor(obj: Any) -> bool:
    if isinstance(obj, torch.Tensor):
        return True
    if isinstance(obj, (tuple, list)):
        return any(_has_tensor(o) for o in obj)
    return False


@contextlib.contextmanager
def _hooks(recorder: _Recorder, model: nn.Module) -> Iterator[None]:
    from torch.nn.modules import module as module_mod

    handles = [module_mod.register_module_forward_pre_hook(recorder.pre_hook),
               module_mod.register_module_forward_hook(recorder.post_hook, always_call=True)]
    for m in model.modules():
        if id(m) in recorder.leaves:
            handles.append(m.register_forward_pre_hook(recorder.leaf_pre_hook, with_kwargs=True))
            handles.append(m.register_forward_hook(recorder.leaf_post_hook, with_kwargs=True, always_call=True))
    try:
        yield
    finally:
        for h in handles:
            h.remove()


def capture(model: nn.Module, example_inputs: Any, *, leaf_modules: Sequence[str] = (),
            is_leaf: Callable[[nn.Module], bool] = lambda m: False, deadline: Deadline | None = None,
            record_args: bool = True) -> Capture:
    """Record one forward of ``model`` on ``example_inputs`` (no gradients; the model's mode is left as is).

    ``leaf_modules`` (names, globs, ``re:``) and modules for which ``is_leaf`` is true are recorded as one call.
    A ``torch.fx.GraphModule`` runs node by node and each call records the node that made it. A forward that fails
    raises :class:`CaptureFailed` (a :class:`TraceError`) naming the module and op where it failed.

    ``record_args=False`` records each call's op, scope and result shapes only (no arguments, no parameters, no
    values): enough to compare a run with an earlier one, and cheaper.
    """
    deadline = deadline or Deadline(None)
    recorder = _Recorder(model, leaf_modules, is_leaf, deadline, record_args)
    args, kwargs = split_inputs(example_inputs)
    inputs = (_mark_inputs(recorder, args), _mark_inputs(recorder, kwargs))
    try:
        with torch.no_grad(), _hooks(recorder, model), recorder:
            if isinstance(model, torch.fx.GraphModule) and not kwargs:
                out = _NodeRunner(model, recorder).run(*args)
            else:
                out = model(*args, **kwargs)
        output = _output_refs(recorder, out)
    except TraceError:
        raise
    except Exception as error:
        where = recorder.failed_at or f"module '{recorder.stack[-1] if recorder.stack else '<root>'}'"
        raise CaptureFailed(f"the model's forward failed on the example inputs at {where}: {type(error).__name__}: "
                            f"{error}. Check the example inputs (a tensor, a tuple, or a dict of keyword inputs "
                            "such as {'input_ids': ..., 'attention_mask': ...})", len(recorder.calls),
                            recorder.failed_call, Capture(recorder.values, recorder.calls, inputs, None)) from error
    finally:
        recorder.release()
    return Capture(recorder.values, recorder.calls, inputs, output, dict(recorder.named_refs))


def _mark_inputs(recorder: _Recorder, obj: Any) -> Any:
    if isinstance(obj, torch.Tensor):
        return recorder._new(obj, "input")
    if isinstance(obj, (tuple, list)):
        return tuple(_mark_inputs(recorder, o) for o in obj)
    if isinstance(obj, Mapping):
        return {k: _mark_inputs(recorder, v) for k, v in obj.items()}
    return obj


def _output_refs(recorder: _Recorder, out: Any) -> Any:
    if isinstance(out, torch.Tensor):
        return recorder.ref(out)
    if isinstance(out, (tuple, list)):
        return tuple(_output_refs(recorder, o) for o in out)
    if isinstance(out, Mapping):
        return {k: _output_refs(recorder, v) for k, v in out.items()}
    return None
