"""Where activations are quantized: over the model's traced graph, so that whole int8 paths — convolutions, residual
additions, concatenations, pooling, activations and reshapes — run as integer kernels in ONNX Runtime.

The placement follows the QDQ format ONNX Runtime's graph optimizer fuses (its QDQ selector rules: ``DQ → Conv → Q``
becomes QLinearConv, ``DQ, DQ → Add → Q`` QLinearAdd, ``DQ… → Concat → Q`` QLinearConcat, ``DQ → (Global)AveragePool
→ Q`` QLinear(Global)AveragePool, and data-movement ops — MaxPool, Reshape, Flatten, Transpose, Slice, Split, Gather,
Squeeze, Unsqueeze, nearest Resize — run directly on uint8 when the Q after them repeats the DQ's qparams), and the
quantization-simulation rules of Jacob et al. 2018 (§3) and Nagel et al. 2021 (§2.3, Fig. 4):

- every tensor is quantized at most once: one quantizer per tensor, shared by all of its consumers;
- an int8 op gets quantized inputs and a quantized output (a Conv/Linear whose output is the model's output keeps it
  in float: logits keep full precision and ONNX Runtime's QGemm writes float directly);
- a ReLU / ReLU6 / ``hardtanh(0, ·)`` that is an int8 op's only consumer is fused into it: the quantizer sits after the
  activation, whose grid starts at 0 and so clips exactly like it (ONNX Runtime then drops the activation);
  an activation separated from its int8 producer only by data-movement ops is moved up to it first (exact: a
  monotonic elementwise function commutes with max pooling, reshapes and zero padding);
- data-movement ops keep their input's grid (the same quantizer), so ONNX Runtime runs them on uint8;
- a concatenation's inputs share its output's grid (one scale: the concat is a copy, as TFLite requires);
- a layer called at several places quantizes all its inputs on one grid (its int32 bias has one scale);
- every other op stays float between DequantizeLinear and QuantizeLinear, and is listed in the report.
"""

from __future__ import annotations

import logging
import operator
import types
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.fx import GraphModule, Node, Tracer

from slimkit._inputs import input_tuple
from slimkit.quantize._fake_quant import FakeQuantize, QuantWrapper

log = logging.getLogger(__name__)

#: Attribute of the quantized model holding the graph's activation quantizers (an ``nn.ModuleDict``).
QUANTIZERS_ATTR = "slimkit_act_quant"

INT8, GRID, NOOP, ACTIVATION, FLOAT = "int8", "grid", "noop", "activation", "float"

_BINARY_FUNCTIONS = {operator.add, operator.iadd, torch.add, operator.mul, operator.imul, torch.mul}
_BINARY_METHODS = {"add", "add_", "mul", "mul_"}
_CAT_FUNCTIONS = {torch.cat, torch.concat, *([torch.concatenate] if hasattr(torch, "concatenate") else [])}
_INT8_FUNCTIONS = {F.avg_pool1d, F.avg_pool2d, torch.sigmoid, F.sigmoid, F.leaky_relu}
_INT8_METHODS = {"sigmoid"}
_INT8_MODULES = (nn.AvgPool1d, nn.AvgPool2d, nn.Sigmoid, nn.LeakyReLU)
_GRID_FUNCTIONS = {F.max_pool1d, F.max_pool2d, torch.flatten, torch.reshape, torch.transpose, torch.permute,
                   torch.squeeze, torch.unsqueeze, torch.narrow, torch.chunk, torch.split, operator.getitem,
                   torch.unflatten, torch.swapaxes}
_GRID_METHODS = {"view", "reshape", "flatten", "unflatten", "transpose", "permute", "squeeze", "unsqueeze", "chunk",
                 "split", "narrow", "swapaxes", "expand"}
