"""Channel-dependency graphs: trace a model with torch.fx and find the channels that must be pruned together."""

from slimkit.graph._apply import apply_removal
from slimkit.graph._graph import (
    ChannelGroup,
    DependencyGraph,
    ModuleUse,
    build_graph,
    dependency_graph,
    trace,
)
from slimkit.graph._handlers import LayerHandler, handler_for, register_handler
from slimkit.graph._ops import FUNCTION_RULES, METHOD_RULES, choose_unit_dim
from slimkit.graph._unionfind import UnionFind

__all__ = [
    "FUNCTION_RULES",
    "METHOD_RULES",
    "ChannelGroup",
    "DependencyGraph",
    "LayerHandler",
    "ModuleUse",
    "UnionFind",
    "apply_removal",
    "build_graph",
    "choose_unit_dim",
    "dependency_graph",
    "handler_for",
    "register_handler",
    "trace",
]
