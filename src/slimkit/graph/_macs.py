"""Multiply-accumulates of a captured forward, before or after a removal, counted from the recorded shapes.

The formulas are those of :func:`slimkit.analysis.profile` (dense layers: output elements × the contracted size;
convolutions: output elements × C_in/groups × kernel taps; transposed ones per input element; attention: Q·Kᵀ and
P·V), applied to the pruned shapes a :class:`~slimkit.graph.Removal` implies, so a MAC target can be searched over
many candidate prunings without building or running any of them. Per sample: totals are divided by the batch.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
import torch.nn.functional as F

from slimkit.analysis._einsum import einsum_macs, einsum_operands
from slimkit.graph._capture import Call, Ref, op_key
from slimkit.graph._graph import DependencyGraph
from slimkit.graph._rules import module_rule

T = torch.Tensor
Shape = Callable[[Ref], tuple[int, ...]]


def _numel(shape: tuple[int, ...]) -> int:
    return math.prod(shape)


def _dense(call: Call, shape: Shape) -> int:
    w = call.arg(1, "weight")
    return _numel(shape(call.out)) * shape(w)[1]


def _contracted(position: int, keyword: str) -> Callable[[Call, Shape], int]:
    def count(call: Call, shape: Shape) -> int:
        a = call.arg(position, keyword)
        return _numel(shape(call.out)) * shape(a)[-1] if isinstance(a, Ref) and isinstance(call.out, Ref) else 0
    return count


def _conv(call: Call, shape: Shape) -> int:
    w = shape(call.arg(1, "weight"))
    return _numel(shape(call.out)) * _numel(w[1:])


def _conv_transpose(call: Call, shape: Shape) -> int:
    w = shape(call.arg(1, "weight"))
    return _numel(shape(call.args[0])) * _numel(w[1:])


def _sdpa(call: Call, shape: Shape) -> int:
    q, k = shape(call.arg(0, "query")), shape(call.arg(1, "key"))
    return 2 * _numel(q) * k[-2]


_COUNTERS: dict[object, Callable[[Call, Shape], int]] = {
    op_key(F.linear): _dense,
    op_key(F.conv1d): _conv, op_key(F.conv2d): _conv, op_key(F.conv3d): _conv,
    op_key(F.conv_transpose1d): _conv_transpose, op_key(F.conv_transpose2d): _conv_transpose,
    op_key(F.conv_transpose3d): _conv_transpose,
    op_key(torch.addmm): _contracted(1, "mat1"), op_key(T.addmm): _contracted(1, "mat1"),
    op_key(torch.baddbmm): _contracted(1, "batch1"), op_key(T.baddbmm): _contracted(1, "batch1"),
    op_key(F.scaled_dot_product_attention): _sdpa,
    op_key(torch.einsum): lambda call, shape: _einsum(call, shape),
}


def _einsum(call: Call, shape: Shape) -> int:
    operands = einsum_operands(call.args)
    if not isinstance(call.args[0], str) or not all(isinstance(o, Ref) for o in operands):
        return 0
    return einsum_macs(call.args[0], [shape(o) for o in operands])
for _f in (torch.matmul, T.matmul, T.__matmul__, torch.bmm, T.bmm, torch.mm, T.mm):
    _COUNTERS[op_key(_f)] = _contracted(0, "input")


def count_macs(graph: DependencyGraph, removal: object | None = None) -> int:
    """MACs per sample of the captured forward (``removal``: a :class:`Removal`, for the pruned shapes)."""
    values = graph.capture.values
    shape: Shape = removal.new_shape if removal is not None else (lambda ref: values[ref.key].shape)
    total = 0
    for call in graph.capture.calls:
        if call.module is not None:  # a leaf module, counted by its rule
            rule = module_rule(call.module)
            if rule is not None and rule.macs is not None:
                total += rule.macs(call, shape, call.module)
            continue
        counter = _COUNTERS.get(op_key(call.target))
        if counter is not None:
            total += counter(call, shape)
    inputs = [r for r in graph.capture.values if r.origin == "input" and r.shape]
    batch = inputs[0].shape[0] if inputs else 1
    return round(total / max(batch, 1))
