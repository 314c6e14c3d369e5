"""Per-layer profile of a model: parameters, MACs, other ops, output shapes and storage bytes."""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
from torch import nn
from torch.overrides import TorchFunctionMode

from slimkit._inputs import input_tuple
from slimkit.analysis._counters import ZERO_COST, find_counter, first_tensor
from slimkit.analysis._einsum import einsum_macs, einsum_operands

#: Functional ops that are matrix products: MACs = output elements × the contracted dimension.
_MATMUL_FUNCS = {torch.matmul, torch.Tensor.matmul, torch.Tensor.__matmul__, torch.bmm, torch.mm, torch.Tensor.bmm}
_ELEMENTWISE_FUNCS = {
    torch.add, torch.sub, torch.mul, torch.div, torch.Tensor.add, torch.Tensor.sub, torch.Tensor.mul,
    torch.Tensor.div, torch.Tensor.__add__, torch.Tensor.__radd__, torch.Tensor.__iadd__, torch.Tensor.__sub__,
    torch.Tensor.__mul__, torch.Tensor.__rmul__, torch.Tensor.__truediv__, torch.Tensor.add_, torch.Tensor.mul_,
    torch.relu, torch.sigmoid, torch.tanh, torch.nn.functional.relu, torch.nn.functional.relu6,
    torch.nn.functional.gelu, torch.nn.functional.silu, torch.nn.functional.hardswish, torch.Tensor.neg, torch.neg,
    torch.Tensor.__neg__, torch.Tensor.relu, torch.Tensor.sigmoid,
}
_ADDMM_FUNCS = {torch.addmm, torch.Tensor.addmm, torch.baddbmm, torch.Tensor.baddbmm}
_SOFTMAX_FUNCS = {torch.softmax, torch.nn.functional.softmax, torch.Tensor.softmax}

#: storage bytes of a layer's own parameters: fn(module, dtype_bits) -> int
StorageFn = Callable[[nn.Module, int], int]
_STORAGE: dict[type[nn.Module], StorageFn] = {}


def register_storage(*module_types: type[nn.Module]) -> Callable[[StorageFn], StorageFn]:
    """Register how a layer type is stored (e.g. 4-bit codes + a codebook) so that ``profile`` reports its bytes.

    A layer can instead define ``slimkit_storage_bytes(self, dtype_bits: int) -> int``; quantized, clustered and
    sparse layers use one of the two so the profile reports what they really occupy. A layer whose parameters are
    not its weights (a shared codebook) defines ``slimkit_param_count(self) -> (weights, zeros)`` for the params
    column.
    """

    def decorator(fn: StorageFn) -> StorageFn:
        for module_type in module_types:
            _STORAGE[module_type] = fn
        return fn

    return decorator


def csr_bytes(weight: torch.Tensor, value_bits: int, index_bits: int = 32) -> int:
    """Bytes of ``weight`` in CSR form (rows = output units): non-zeros × (value + column index) + row pointers."""
    rows = weight.shape[0] if weight.dim() > 0 else 1
    nnz = int(torch.count_nonzero(weight))
    return math.ceil((nnz * (value_bits + index_bits) + (rows + 1) * index_bits) / 8)


def storage_bytes(module: nn.Module, dtype_bits: int = 32, sparse_format: str = "dense") -> int:
    """Bytes to store ``module``'s own (non-recursive) parameters.

    Order of precedence: the layer's ``slimkit_storage_bytes`` method, a registered storage function, then plain
    storage at ``dtype_bits`` per value — dense, or CSR for weights with ≥ 2 dims when ``sparse_format="csr"``
    and CSR is actually smaller (a tool would store whichever is smaller).
    """
    custom = getattr(module, "slimkit_storage_bytes", None)
    if callable(custom):
        return int(custom(dtype_bits))
    for klass in type(module).__mro__:
        if klass in _STORAGE:
            return int(_STORAGE[klass](module, dtype_bits))
    total = 0
    for _, param in module.named_parameters(recurse=False):
        dense = math.ceil(param.numel() * dtype_bits / 8)
        if sparse_format == "csr" and param.dim() >= 2:
            total += min(dense, csr_bytes(param.detach().reshape(param.shape[0], -1), dtype_bits))
        else:
            total += dense
    return total


@dataclass(frozen=True)
class LayerProfile:
    """One row of a profile. Counts are per sample (the example batch's totals divided by its batch size)."""

    name: str
    type: str
    output_shape: tuple[int, ...] | None
    params: int
    macs: int
    other_ops: int
    bytes: int
    sparsity: float
    calls: int


@dataclass(frozen=True)
class ProfileTotals:
    params: int
    macs: int
    other_ops: int
    bytes: int
    nonzero_params: int


