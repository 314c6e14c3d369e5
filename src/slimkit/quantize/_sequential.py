"""Layer-by-layer calibration in execution order: each layer sees the outputs of the layers before it as they are
after *their* quantization (the "sequential" mode of GPTQ, Frantar et al. 2023 §4, and of AdaRound's asymmetric
reconstruction, Nagel et al. 2020 §5).

A model with a stack of repeated blocks (a transformer's ``model.layers`` / ``transformer.h``) is processed block by
block: the inputs of the first block are captured once per calibration batch (positional and keyword arguments —
attention masks, rotary embeddings), each block runs alone on its cached inputs, and its outputs become the next
block's inputs, so calibration costs about one forward pass per block rather than one per layer. Layers outside the
blocks (a language model's ``lm_head``), and models without such a stack (CNNs), run the whole model, stopping at
the last layer a step needs.

Inside a block, layers that read the same input tensor (``q/k/v_proj``; ``gate/up_proj``) form one *group*,
calibrated together; groups follow each other in execution order.
"""

from __future__ import annotations

import contextlib
import itertools
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from slimkit._errors import DataError

#: one calibration call of a model or block: positional and keyword arguments
Call = tuple[tuple[Any, ...], dict[str, Any]]
#: a hook that sees one layer's input during a run: fn(layer_input)
LayerHook = Callable[[torch.Tensor], None]

#: keyword arguments of a transformer block that carry a KV cache: dropped when replaying cached calls
_CACHE_KWARGS = ("past_key_value", "past_key_values", "layer_past", "cache")


class _Stop(Exception):
    """Raised from a hook to end a forward pass once the layers a step needs have run."""


def calibration_calls(data: Iterable, max_batches: int | None = None) -> list[Call]:
    """The calibration loader's batches as model calls: a tensor → ``model(x)``; ``(x, y)`` → ``model(x)``;
    a mapping → ``model(**batch)`` (e.g. ``input_ids`` and ``attention_mask``)."""
    if data is None:
        raise DataError("this quantization method needs calibration data: pass data=<loader of input batches>")
    calls: list[Call] = []
    for batch in itertools.islice(data, max_batches):
        if isinstance(batch, Mapping):
            calls.append(((), dict(batch)))
        elif isinstance(batch, (tuple, list)):
            calls.append(((batch[0],), {}))
        else:
            calls.append(((batch,), {}))
    if not calls:
        raise DataError("the calibration loader yielded no batches: give it at least one batch of inputs")
    return calls


def call(module: nn.Module, inputs: Call) -> Any:
    args, kwargs = inputs
    return module(*args, **kwargs)


@contextlib.contextmanager
def no_kv_cache(model: nn.Module) -> Iterator[None]:
    """Turn off a Hugging Face model's KV cache while calibrating (a cache object would be shared by replays)."""
    config = getattr(model, "config", None)
    previous = getattr(config, "use_cache", None)
    if previous:
        config.use_cache = False
    try:
        yield
    finally:
        if previous:
            config.use_cache = previous


def first_tensor(value: Any) -> torch.Tensor:
    if isinstance(value, torch.Tensor):
        return value
    if isinstance(value, (tuple, list)) and value and isinstance(value[0], torch.Tensor):
        return value[0]
    if hasattr(value, "to_tuple"):  # a transformers ModelOutput: its first field (logits, hidden states)
        return value.to_tuple()[0]
    raise TypeError(f"cannot find the hidden states in a block output of type {type(value).__name__}")


def record_order(model: nn.Module, inputs: Call, layers: Iterable[str]) -> list[list[str]]:
    """Groups of ``layers`` in execution order (first call of each); consecutive layers reading the same input
    tensor share a group. Layers that do not run on ``inputs`` are left out."""
    wanted = set(layers)
    order: list[tuple[str, int]] = []
    keep: list[torch.Tensor] = []  # holds the inputs so that their ids stay unique during the pass
    seen: set[str] = set()

    def hook(name: str):
        def fn(module: nn.Module, args: tuple) -> None:
            if name not in seen and args and isinstance(args[0], torch.Tensor):
                seen.add(name)
                keep.append(args[0])
                order.append((name, id(args[0])))
        return fn

    handles = [model.get_submodule(n).register_forward_pre_hook(hook(n)) for n in wanted]
    try:
        with torch.no_grad(), no_kv_cache(model):
            call(model, inputs)
    finally:
        for handle in handles:
            handle.remove()
    groups: list[list[str]] = []
    last_id = None
    for name, input_id in order:
        if groups and input_id == last_id:
            groups[-1].append(name)
        else:
            groups.append([name])
        last_id = input_id
    return groups


def find_blocks(model: nn.Module, layers: Iterable[str]) -> list[str]:
    """Names of the repeated blocks to calibrate one at a time: the children of the ``nn.ModuleList`` (all of one
    class, at least two) that holds the most of ``layers``; empty when there is none."""
    layers = list(layers)
    best: list[str] = []
    best_count = 0
    for name, module in model.named_modules():
        if not isinstance(module, nn.ModuleList) or len(module) < 2:
            continue
        if len({type(child) for child in module}) != 1:
            continue
        prefix = f"{name}." if name else ""
        count = sum(1 for layer in layers if layer.startswith(prefix))
        if count > best_count:
            best, best_count = [f"{prefix}{i}" for i in range(len(module))], count
    return best


def _inside(name: str, block: str) -> bool:
    return name == block or name.startswith(block + ".")


