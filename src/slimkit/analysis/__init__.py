"""Measuring models honestly: parameters, MACs, bytes (profile), real latency, and accuracy (evaluate)."""

from slimkit.analysis._counters import ZERO_COST, find_counter, first_tensor, register_counter
from slimkit.analysis._evaluate import (
    LM_IGNORE_INDEX,
    EvalResult,
    evaluate,
    is_token_output,
    miou_from_confusion,
    output_logits,
    token_cross_entropy,
)
from slimkit.analysis._latency import LatencyComparison, LatencyResult, compare_latency, latency
from slimkit.analysis._profile import (
    LayerProfile,
    ModelProfile,
    ProfileTotals,
    csr_bytes,
    profile,
    register_storage,
    storage_bytes,
)

__all__ = [
    "LM_IGNORE_INDEX",
    "ZERO_COST",
    "EvalResult",
    "LatencyComparison",
    "LatencyResult",
    "LayerProfile",
    "ModelProfile",
    "ProfileTotals",
    "compare_latency",
    "csr_bytes",
    "evaluate",
    "find_counter",
    "first_tensor",
    "is_token_output",
    "latency",
    "miou_from_confusion",
    "output_logits",
    "profile",
    "register_counter",
    "register_storage",
    "storage_bytes",
    "token_cross_entropy",
]
