"""Graph rewrites done before quantization: BatchNorm folding into the preceding conv (Jacob et al. 2018 §3.2),
finding ReLUs that int8 kernels fuse into the conv, and layers whose input is another layer's output on the same
quantization grid."""

from __future__ import annotations

import copy
import logging
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

log = logging.getLogger(__name__)


@dataclass
class GraphFacts:
    """What tracing found: conv→BN pairs, layer→ReLU pairs (ReLU module is the layer's only user), and the layers
    whose output is the model's output (left unquantized: logits keep full precision, as TensorRT does).
    ``grid_inputs`` pairs (consumer, producer) where the consumer layer's input is the producer layer's output
    passed only through ops that keep values on its quantization grid (max pooling, ReLU, reshapes, dropout)."""

    traced: bool
    conv_bn: list[tuple[str, str]] = field(default_factory=list)
    layer_relu: list[tuple[str, str]] = field(default_factory=list)
    model_outputs: list[str] = field(default_factory=list)
    grid_inputs: list[tuple[str, str]] = field(default_factory=list)
    error: str = ""


# Ops whose output values are a subset of their input's (max pooling, ReLU with zero on the grid, reshapes): a
# tensor on a quantization grid stays on it, so the next layer can quantize with the same scale and zero point and
# ONNX Runtime runs the op in int8 (its QDQ rules fuse DQ → MaxPool → Q only when both sides share qparams).
_GRID_MODULES = (nn.MaxPool1d, nn.MaxPool2d, nn.AdaptiveMaxPool2d, nn.ReLU, nn.Identity, nn.Dropout, nn.Flatten,
                 nn.BatchNorm2d)  # BatchNorm2d only when folded (checked below)
_GRID_FUNCTIONS = (F.max_pool1d, F.max_pool2d, F.adaptive_max_pool2d, F.relu, torch.relu, torch.flatten,
                   torch.reshape, F.dropout, )
_GRID_METHODS = ("view", "reshape", "flatten", "relu", "contiguous")


def analyse(model: nn.Module) -> GraphFacts:
    """Trace ``model`` with torch.fx and list conv→BatchNorm and conv/linear→ReLU module chains."""
    try:
        graph = torch.fx.symbolic_trace(model).graph
    except Exception as error:
        # only worth a warning when there is a BatchNorm left unfolded (transformers never trace and have none)
        has_bn = any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules())
        log.log(logging.WARNING if has_bn else logging.INFO, "could not trace %s with torch.fx (%s): BatchNorm is "
                "not folded", type(model).__name__, error)
        return GraphFacts(traced=False, error=str(error).splitlines()[0] if str(error) else type(error).__name__)
    modules = dict(model.named_modules())
    calls: dict[str, int] = {}
    for node in graph.nodes:
        if node.op == "call_module":
            calls[node.target] = calls.get(node.target, 0) + 1
    facts = GraphFacts(traced=True)
    facts.model_outputs = [n.target for n in graph.nodes if n.op == "call_module" and calls[n.target] == 1
                           and any(u.op == "output" for u in n.users)]
    for node in graph.nodes:
        if node.op != "call_module" or len(node.users) != 1 or calls[node.target] != 1:
            continue
        user = next(iter(node.users))
        if user.op != "call_module" or calls[user.target] != 1:  # a shared module cannot be rewritten for one use
            continue
        layer, nxt = modules[node.target], modules[user.target]
        if isinstance(layer, nn.Conv2d) and isinstance(nxt, nn.BatchNorm2d):
            facts.conv_bn.append((node.target, user.target))
        elif isinstance(layer, (nn.Conv2d, nn.Linear)) and isinstance(nxt, nn.ReLU):
            facts.layer_relu.append((node.target, user.target))
    # A BN folded into its conv hands the conv its ReLU too: conv → bn → relu becomes conv(+relu).
    for conv_name, bn_name in facts.conv_bn:
        for node in graph.nodes:
            if node.op == "call_module" and node.target == bn_name and len(node.users) == 1:
                user = next(iter(node.users))
                if user.op == "call_module" and isinstance(modules[user.target], nn.ReLU) and calls[user.target] == 1:
                    facts.layer_relu.append((conv_name, user.target))
    facts.grid_inputs = _grid_inputs(graph, modules, calls, {bn for _, bn in facts.conv_bn})
    return facts


def _grid_inputs(graph: torch.fx.Graph, modules: dict[str, nn.Module], calls: dict[str, int],
                 folded_bn: set[str]) -> list[tuple[str, str]]:
    def layer(node: torch.fx.Node) -> bool:
        return (node.op == "call_module" and calls[node.target] == 1
                and isinstance(modules[node.target], (nn.Conv2d, nn.Linear)))

    def keeps_grid(node: torch.fx.Node) -> bool:
        if node.op == "call_module":
            module = modules[node.target]
            return isinstance(module, _GRID_MODULES) and (not isinstance(module, nn.BatchNorm2d)
                                                          or node.target in folded_bn)
        if node.op == "call_function":
            return node.target in _GRID_FUNCTIONS
        return node.op == "call_method" and node.target in _GRID_METHODS

    pairs = []
    for node in graph.nodes:
        if not layer(node) or not node.args or not isinstance(node.args[0], torch.fx.Node):
            continue
        source = node.args[0]
        while keeps_grid(source) and source.args and isinstance(source.args[0], torch.fx.Node):
            source = source.args[0]
        if layer(source):
            pairs.append((node.target, source.target))
    return pairs


def fold_bn_into_conv(conv: nn.Conv2d, bn: nn.BatchNorm2d) -> nn.Conv2d:
    """A new conv equal to ``bn(conv(x))`` in eval mode: ``W' = W · γ/σ``, ``b' = (b - μ) · γ/σ + β`` with
    ``σ = sqrt(running_var + eps)`` (Jacob et al. 2018, §3.2)."""
    folded = copy.deepcopy(conv)
    std = torch.sqrt(bn.running_var.double() + bn.eps)
    gamma = bn.weight.double() if bn.weight is not None else torch.ones_like(std)
    beta = bn.bias.double() if bn.bias is not None else torch.zeros_like(std)
    factor = gamma / std
    bias = conv.bias.double() if conv.bias is not None else torch.zeros_like(std)
    with torch.no_grad():
        weight = conv.weight.double() * factor.reshape(-1, *([1] * (conv.weight.dim() - 1)))
        folded.weight = nn.Parameter(weight.to(conv.weight.dtype))
        folded.bias = nn.Parameter(((bias - bn.running_mean.double()) * factor + beta).to(conv.weight.dtype))
    return folded


def set_submodule(model: nn.Module, name: str, module: nn.Module) -> None:
    parent_name, _, child = name.rpartition(".")
    setattr(model.get_submodule(parent_name) if parent_name else model, child, module)


def fold_bn(model: nn.Module) -> nn.Module:
    """A copy of ``model`` (eval mode) with every BatchNorm2d that directly follows a Conv2d folded into it and
    replaced by ``nn.Identity``; outputs are unchanged up to float rounding."""
    model = copy.deepcopy(model).eval()
    fold_bn_(model, analyse(model))
    return model


def fold_bn_(model: nn.Module, facts: GraphFacts) -> list[tuple[str, str]]:
    """Fold the conv→BN pairs in ``facts`` in place; returns the pairs folded."""
    for conv_name, bn_name in facts.conv_bn:
        conv, bn = model.get_submodule(conv_name), model.get_submodule(bn_name)
        set_submodule(model, conv_name, fold_bn_into_conv(conv, bn))
        set_submodule(model, bn_name, nn.Identity())
    return list(facts.conv_bn)
