"""Measuring models honestly: parameters, MACs, bytes (profile), real latency, and accuracy (evaluate)."""

from slimkit.analysis._counters import ZERO_COST, find_counter, register_counter
from slimkit.analysis._evaluate import EvalResult, evaluate, miou_from_confusion
from slimkit.analysis._latency import (
    AA_BAND,
    TOO_NOISY,
    LatencyComparison,
    LatencyResult,
    compare_latency,
    format_ratio,
    latency,
)
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
    "AA_BAND",
    "TOO_NOISY",
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
    "format_ratio",
    "latency",
    "miou_from_confusion",
    "profile",
    "register_counter",
    "register_storage",
    "storage_bytes",
]