@dataclass(frozen=True)
class ModelProfile:
    """The result of :func:`profile`: ``rows`` per layer, ``total``, and anything that could not be counted."""

    rows: tuple[LayerProfile, ...]
    total: ProfileTotals
    input_shapes: tuple[tuple[int, ...], ...]
    dtype_bits: int
    uncounted: tuple[str, ...] = field(default=())

    def row(self, name: str) -> LayerProfile:
        """The row of the layer called ``name``."""
        for row in self.rows:
            if row.name == name:
                return row
        raise KeyError(name)

    def to_dict(self) -> dict[str, Any]:
        return {
            "rows": [asdict(row) for row in self.rows],
            "total": asdict(self.total),
            "input_shapes": [list(s) for s in self.input_shapes],
            "dtype_bits": self.dtype_bits,
            "uncounted": list(self.uncounted),
        }

    def to_markdown(self) -> str:
        lines = [
            "| layer | type | output | params | MACs | other ops | bytes | sparsity |",
            "|---|---|---|---:|---:|---:|---:|---:|",
        ]
        for r in self.rows:
            shape = "×".join(map(str, r.output_shape)) if r.output_shape else ""
            lines.append(
                f"| {r.name} | {r.type} | {shape} | {r.params:,} | {r.macs:,} | {r.other_ops:,} | {r.bytes:,} |"
                f" {r.sparsity:.1%} |"
            )
        t = self.total
        lines.append(f"| **total** | | | {t.params:,} | {t.macs:,} | {t.other_ops:,} | {t.bytes:,} | |")
        return "\n".join(lines)


