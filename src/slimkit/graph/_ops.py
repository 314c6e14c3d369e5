"""How channel ids flow through tensor functions and methods (``torch.cat``, ``x.view``, ``+``, ``F.pad``, ...).

Every traced tensor carries an id tensor of its own shape (stored compressed: size 1 along dims where the ids do
not vary). Data-movement ops are run on the id tensors themselves, so cat/split/chunk offsets, flatten (each
channel owns H×W inputs), permutes and channel shuffles come out exactly. Ops that mix values position-wise
(add, mul) merge the ids they combine; reductions merge along the reduced dims. Anything unknown is *opaque*:
its channels are blocked, so an unsupported op can make pruning less thorough but never wrong.
"""

from __future__ import annotations

import operator
from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F

OpRule = Callable[..., Any]  # (builder, node, real_output) -> ids
FUNCTION_RULES: dict[Any, OpRule] = {}
METHOD_RULES: dict[str, OpRule] = {}


def _register(rule: OpRule, functions: tuple = (), methods: tuple = ()) -> None:
    for fn in functions:
        FUNCTION_RULES[fn] = rule
    for name in methods:
        METHOD_RULES[name] = rule


def choose_unit_dim(sizes: list[int]) -> int:
    """Which factor of a split channel dim is pruned. Two factors: the larger (``(groups, C/groups)`` of a
    channel shuffle prunes C/groups); three or more: the largest but the innermost (``(3, heads, head_dim)``
    of a fused qkv projection prunes whole heads). Ties go to the inner of the candidates."""
    if len(sizes) == 2:
        return 0 if sizes[0] > sizes[1] else 1
    best = 0
    for i, size in enumerate(sizes[:-1]):
        if size >= sizes[best]:
            best = i
    return best


def dim_groups(a: tuple[int, ...], b: tuple[int, ...]) -> list[tuple[list[int], list[int]]]:
    """Pair the dims of shape ``a`` with those of ``b`` (same numel) that a reshape merges or splits."""
    groups, i, j = [], 0, 0
    while i < len(a) or j < len(b):
        gi, gj = ([i] if i < len(a) else []), ([j] if j < len(b) else [])
        pa, pb = (a[i] if i < len(a) else 1), (b[j] if j < len(b) else 1)
        i, j = i + 1, j + 1
        while pa != pb:
            if pa < pb and i < len(a):
                gi.append(i)
                pa *= a[i]
                i += 1
            elif j < len(b):
                gj.append(j)
                pb *= b[j]
                j += 1
            else:
                raise ValueError("shapes do not pair")
        groups.append((gi, gj))
    return groups


def elementwise(b, node, out):
    """Position-wise ops (add, mul, activations): all tensor operands' ids at a position are one unit."""
    ids = [b.ids_of(a) for a in b.tensor_args(node)]
    if not isinstance(out, torch.Tensor) or not ids:
        return b.opaque(node, out)
    try:
        expanded = torch.broadcast_tensors(*ids)
    except RuntimeError:
        return b.opaque(node, out)
    for other in expanded[1:]:
        b.uf.union(expanded[0], other)
    first = expanded[0]
    while first.dim() < out.dim():
        first = first.unsqueeze(0)
    return b.compress(first)


def reduction(b, node, out):
    """mean/sum/amax/softmax over ``dim``: the reduced dim's ids become one unit (so it is never sliced)."""
    src = b.tensor_args(node)[0]
    ids = b.expand(src)
    dims = node.kwargs.get("dim", node.args[1] if len(node.args) > 1 else None)
    if dims is None:
        b.uf.block(ids)
        return b.blocked_like(out)
    dims = [dims] if isinstance(dims, int) else list(dims)
    dims = sorted(d % ids.dim() for d in dims)
    merged = b.merge_along(ids, dims)
    if not isinstance(out, torch.Tensor):
        return None
    if out.dim() == ids.dim():
        for d in dims:
            if out.shape[d] == 1 and merged.shape[d] > 1:
                merged = merged.narrow(d, 0, 1)
        return b.compress(merged)
    for d in reversed(dims):
        merged = merged.select(d, 0)
    return b.compress(merged)


def spatial(b, node, out):
    """Pooling / interpolation: channel dim 1 kept, all other non-batch dims merged."""
    src = b.tensor_args(node)[0]
    ids = b.expand(src)
    cmap = b.channel_map(ids, 1)
    shape = [1] * out.dim()
    shape[1] = cmap.numel()
    return b.compress(cmap.reshape(shape))


RESHAPES = {"view", "reshape", "flatten", "unflatten", torch.reshape, torch.flatten, torch.unflatten}


def movement(b, node, out):
    """Data movement: replay the op on the id tensors themselves."""
    args, kwargs = b.substitute(node)
    try:
        if node.op == "call_method":
            result = getattr(args[0], node.target)(*args[1:], **kwargs)
        else:
            result = node.target(*args, **kwargs)
    except Exception:  # an op that cannot run on int64 ids: treat as opaque
        return b.opaque(node, out)
    if node.target in RESHAPES and isinstance(result, torch.Tensor):
        b.constrain_reshape(args[0], result)
    return b.compress_tree(result)