_GRID_MODULES = (nn.MaxPool1d, nn.MaxPool2d, nn.Flatten, nn.Unflatten, nn.ZeroPad2d)
_NOOP_FUNCTIONS = {F.dropout, F.dropout1d, F.dropout2d, F.alpha_dropout}
_NOOP_METHODS = {"contiguous"}
_NOOP_MODULES = (nn.Identity, nn.Dropout, nn.Dropout1d, nn.Dropout2d, nn.AlphaDropout)
_ACTIVATION_FUNCTIONS = {F.relu, torch.relu, F.relu6, F.hardtanh, torch.clamp, torch.clip}
_ACTIVATION_METHODS = {"relu", "clamp", "clip", "clamp_min"}


@dataclass
class Placement:
    """What :func:`place_activation_quantizers_` did: the int8 ops, the ops left in float (node name → op), and the
    groups of tensors sharing one quantizer (more than one tensor: concat inputs, data movement, shared layers)."""

    int8_ops: list[str] = field(default_factory=list)
    float_ops: dict[str, str] = field(default_factory=dict)
    shared: dict[str, list[str]] = field(default_factory=dict)
    quantizers: int = 0


class _Tracer(Tracer):
    """torch.fx tracer that keeps slimkit's wrappers and quantizers as single calls."""

    def is_leaf_module(self, m: nn.Module, module_qualified_name: str) -> bool:
        return isinstance(m, (QuantWrapper, FakeQuantize)) or super().is_leaf_module(m, module_qualified_name)


def _arg(node: Node, index: int, name: str, default: Any = None) -> Any:
    if len(node.args) > index:
        return node.args[index]
    return node.kwargs.get(name, default)


def _clips_at_zero(node: Node, module: nn.Module | None) -> bool:
    """A ReLU-like activation: ``max(x, 0)`` possibly capped above (ReLU, ReLU6, hardtanh(0, ·), clamp(0, ·))."""
    if module is not None:
        return isinstance(module, nn.ReLU) or (isinstance(module, nn.Hardtanh) and module.min_val == 0.0)
    target = node.target
    if target in (F.relu, torch.relu, F.relu6, "relu"):
        return True
    if target is F.hardtanh:
        return _arg(node, 1, "min_val", -1.0) == 0
    if target in (torch.clamp, torch.clip, "clamp", "clip"):
        low = _arg(node, 1, "min")
        return isinstance(low, (int, float)) and low == 0
    if target == "clamp_min":
        return _arg(node, 1, "min") == 0
    return False


def _is_relu(node: Node, module: nn.Module | None) -> bool:
    """``max(x, 0)`` with no upper cap: its outputs lie on any grid its input lies on (zero is on every grid)."""
    if module is not None:
        return isinstance(module, nn.ReLU)
    if node.target in (F.relu, torch.relu, "relu"):
        return True
    if node.target in (torch.clamp, torch.clip, "clamp", "clip"):
        return _arg(node, 2, "max") is None and _clips_at_zero(node, None)
    return node.target == "clamp_min" and _clips_at_zero(node, None)


def _pads_with_zero(node: Node, module: nn.Module | None) -> bool:
    if module is not None:
        return isinstance(module, nn.ZeroPad2d) or (isinstance(module, nn.ConstantPad2d) and module.value == 0)
    mode = _arg(node, 2, "mode", "constant")
    value = _arg(node, 3, "value", None)
    return mode == "constant" and (value is None or value == 0)


def _global_pool(node: Node, module: nn.Module | None) -> bool:
    size = module.output_size if module is not None else _arg(node, 1, "output_size")
    return size in (1, (1, 1), [1, 1], (1,), [1])