class _FunctionalCounter(TorchFunctionMode):
    """Counts functional ops (``q @ k.transpose(...)``, ``x + y``) that run outside counted leaf layers."""

    def __init__(self, profiler: _Profiler) -> None:
        super().__init__()
        self.profiler = profiler

    def __torch_function__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        if self.profiler.inside_counted_leaf or not self.profiler.stack:
            return out
        tensor_out = first_tensor(out)
        if tensor_out is None:
            return out
        if func in _MATMUL_FUNCS:
            contracted = args[0].shape[-1] if isinstance(args[0], torch.Tensor) else 1
            self.profiler.add_functional("matmul", tensor_out, macs=tensor_out.numel() * contracted, other=0)
        elif func is torch.nn.functional.linear:
            self.profiler.add_functional("linear", tensor_out, macs=tensor_out.numel() * args[1].shape[-1], other=0)
        elif func in _ADDMM_FUNCS:  # bias + x @ W (transformers' Conv1D in GPT-2), scores in upcast attention
            contracted = args[1].shape[-1] if isinstance(args[1], torch.Tensor) else 1
            self.profiler.add_functional("addmm", tensor_out, macs=tensor_out.numel() * contracted, other=0)
        elif func is torch.einsum and args and isinstance(args[0], str):
            operands = einsum_operands(args)
            if all(isinstance(o, torch.Tensor) for o in operands):
                macs = einsum_macs(args[0], [tuple(o.shape) for o in operands])
                self.profiler.add_functional("einsum", tensor_out, macs=macs, other=0 if macs else tensor_out.numel())
        elif func is torch.nn.functional.scaled_dot_product_attention:
            q, k = args[0], args[1]
            macs = 2 * q.numel() // q.shape[-1] * k.shape[-2] * q.shape[-1]
            self.profiler.add_functional("attention", tensor_out, macs=macs, other=3 * macs // q.shape[-1])
        elif func in _SOFTMAX_FUNCS:
            self.profiler.add_functional("softmax", tensor_out, macs=0, other=3 * tensor_out.numel())
        elif func in _ELEMENTWISE_FUNCS:
            self.profiler.add_functional(getattr(func, "__name__", "op").strip("_"), tensor_out, 0, tensor_out.numel())
        return out


class _Profiler:
    def __init__(self, model: nn.Module) -> None:
        self.model = model
        self.stack: list[str] = []
        self.counted_depth = 0
        self.stats: dict[str, dict[str, Any]] = {}
        self.uncounted: set[str] = set()
        self.handles: list[Any] = []

    @property
    def inside_counted_leaf(self) -> bool:
        return self.counted_depth > 0

    def _entry(self, name: str, type_name: str) -> dict[str, Any]:
        return self.stats.setdefault(name, {"type": type_name, "macs": 0, "other": 0, "shape": None, "calls": 0})

    def add_functional(self, op: str, out: torch.Tensor, macs: int, other: int) -> None:
        entry = self._entry(f"{self.stack[-1] or '<model>'}.<{op}>", op)
        entry["macs"] += int(macs)
        entry["other"] += int(other)
        entry["shape"] = tuple(out.shape)
        entry["calls"] += 1

    def attach(self) -> None:
        for name, module in self.model.named_modules():
            is_leaf = next(iter(module.children()), None) is None
            counter = find_counter(module)
            counted = counter is not None or isinstance(module, ZERO_COST)
            # Any module with a registered counter is treated as a leaf (e.g. nn.MultiheadAttention).
            if counter is None and is_leaf and not counted:
                self.uncounted.add(f"{name} ({type(module).__name__})")
            self.handles.append(module.register_forward_pre_hook(self._pre_hook(name, counted)))
            self.handles.append(module.register_forward_hook(self._post_hook(name, module, counter, counted)))

    def _pre_hook(self, name: str, counted: bool):
        def hook(module: nn.Module, inputs: tuple) -> None:
            self.stack.append(name)
            if counted:
                self.counted_depth += 1

        return hook

    def _post_hook(self, name: str, module: nn.Module, counter, counted: bool):
        def hook(mod: nn.Module, inputs: tuple, output: object) -> None:
            self.stack.pop()
            if not counted:
                return
            self.counted_depth -= 1
            if self.counted_depth > 0:
                return  # a counted layer inside another counted layer is already included in the outer count
            entry = self._entry(name, type(module).__name__)
            if counter is not None:
                macs, other = counter(module, inputs, output)
                entry["macs"] += int(macs)
                entry["other"] += int(other)
            out = first_tensor(output)
            entry["shape"] = tuple(out.shape) if out is not None else None
            entry["calls"] += 1

        return hook

    def detach(self) -> None:
        for handle in self.handles:
            handle.remove()


def profile(
    model: nn.Module,
    example_inputs: torch.Tensor | Sequence[torch.Tensor] | Mapping[str, torch.Tensor],
    *,
    dtype_bits: int = 32,
    sparse_format: str = "dense",
) -> ModelProfile:
    """Count parameters, MACs, other ops and storage bytes of ``model`` on ``example_inputs``, layer by layer.

    One forward pass in eval mode under ``torch.no_grad``; the model's training mode is restored afterwards.
    Counts are per sample. MACs cover convolutions, transposed convolutions, linear layers, attention and functional
    matrix products; activations, norms, pooling and elementwise arithmetic are ``other_ops``. Storage is at
    ``dtype_bits`` per value unless a layer says otherwise (see :func:`register_storage`); ``sparse_format="csr"``
    stores sparse weights in CSR where that is smaller. Parameters shared between layers are counted once.
    """
    if sparse_format not in {"dense", "csr"}:
        from slimkit._errors import ConfigError

        raise ConfigError(f"sparse_format '{sparse_format}' is not known: use 'dense' or 'csr'")
    # a mapping is keyword inputs (``input_ids=...`` for a Hugging Face model)
    inputs, keywords = ((), dict(example_inputs)) if isinstance(example_inputs, Mapping) \
        else (input_tuple(example_inputs), {})
    first = next((t for t in (*inputs, *keywords.values()) if isinstance(t, torch.Tensor)), None)
    batch = first.shape[0] if first is not None and first.dim() > 0 else 1
    profiler = _Profiler(model)
    was_training = model.training
    profiler.attach()
    try:
        model.eval()
        with torch.no_grad(), _FunctionalCounter(profiler):
            model(*inputs, **keywords)
    finally:
        profiler.detach()
        model.train(was_training)

    modules = dict(model.named_modules())
    seen_params: set[int] = set()
    rows: list[LayerProfile] = []
    names = list(dict.fromkeys([*modules.keys(), *profiler.stats.keys()]))
    for name in names:
        module = modules.get(name)
        own_params = [] if module is None else [p for _, p in module.named_parameters(recurse=False)]
        fresh = [p for p in own_params if id(p) not in seen_params]
        seen_params.update(id(p) for p in fresh)
        stats = profiler.stats.get(name)
        if not fresh and stats is None:
            continue
        counter = getattr(module, "slimkit_param_count", None)
        if fresh and callable(counter):  # a layer that stores its weights indirectly (e.g. a shared codebook)
            n_params, zeros = counter()
        else:
            n_params = sum(p.numel() for p in fresh)
            zeros = sum(int((p == 0).sum()) for p in fresh)
        rows.append(
            LayerProfile(
                name=name or "<model>",
                type=stats["type"] if stats else type(module).__name__,
                output_shape=stats["shape"] if stats else None,
                params=n_params,
                macs=round(stats["macs"] / batch) if stats else 0,
                other_ops=round(stats["other"] / batch) if stats else 0,
                bytes=storage_bytes(module, dtype_bits, sparse_format) if (module is not None and fresh) else 0,
                sparsity=zeros / n_params if n_params else 0.0,
                calls=stats["calls"] if stats else 0,
            )
        )
    total = ProfileTotals(
        params=sum(r.params for r in rows),
        macs=sum(r.macs for r in rows),
        other_ops=sum(r.other_ops for r in rows),
        bytes=sum(r.bytes for r in rows),
        nonzero_params=sum(round(r.params * (1 - r.sparsity)) for r in rows),
    )
    return ModelProfile(
        rows=tuple(rows),
        total=total,
        input_shapes=tuple(tuple(t.shape) for t in inputs),
        dtype_bits=dtype_bits,
        uncounted=tuple(sorted(profiler.uncounted)),
    )
