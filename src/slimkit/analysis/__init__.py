"""Measuring models honestly: parameters, MACs, bytes (profile), real latency, and accuracy (evaluate)."""

from slimkit.analysis._counters import ZERO_COST, find_counter, first_tensor, register_counter
from slimkit.analysis._evaluate import EvalResult, evaluate, miou_from_confusion
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
    "latency",
    "miou_from_confusion",
    "profile",
    "register_counter",
    "register_storage",
    "storage_bytes",
]
