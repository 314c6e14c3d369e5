"""Models built only when their weights fit this machine: a spec, a config or a file asking for more is refused
before anything is allocated (the model is first built on the meta device)."""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TypeVar

import torch
from torch import nn

from slimkit._errors import ConfigError, ModelSpecError

M = TypeVar("M", bound=nn.Module)


def memory_bytes() -> int:
    """Physical memory of this machine (a model whose weights exceed it cannot be built here)."""
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return 64 * 2**30


def available_bytes() -> int:
    """Memory this process can still take: the kernel's estimate of available memory (``MemAvailable``), within a
    cgroup's limit when one is set; the physical memory where neither can be read."""
    available = memory_bytes()
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                available = int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    try:  # a container's limit (cgroup v2) is lower than the machine's memory
        limit = Path("/sys/fs/cgroup/memory.max").read_text().strip()
        if limit != "max":
            used = int(Path("/sys/fs/cgroup/memory.current").read_text())
            available = min(available, max(int(limit) - used, 0))
    except (OSError, ValueError):
        pass
    return available


def check_input_memory(shape: Sequence[int], what: str, *, element_bytes: int = 4) -> None:
    """A :class:`ConfigError` naming ``what`` when one input of ``shape`` would alone take more than the memory
    available, before it is allocated (a tensor that size fails with a traceback, or the kernel kills the process
    part way through the work)."""
    size = math.prod(shape) * element_bytes
    available = available_bytes()
    if size > available:
        raise ConfigError(f"{what} {','.join(map(str, shape))} is too large for this machine's memory: one input "
                          f"would take {size / 2**30:,.1f} GiB, and {available / 2**30:,.1f} GiB is available: "
                          "give a smaller shape")


def state_bytes(model: nn.Module) -> int:
    """Bytes of ``model``'s state dict (weights and persistent buffers), also of a model built on the meta device."""
    return sum(t.numel() * t.element_size() for t in model.state_dict().values())


def buffer_bytes(model: nn.Module) -> int:
    """Bytes of ``model``'s buffers, persistent or not (what a build with its parameters on the meta device
    allocates)."""
    return sum(b.numel() * b.element_size() for b in model.buffers())


def check_fits_memory(build: Callable[[], M], what: str, *, error: type[Exception] = ModelSpecError,
                      size: Callable[[nn.Module], int] = state_bytes) -> M:
    """``build()`` on the meta device (nothing allocated), returned; ``error`` naming ``what`` when the bytes
    ``size`` counts of it (default: its weights) would exceed this machine's memory."""
    with torch.device("meta"):
        probe = build()
    needed = size(probe)
    if needed > memory_bytes():
        raise error(f"{what} would hold {needed / 2**30:,.1f} GiB of {'weights' if size is state_bytes else 'tensors'}"
                    f", more than this machine's {memory_bytes() / 2**30:,.0f} GiB: check the sizes")
    return probe


def within_memory(build: Callable[[], M], what: str, *, error: type[Exception] = ModelSpecError,
                  size: Callable[[nn.Module], int] = state_bytes) -> M:
    """``build()``, once :func:`check_fits_memory` has passed it (under a meta default device, the probe itself)."""
    on_meta = torch.get_default_device().type == "meta"
    probe = check_fits_memory(build, what, error=error, size=size)
    return probe if on_meta else build()
