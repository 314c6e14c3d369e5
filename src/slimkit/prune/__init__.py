"""Pruning: structured (physical channel removal through the dependency graph, criteria incl. ThiNet, schedules,
sensitivity, width scaling), depth (whole transformer blocks by importance) and unstructured (magnitude masks, AGP)."""

from slimkit.prune._agp import AGPCallback, AGPConfig, agp_sparsity
from slimkit.prune._config import PruneConfig
from slimkit.prune._criteria import (
    CRITERIA,
    Criterion,
    PruneContext,
    batch_loss,
    register_criterion,
    unit_reduce,
    unit_rows,
)
from slimkit.prune._depth import (
    DEPTH_CRITERIA,
    BlockImportance,
    DepthPruneConfig,
    block_importance,
    depth_candidates,
    find_block_lists,
    find_blocks,
    prune_depth,
    remove_blocks,
)
from slimkit.prune._hf import is_hf_model, load_pruned, save_pruned
from slimkit.prune._latency import LatencyTarget, as_latency_target, prune_to_latency
from slimkit.prune._layout import apply_layout_, changed_size_attributes
from slimkit.prune._reconstruct import reconstruct_, reconstruct_layer_
from slimkit.prune._schedule import SCHEDULES, prune_iterative, prune_layerwise, prune_oneshot
from slimkit.prune._sensitivity import SensitivityResult, ratios_from_sensitivity, sensitivity
from slimkit.prune._slimming import BNScaleL1
from slimkit.prune._structured import config_graph, plan_removal, prune_channels, pruning_info
from slimkit.prune._thinet import ThiNetCriterion, thinet_greedy, thinet_scales
from slimkit.prune._unstructured import (
    MaskCallback,
    SparseStorageRow,
    UnstructuredConfig,
    apply_masks_,
    attach_masks_,
    attached_masks,
    finalize,
    holding_masks,
    layer_sparsities,
    magnitude_masks,
    magnitude_prune,
    prunable_layers,
    relative_index_bytes,
    sparse_storage,
    sparsity_of,
)
from slimkit.prune._width import WidthConfig, scale_width

__all__ = [
    "CRITERIA",
    "DEPTH_CRITERIA",
    "SCHEDULES",
    "AGPCallback",
    "AGPConfig",
    "BNScaleL1",
    "BlockImportance",
    "Criterion",
    "DepthPruneConfig",
    "LatencyTarget",
    "MaskCallback",
    "PruneConfig",
    "PruneContext",
    "SensitivityResult",
    "SparseStorageRow",
    "ThiNetCriterion",
    "UnstructuredConfig",
    "WidthConfig",
    "agp_sparsity",
    "apply_layout_",
    "apply_masks_",
    "as_latency_target",
    "attach_masks_",
    "attached_masks",
    "batch_loss",
    "block_importance",
    "changed_size_attributes",
    "config_graph",
    "depth_candidates",
    "finalize",
    "find_block_lists",
    "find_blocks",
    "holding_masks",
    "is_hf_model",
    "layer_sparsities",
    "load_pruned",
    "magnitude_masks",
    "magnitude_prune",
    "plan_removal",
    "prunable_layers",
    "prune_channels",
    "prune_depth",
    "prune_iterative",
    "prune_layerwise",
    "prune_oneshot",
    "prune_to_latency",
    "pruning_info",
    "ratios_from_sensitivity",
    "reconstruct_",
    "reconstruct_layer_",
    "register_criterion",
    "relative_index_bytes",
    "remove_blocks",
    "save_pruned",
    "scale_width",
    "sensitivity",
    "sparse_storage",
    "sparsity_of",
    "thinet_greedy",
    "thinet_scales",
    "unit_reduce",
    "unit_rows",
]