def classify(node: Node, modules: dict[str, nn.Module]) -> str:
    """The role of one traced op in the int8 graph: ``int8`` (an integer kernel exists), ``grid`` (output values lie
    on the input's quantization grid), ``noop`` (not an op once exported), ``activation`` (ReLU-like, fusable into
    its producer) or ``float``."""
    module = modules.get(node.target) if node.op == "call_module" else None
    if node.op == "call_module":
        if isinstance(module, QuantWrapper):
            return INT8
        if isinstance(module, _INT8_MODULES):
            return INT8
        if isinstance(module, nn.AdaptiveAvgPool2d):
            return INT8 if _global_pool(node, module) else FLOAT
        if isinstance(module, (nn.ReLU, nn.Hardtanh)):
            return ACTIVATION if _clips_at_zero(node, module) else FLOAT
        if isinstance(module, _GRID_MODULES):
            return GRID
        if isinstance(module, nn.ConstantPad2d):
            return GRID if _pads_with_zero(node, module) else FLOAT
        if isinstance(module, nn.Upsample) and module.mode == "nearest":
            return GRID
        if isinstance(module, _NOOP_MODULES):
            return NOOP
        return FLOAT
    if node.op == "call_function":
        target = node.target
        if target in _BINARY_FUNCTIONS:
            return INT8 if _tensor_args(node, 2) and "alpha" not in node.kwargs else FLOAT
        if target in _CAT_FUNCTIONS or target in _INT8_FUNCTIONS:
            return INT8
        if target is F.adaptive_avg_pool2d:
            return INT8 if _global_pool(node, None) else FLOAT
        if target in _ACTIVATION_FUNCTIONS:
            return ACTIVATION if _clips_at_zero(node, None) else FLOAT
        if target is F.pad:
            return GRID if _pads_with_zero(node, None) else FLOAT
        if target is F.interpolate:
            return GRID if _arg(node, 3, "mode", "nearest") == "nearest" else FLOAT
        if target in _GRID_FUNCTIONS:
            return GRID
        if target in _NOOP_FUNCTIONS:
            return NOOP
        return FLOAT
    if node.op == "call_method":
        target = node.target
        if target in _BINARY_METHODS:
            return INT8 if _tensor_args(node, 2) and "alpha" not in node.kwargs else FLOAT
        if target in _INT8_METHODS:
            return INT8
        if target in _ACTIVATION_METHODS:
            return ACTIVATION if _clips_at_zero(node, None) else FLOAT
        if target in _GRID_METHODS:
            return GRID
        if target in _NOOP_METHODS:
            return NOOP
    return FLOAT


def _meta(node: Any) -> Any:
    return node.meta.get("tensor_meta") if isinstance(node, Node) else None


def _is_float_tensor(node: Any) -> bool:
    meta = _meta(node)
    return meta is not None and hasattr(meta, "dtype") and meta.dtype.is_floating_point


def _is_tuple(node: Node) -> bool:
    """A node whose value is a tuple of tensors (``chunk``, ``split``); TensorMetadata itself is a NamedTuple."""
    meta = _meta(node)
    return isinstance(meta, (tuple, list)) and not hasattr(meta, "dtype")


def _tensor_args(node: Node, count: int) -> bool:
    args = [a for a in node.args[:count]]
    return len(args) == count and all(_is_float_tensor(a) for a in args)


def _tensor_inputs(node: Node) -> list[Node]:
    """The float tensors an int8 op reads (the list of a concatenation, both operands of a binary op)."""
    if node.target in _CAT_FUNCTIONS:
        seq = _arg(node, 0, "tensors", ())
        return [a for a in seq if _is_float_tensor(a)]
    count = 2 if (node.target in _BINARY_FUNCTIONS or node.target in _BINARY_METHODS) else 1
    return [a for a in node.args[:count] if _is_float_tensor(a)]


class _Group:
    """Tensors quantized by one quantizer (a union-find set)."""

    def __init__(self, key: str) -> None:
        self.key = key
        self.parent: _Group = self
        self.members: list[str] = [key]

    def find(self) -> _Group:
        root = self
        while root.parent is not root:
            root = root.parent
        self.parent = root
        return root


