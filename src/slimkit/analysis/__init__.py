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
from slimkit.analysis._latency import (
    AA_BAND,
    TOO_NOISY,
    LatencyComparison,
    LatencyResult,
    compare_latency,
    compare_latency_many,
    format_ratio,
    latency,
)
from slimkit.analysis._latency_probe import Geometry, OrtMeasurer, detect_step
from slimkit.analysis._latency_table import LatencyTable, LayerLatency, build_latency_table
from slimkit.analysis._openvino import OpenVinoMeasurer, openvino_core
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
    "LM_IGNORE_INDEX",
    "TOO_NOISY",
    "ZERO_COST",
    "EvalResult",
    "Geometry",
    "LatencyComparison",
    "LatencyResult",
    "LatencyTable",
    "LayerLatency",
    "LayerProfile",
    "ModelProfile",
    "OpenVinoMeasurer",
    "OrtMeasurer",
    "ProfileTotals",
    "build_latency_table",
    "compare_latency",
    "compare_latency_many",
    "csr_bytes",
    "detect_step",
    "evaluate",
    "find_counter",
    "first_tensor",
    "format_ratio",
    "is_token_output",
    "latency",
    "miou_from_confusion",
    "openvino_core",
    "output_logits",
    "profile",
    "register_counter",
    "register_storage",
    "storage_bytes",
    "token_cross_entropy",
]
