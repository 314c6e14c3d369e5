"""Channel-dependency graphs: capture a model, find the channels that must be pruned together, remove them.

Design notes
------------
**Capture: one recorded forward.** The model runs once on the example inputs under a ``TorchFunctionMode`` that
records every torch function and tensor method with its arguments, and global module hooks that say which module's
code ran each op (``_capture.py``). Because the forward runs on real tensors, real-world code works as written:
Hugging Face models with keyword inputs, ``ModelOutput`` results, caches, mask builders and data-dependent Python
branches; Swin's window partitioning and shifted-window masks; torchvision's ``stochastic_depth`` (an identity at
inference, so there is nothing to follow). We measured the alternatives on BERT, DistilBERT, RoBERTa, GPT-2, Llama,
Mistral, Qwen2, ViT, DeiT and Swin built from small configs (``benchmarks/results/transformers_breadth.md``, each in
a fresh process):

- ``torch.fx.symbolic_trace`` fails on all ten (``'Proxy' object does not support item assignment``,
  ``co_varnames is too small``, ``Proxy object cannot be iterated`` on Swin);
- ``torch.export`` (non-strict) fails on the four decoders unless they are called with ``use_cache=False`` (a cache
  object in the output), and then captures all ten, about twice as slowly as a recorded forward (0.9–3.0 s against
  0.3–1.4 s for these models), as an ATen graph with the parameters lifted to inputs and the module-level calls
  (``F.linear`` on a module's own weight, ``view`` with the sizes the module passed) decomposed;
- a recorded forward captures all ten with no model-specific argument, costs one forward plus a few microseconds
  per op (14 s for a 1.24B-parameter Llama on a busy 2-core machine), and keeps the calls at the level of the user's
  code, which is what a pruned model's module attributes must be matched against.

Its limit is the one every tracer has: it sees the path this input takes. The pruned model is therefore run once
more on the same input and checked op by op (every result must have exactly the expected shape), so a size the
code hard-codes or reads from an attribute slimkit did not update is a :class:`~slimkit.TraceError` naming the
module and op (:class:`UnfollowedSize`), never a silently wrong model. ``prune_channels`` answers it first by
keeping every module of the failing module's class whole (``pruning_info(...)["kept_whole"]``).

**Attention whose head width is read from the input.** ``nn.MultiheadAttention`` and torchvision's Swin and MaxViT
attention split q/k/v into heads of input-width ÷ heads channels, so their attention width is tied to the residual
width by count, which identities alone cannot say. Each is one recorded op (a ``leaf`` module rule) whose unit is
head-dim slot d of every head, tied to residual channels d, d + head_dim, ...: pruning a slot removes one channel
from each head and ``heads`` channels from the residual stream, and the count stays true. Where the attention
scales q by head_dim^-0.5 computed from the pruned width (PyTorch's, Swin v1's), the q rows are multiplied by
sqrt(new/old head_dim), so the kept dims score exactly as before (a zeroed slot is removed with no change).
Symbolic ``torch.fx`` keeps one place: when the size is hard-coded in the model's own ``forward``
(``x.view(-1, 400)``) and the model traces, the pruning is applied to a ``GraphModule`` whose constants the op rules
rewrite (``_fx.py``); that is the only case a ``GraphModule`` comes back.

**Ids and groups.** Every tensor carries one id per element (stored compressed); rules merge ids of elements that
must be pruned together (``_ops.py``, ``_movement.py``, ``_layers.py``, ``_attention.py``), and a vectorised
union-find (``_unionfind.py``) turns them into units and groups (``_graph.py``). Parameters carry one id vector per
dim, so a weight's rows and columns are pruned independently whichever module owns it (tied embeddings,
``F.linear`` on a shared weight, GPT-2's ``Conv1D``).

**Removal keeps the user's model.** ``apply_removal`` slices the parameters of a copy of the model that shares the
caller's tensors until they are replaced (peak memory: the model plus the pruned model, 1.66× the model for the
1.24B Llama), sets size attributes (``in_features``, ``num_heads``, ``all_head_size``, ``split_size``, ...;
``_modules.py`` has the per-type rules), and checks the result (``_apply.py``, ``_verify.py``).

**Time bound.** Capture, propagation and removal run under a :class:`Deadline`: an op loop that never ends and
pure-Python code that spins both end in a :class:`TimeBoundExceeded` (a ``TraceError``) after the bound.

**Extending.** One registry entry per op — ``@register_op(fn, rewrite=...)`` on a ``propagate(ctx, call)`` function
(how ids flow, :class:`TraceContext` documents the vocabulary; how the op's shape arguments change) — and one per
module type, ``register_module(cls, resize=..., leaf=..., macs=...)`` (size attributes after slicing; optionally
treat every call as one op, counting its MACs). ``op_rules()`` and ``module_rules()`` list them; the tests run
over both.
"""

from slimkit.graph._apply import Removal, apply_removal
from slimkit.graph._capture import Call, Capture, CaptureFailed, Ref, ValueInfo, capture, run_model, split_inputs
from slimkit.graph._context import AttentionSite, CannotFollow, ModuleUse, ParamDims, TraceContext
from slimkit.graph._deadline import Deadline, TimeBoundExceeded
from slimkit.graph._fx import prune_as_graph_module, symbolic_trace
from slimkit.graph._graph import (
    GQA_MODES,
    KINDS,
    ChannelGroup,
    DependencyGraph,
    UnitSlice,
    build_graph,
    dependency_graph,
    propagate,
    shared_copy,
)
from slimkit.graph._macs import count_macs
from slimkit.graph._ops import choose_unit_dim, dim_groups
from slimkit.graph._rules import (
    ModuleRule,
    OpRule,
    ResizeInfo,
    RewriteContext,
    module_rule,
    module_rules,
    op_rule,
    op_rules,
    register_module,
    register_op,
)
from slimkit.graph._unionfind import UnionFind
from slimkit.graph._verify import UnfollowedSize, verify_removal

__all__ = [
    "GQA_MODES",
    "KINDS",
    "AttentionSite",
    "Call",
    "CannotFollow",
    "Capture",
    "CaptureFailed",
    "ChannelGroup",
    "Deadline",
    "DependencyGraph",
    "ModuleRule",
    "ModuleUse",
    "OpRule",
    "ParamDims",
    "Ref",
    "Removal",
    "ResizeInfo",
    "RewriteContext",
    "TimeBoundExceeded",
    "TraceContext",
    "UnfollowedSize",
    "UnionFind",
    "UnitSlice",
    "ValueInfo",
    "apply_removal",
    "build_graph",
    "capture",
    "choose_unit_dim",
    "count_macs",
    "dependency_graph",
    "dim_groups",
    "module_rule",
    "module_rules",
    "op_rule",
    "op_rules",
    "propagate",
    "prune_as_graph_module",
    "register_module",
    "register_op",
    "run_model",
    "shared_copy",
    "split_inputs",
    "symbolic_trace",
    "verify_removal",
]
