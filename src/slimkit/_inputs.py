"""Example inputs as the tuple a model is called with: one tensor, or a sequence of them (a multi-input model)."""

from __future__ import annotations

from collections.abc import Sequence

import torch


def input_tuple(example_inputs: torch.Tensor | Sequence[torch.Tensor]) -> tuple[torch.Tensor, ...]:
    """``(x,)`` for one tensor, ``tuple(xs)`` for several: ready for ``model(*inputs)``."""
    return (example_inputs,) if isinstance(example_inputs, torch.Tensor) else tuple(example_inputs)