@dataclass
class Stage:
    """A part of the model run on cached calls: one repeated block, or the whole model (``name == ""``).

    ``groups`` are the layers to calibrate in this stage, in execution order. ``reference`` is the matching part of
    a float reference model with its own cached calls (AdaRound's targets), or None.
    """

    name: str
    module: nn.Module
    calls: list[Call]
    groups: list[list[str]]
    root: nn.Module
    reference: nn.Module | None = None
    reference_calls: list[Call] = field(default_factory=list)
    reference_root: nn.Module | None = None

    @property
    def layers(self) -> list[str]:
        return [n for group in self.groups for n in group]

    def run(self, hooks: Mapping[str, LayerHook] | None = None, *, reference: bool = False,
            stop_after: str | None = None, keep_outputs: bool = True) -> list[Any]:
        """Run the stage on every cached call with ``hooks`` on layer inputs (keyed by layer name); with
        ``stop_after`` each pass ends once that layer's input was seen. Returns the outputs (empty if stopped)."""
        root = self.reference_root if reference else self.root
        module = self.reference if reference else self.module
        calls = self.reference_calls if reference else self.calls
        if root is None or module is None:
            raise ValueError("this stage has no reference model")
        hooks = dict(hooks or {})

        def make(name: str, fn: LayerHook | None):
            def pre(_module: nn.Module, args: tuple) -> None:
                if fn is not None:
                    fn(args[0])
                if name == stop_after:
                    raise _Stop
            return pre

        names = set(hooks) | ({stop_after} if stop_after else set())
        handles = [root.get_submodule(n).register_forward_pre_hook(make(n, hooks.get(n))) for n in names]
        outputs: list[Any] = []
        try:
            with torch.no_grad(), no_kv_cache(root):
                for inputs in calls:
                    try:
                        out = call(module, inputs)
                    except _Stop:
                        continue
                    if keep_outputs:
                        outputs.append(out)
        finally:
            for handle in handles:
                handle.remove()
        return outputs


def _capture_block_calls(model: nn.Module, block: nn.Module, calls: list[Call]) -> list[Call]:
    captured: list[Call] = []

    def pre(_module: nn.Module, args: tuple, kwargs: dict) -> None:
        kwargs = {k: (None if k in _CACHE_KWARGS else v) for k, v in kwargs.items()}
        if "use_cache" in kwargs:
            kwargs["use_cache"] = False
        captured.append((tuple(args), kwargs))
        raise _Stop

    handle = block.register_forward_pre_hook(pre, with_kwargs=True)
    try:
        with torch.no_grad(), no_kv_cache(model):
            for inputs in calls:
                with contextlib.suppress(_Stop):
                    call(model, inputs)
    finally:
        handle.remove()
    if len(captured) != len(calls):
        raise DataError(f"the first block ran on {len(captured)} of {len(calls)} calibration batches: calibrate with "
                        "inputs that run the whole model")
    return captured


def _next_calls(block: nn.Module, calls: list[Call]) -> list[Call]:
    """The calls of the next block: this block's outputs in place of its hidden-state input."""
    result = []
    with torch.no_grad():
        for args, kwargs in calls:
            hidden = first_tensor(block(*args, **kwargs))
            if args:
                result.append(((hidden, *args[1:]), kwargs))
            else:
                result.append(((), {**kwargs, "hidden_states": hidden}))
    return result


class SequentialRunner:
    """Yields the :class:`Stage` s of ``model`` for the ``layers`` to calibrate, in order; after the caller has
    processed (e.g. quantized) a stage's layers, the next stage sees their new outputs.

    ``reference`` (a float copy of ``model`` with the same module names) runs alongside for methods that fit
    quantized layers to float targets. ``blocks=False`` always runs the whole model.
    """

    def __init__(self, model: nn.Module, calls: list[Call], layers: Iterable[str], *,
                 reference: nn.Module | None = None, blocks: bool = True) -> None:
        self.model, self.calls, self.reference = model, calls, reference
        self.layers = list(layers)
        self.groups = record_order(model, calls[0], self.layers)
        self.block_names = find_blocks(model, self.layers) if blocks else []

    def skipped(self) -> list[str]:
        """Selected layers that did not run on the calibration inputs."""
        ran = {n for group in self.groups for n in group}
        return [n for n in self.layers if n not in ran]

    def _whole(self, groups: list[list[str]]) -> Stage:
        return Stage("", self.model, self.calls, groups, self.model, self.reference, self.calls, self.reference)

    def stages(self) -> Iterator[Stage]:
        blocks = self.block_names
        in_block = {b: [g for g in self.groups if all(_inside(n, b) for n in g)] for b in blocks}
        placed = {n for gs in in_block.values() for g in gs for n in g}
        outside = [[n for n in g if n not in placed] for g in self.groups]
        outside = [g for g in outside if g]
        if not blocks or not placed:
            if self.groups:
                yield self._whole(self.groups)
            return
        first_block_layer = next(n for g in self.groups for n in g if n in placed)
        position = {n: i for i, n in enumerate(n for g in self.groups for n in g)}
        before = [g for g in outside if position[g[0]] < position[first_block_layer]]
        after = [g for g in outside if position[g[0]] > position[first_block_layer]]
        if before:
            yield self._whole(before)
        first = self.model.get_submodule(blocks[0])
        calls = _capture_block_calls(self.model, first, self.calls)
        ref_calls: list[Call] = []
        if self.reference is not None:
            ref_calls = _capture_block_calls(self.reference, self.reference.get_submodule(blocks[0]), self.calls)
        for i, name in enumerate(blocks):
            block = self.model.get_submodule(name)
            ref_block = self.reference.get_submodule(name) if self.reference is not None else None
            if in_block[name]:
                yield Stage(name, block, calls, in_block[name], self.model, ref_block, ref_calls, self.reference)
            if i + 1 < len(blocks):
                calls = _next_calls(block, calls)
                if ref_block is not None:
                    ref_calls = _next_calls(ref_block, ref_calls)
        if after:
            yield self._whole(after)