def _union(a: _Group, b: _Group) -> None:
    ra, rb = a.find(), b.find()
    if ra is not rb:
        rb.parent = ra
        ra.members += rb.members


def _hoist_activations(graph: torch.fx.Graph, modules: dict[str, nn.Module]) -> None:
    """``int8 op → data movement… → ReLU`` becomes ``int8 op → ReLU → data movement…`` (each link with one user).

    Exact: max(·, 0) and min(·, c) are monotonic elementwise maps, which commute with max pooling, reshapes,
    transposes, slices and zero padding; afterwards the activation can be fused into its int8 producer."""
    for node in list(graph.nodes):
        if classify(node, modules) != ACTIVATION or not isinstance(node.args[0], Node):
            continue
        chain: list[Node] = []
        source = node.args[0]
        while (classify(source, modules) in (GRID, NOOP) and len(source.users) == 1 and not _is_tuple(source)
               and isinstance(source.args[0], Node) and not _is_tuple(source.args[0])):
            chain.append(source)
            source = source.args[0]
        if not chain or classify(source, modules) != INT8 or len(source.users) != 1:
            continue
        first = chain[-1]  # the data-movement op reading the int8 output
        node.replace_all_uses_with(node.args[0])
        node.args = (source, *node.args[1:])
        source.append(node)
        first.replace_input_with(source, node)
        node.meta["tensor_meta"] = source.meta.get("tensor_meta")


def _plan(graph: torch.fx.Graph, modules: dict[str, nn.Module]) -> tuple[dict[Node, _Group], list[Node], Placement]:
    group_of: dict[Node, _Group] = {}
    emit: list[Node] = []
    pending: set[Node] = set()
    ties: list[list[Node]] = []
    layer_calls: dict[str, list[Node]] = {}
    placement = Placement()

    def new_group(node: Node) -> _Group:
        group = _Group(node.name)
        group_of[node] = group
        emit.append(node)
        return group

    def ensure(value: Node) -> None:
        if value not in group_of and not _is_tuple(value):
            new_group(value)

    for node in graph.nodes:
        if node.op in ("placeholder", "output", "get_attr"):
            continue
        kind = classify(node, modules)
        if kind == INT8:
            inputs = _tensor_inputs(node)
            if not inputs or not _is_float_tensor(node):
                placement.float_ops[node.name] = _describe(node, modules)
                continue
            for value in inputs:
                ensure(value)
            placement.int8_ops.append(node.name)
            users = list(node.users)
            if node.op == "call_module" and isinstance(modules[node.target], QuantWrapper):
                layer_calls.setdefault(node.target, []).append(node)
                if users and all(u.op == "output" for u in users):
                    continue  # logits stay float (QGemm writes float; a conv head runs on dequantized input)
            if len(users) == 1 and classify(users[0], modules) == ACTIVATION and users[0].args[0] is node:
                pending.add(node)
                continue
            new_group(node)
            if node.target in _CAT_FUNCTIONS:
                ties.append([node, *inputs])
        elif kind == ACTIVATION:
            source = node.args[0]
            if source in pending:
                new_group(node)
            elif source in group_of and _is_relu(node, modules.get(node.target)):
                group_of[node] = group_of[source]  # relu keeps values on its input's grid (0 is on it)
                emit.append(node)
            elif _is_float_tensor(node):
                placement.float_ops[node.name] = _describe(node, modules)
        elif kind in (GRID, NOOP):
            source = node.args[0] if node.args else None
            if isinstance(source, Node) and source in group_of:
                group_of[node] = group_of[source]
                if kind == GRID and not _is_tuple(node):
                    emit.append(node)
        elif _is_float_tensor(node) and any(isinstance(a, Node) and a in group_of for a in node.all_input_nodes):
            placement.float_ops[node.name] = _describe(node, modules)
    for members in ties:
        for value in members[1:]:
            if value in group_of:
                _union(group_of[members[0]], group_of[value])
    for calls in layer_calls.values():  # one input grid (and one output grid) per layer, however often it is called
        for attr in (lambda n: n.args[0], lambda n: n):
            groups = [group_of[attr(c)] for c in calls if attr(c) in group_of]
            for group in groups[1:]:
                _union(groups[0], group)
    return group_of, emit, placement