def pad(b, node, out):
    """``F.pad`` (constant): padded channels get new ids (they merge with whatever they are added to, as in the
    ResNet option-A shortcut), padded spatial borders inherit their channel's id."""
    src = b.tensor_args(node)[0]
    ids = b.ids_of(src)
    real_shape = b.shape_of(src)
    amounts = node.args[1] if len(node.args) > 1 else node.kwargs["pad"]
    mode = node.kwargs.get("mode", node.args[2] if len(node.args) > 2 else "constant")
    if mode != "constant":
        return elementwise(b, node, out) if tuple(out.shape) == tuple(real_shape) else spatial(b, node, out)
    ids = ids.expand(real_shape) if ids.dim() == len(real_shape) else ids
    for k in range(len(amounts) // 2):
        d = len(real_shape) - 1 - k
        left, right = int(amounts[2 * k]), int(amounts[2 * k + 1])
        if left == 0 and right == 0:
            continue
        varying = ids.shape[d] > 1 and b.varies(ids, d)
        if left < 0 or right < 0 or (d != 1 and not varying):
            if d != 1 and not varying:
                shape = list(ids.shape)
                shape[d] = 1
                ids = ids.narrow(d, 0, 1).reshape(shape)
                continue
            return b.opaque(node, out)
        parts = []
        for count in (left, right):
            shape = list(ids.shape)
            shape[d] = count
            other = [s if i == d else 1 for i, s in enumerate(shape)]
            parts.append(b.uf.fresh(count).reshape(other).expand(shape))
        ids = torch.cat([parts[0], ids, parts[1]], dim=d)
    return b.compress(ids.contiguous())


def matmul(b, node, out):
    """``a @ b`` between two activations (attention scores, attention × values): everything in one batch slice
    (one head) is one unit, so heads are pruned whole. With a weight operand the op is opaque."""
    tensors = b.tensor_args(node)
    if len(tensors) != 2 or any(t.op == "get_attr" for t in tensors):
        return b.opaque(node, out)
    x, y = b.expand(tensors[0]), b.expand(tensors[1])
    batch = torch.broadcast_shapes(x.shape[:-2], y.shape[:-2])
    x = x.expand(*batch, *x.shape[-2:]).reshape(-1, x.shape[-2] * x.shape[-1])
    y = y.expand(*batch, *y.shape[-2:]).reshape(-1, y.shape[-2] * y.shape[-1])
    b.uf.union(x[:, :1], x)
    b.uf.union(x[:, :1], y)
    heads = x[:, 0].reshape(*batch, 1, 1) if batch else x[0, 0].reshape(1, 1)
    return b.compress(heads)


def passthrough(b, node, out):
    """``x.contiguous()``, ``x.float()``, ``x.clone()``: ids unchanged."""
    return b.ids_of(b.tensor_args(node)[0])


_ELEMENTWISE_FN = (
    operator.add, operator.sub, operator.mul, operator.truediv, operator.neg, operator.iadd, operator.imul,
    torch.add, torch.sub, torch.mul, torch.div, torch.maximum, torch.minimum, torch.relu, torch.sigmoid, torch.tanh,
    torch.exp, torch.abs, torch.neg, torch.clamp, torch.sqrt, torch.rsqrt, F.relu, F.relu6, F.gelu, F.silu,
    F.hardswish, F.hardsigmoid, F.sigmoid, F.tanh, F.leaky_relu, F.elu, F.dropout, F.hardtanh, F.mish,
)
_ELEMENTWISE_METHODS = (
    "add", "sub", "mul", "div", "add_", "mul_", "sub_", "div_", "relu", "relu_", "sigmoid", "tanh", "clamp",
    "clamp_", "exp", "abs", "neg", "sqrt", "rsqrt", "pow", "__add__", "__mul__", "__radd__", "__rmul__",
)
_register(elementwise, (*_ELEMENTWISE_FN, operator.pow, torch.pow), _ELEMENTWISE_METHODS)
_register(passthrough, (), ("contiguous", "float", "clone", "detach", "to", "type_as"))
_register(reduction, (torch.mean, torch.sum, torch.amax, torch.softmax, F.softmax, F.log_softmax),
          ("mean", "sum", "amax", "softmax", "log_softmax"))
_register(spatial, (F.max_pool2d, F.avg_pool2d, F.adaptive_avg_pool2d, F.adaptive_max_pool2d, F.interpolate,
                    F.max_pool1d, F.avg_pool1d, F.adaptive_avg_pool1d), ())
_register(movement, (torch.flatten, torch.cat, torch.concat, torch.stack, torch.chunk, torch.split,
                     torch.reshape, torch.transpose, torch.permute, torch.squeeze, torch.unsqueeze, torch.unbind,
                     torch.unflatten, operator.getitem),
          ("view", "reshape", "flatten", "unflatten", "permute", "transpose", "squeeze", "unsqueeze", "expand",
           "chunk", "split", "unbind", "__getitem__"))
_register(pad, (F.pad,), ())
_register(matmul, (operator.matmul, torch.matmul, torch.bmm), ("matmul", "bmm"))
