"""Reproducible runs: deterministic seeding of Python, NumPy and PyTorch, and a pinned PyTorch thread count."""

from __future__ import annotations

import contextlib
import random
from collections.abc import Iterator

import numpy as np
import torch


def seed_everything(seed: int) -> None:
    """Seed every random generator a training run touches."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


@contextlib.contextmanager
def torch_threads(count: int | None) -> Iterator[None]:
    """PyTorch's (process-wide) intra-op thread count set to ``count`` inside the block and the caller's restored
    after it (None: left as it is). CPU kernels split their sums by thread count, so results depend on it."""
    if count is None:
        yield
        return
    previous = torch.get_num_threads()
    torch.set_num_threads(count)
    try:
        yield
    finally:
        torch.set_num_threads(previous)