def _describe(node: Node, modules: dict[str, nn.Module]) -> str:
    if node.op == "call_module":
        return type(modules[node.target]).__name__
    return getattr(node.target, "__name__", str(node.target))


def place_activation_quantizers_(
    model: nn.Module,
    example_inputs: torch.Tensor | Sequence[torch.Tensor],
    make_quantizer: Callable[[], FakeQuantize],
) -> Placement:
    """Trace ``model`` (its Conv/Linear layers already :class:`QuantWrapper` s), place one activation quantizer per
    tensor that an integer kernel reads or writes (module docstring), and rebind ``model.forward`` to the traced
    graph with the quantizers in it. The model keeps its class and submodules; the quantizers live in
    ``model.slimkit_act_quant``, and each wrapper's ``input_quant`` / ``output_quant`` point at the quantizers of
    its input and output tensors (for the int32 bias grid), which the graph — not the wrapper — applies.

    Raises whatever torch.fx raises when the model cannot be traced (the caller falls back to layer placement).
    """
    graph = _Tracer().trace(model)
    modules = dict(model.named_modules())
    quants = [m for m in model.modules() if isinstance(m, FakeQuantize)]
    observing = [q.observing for q in quants]
    for quant in quants:
        quant.observing = False
    try:
        from torch.fx.passes.shape_prop import ShapeProp

        with torch.no_grad():
            ShapeProp(GraphModule(model, graph)).propagate(*input_tuple(example_inputs))
    finally:
        for quant, flag in zip(quants, observing):
            quant.observing = flag
    _hoist_activations(graph, modules)
    group_of, emit, placement = _plan(graph, modules)
    roots: dict[str, _Group] = {}
    for group in group_of.values():
        root = group.find()
        roots.setdefault(root.key, root)
    quantizers = nn.ModuleDict({key: make_quantizer() for key in sorted(roots)})
    layer_quant: dict[str, tuple[FakeQuantize | None, FakeQuantize | None]] = {}
    for node in graph.nodes:
        if node.op == "call_module" and isinstance(modules.get(node.target), QuantWrapper):
            source = node.args[0]
            layer_quant[node.target] = (
                quantizers[group_of[source].find().key] if source in group_of else None,
                quantizers[group_of[node].find().key] if node in group_of else None,
            )
    for node in emit:
        key = group_of[node].find().key
        with graph.inserting_after(node):
            fq = graph.create_node("call_module", f"{QUANTIZERS_ATTR}.{key}", (node,))
        node.replace_all_uses_with(fq, delete_user_cb=lambda user, fq=fq: user is not fq)
    model.add_module(QUANTIZERS_ATTR, quantizers)
    try:
        module = GraphModule(model, graph, class_name=type(model).__name__)
    except Exception:
        delattr(model, QUANTIZERS_ATTR)
        raise
    # Nothing below can fail: the model changes only once the new forward exists.
    for name, (input_quant, output_quant) in layer_quant.items():
        wrapper = modules[name]
        wrapper.input_quant, wrapper.output_quant = input_quant, output_quant
        wrapper.graph_quantized = True
    model.forward = types.MethodType(type(module).forward, model)
    model.slimkit_graph_code = module.code
    placement.quantizers = len(quantizers)
    placement.shared = {key: sorted(set(root.members)) for key, root in roots.items() if len(set(root.members)) > 1}
    log.info("activation quantizers: %d; int8 ops: %d; float ops: %s", len(quantizers), len(placement.int8_ops),
             ", ".join(f"{k} ({v})" for k, v in placement.float_ops.items()) or "none")
    return placement
