"""Recognising Hugging Face layer classes without importing ``transformers``."""

from __future__ import annotations

from torch import nn


def is_hf_conv1d(module: nn.Module) -> bool:
    """Hugging Face's ``Conv1D`` (GPT-2's projections): ``y = x W + b`` with ``W`` stored (in, out)."""
    return type(module).__name__ == "Conv1D" and hasattr(module, "nf") and module.weight.dim() == 2
