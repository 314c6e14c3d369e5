"""Caching the teacher's logits for a fixed dataset, keyed by sample index.

Design: :class:`TensorLoader` yields ``(inputs, targets)`` without sample indices, and ``fit`` calls
``step(model, inputs, targets)``. Rather than change either, :class:`IndexedLoader` wraps a TensorLoader, iterates
it unchanged, and before yielding each batch publishes that batch's dataset indices on a shared
:class:`IndexChannel`; the step reads them. ``fit`` consumes one batch per step synchronously, so the channel always
holds the indices of the batch being trained. The indices come from the same permutation the TensorLoader uses
(``(seed, epoch)``-seeded, per-rank shard under DDP), and every batch is checked against the labels it carries.

The cache is filled lazily: the first time a sample is seen (epoch 1, or the first epoch a DDP rank's shard
contains it) the teacher runs on the batch; afterwards its logits are read back, halving the cost of KD. It is only
valid when a sample always looks the same, so augmented loaders are refused.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

import torch

from slimkit._errors import ConfigError, DataError


class IndexChannel:
    """Holds the dataset indices of the batch most recently yielded by an :class:`IndexedLoader`."""

    def __init__(self) -> None:
        self.indices: torch.Tensor | None = None


class IndexedLoader:
    """A TensorLoader wrapper that publishes each batch's sample indices on ``channel`` (shared by its shards)."""

    def __init__(self, loader, channel: IndexChannel | None = None) -> None:
        if not all(hasattr(loader, a) for a in ("inputs", "targets", "batch_size", "_indices")):
            raise ConfigError(
                "caching teacher outputs needs a slimkit TensorLoader (fixed in-memory dataset), got "
                f"{type(loader).__name__}: pass cache_teacher=False"
            )
        if getattr(loader, "augment", None) is not None:
            raise ConfigError(
                "caching teacher outputs needs a fixed dataset, but the loader augments its inputs (the teacher "
                "would see different images each epoch): pass cache_teacher=False, or a loader without augment"
            )
        self.loader, self.channel = loader, channel or IndexChannel()

    @property
    def dataset_size(self) -> int:
        return len(self.loader.inputs)

    def set_epoch(self, epoch: int) -> None:
        self.loader.set_epoch(epoch)

    def shard(self, rank: int, world_size: int) -> IndexedLoader:
        return IndexedLoader(self.loader.shard(rank, world_size), self.channel)

    def __len__(self) -> int:
        return len(self.loader)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        order = self.loader._indices()
        size = self.loader.batch_size
        for k, (inputs, targets) in enumerate(self.loader):
            indices = order[k * size : k * size + len(targets)]
            if len(indices) != len(targets) or not torch.equal(self.loader.targets[indices], targets):
                raise DataError("the loader's batches do not follow its index order: cannot cache teacher outputs")
            self.channel.indices = indices
            yield inputs, targets
        self.channel.indices = None


class TeacherCache:
    """Teacher logits for every sample of a dataset, filled lazily by index."""

    def __init__(self, size: int) -> None:
        self.logits: torch.Tensor | None = None
        self.filled = torch.zeros(size, dtype=torch.bool)
        self.hits = self.misses = 0

    def get(self, indices: torch.Tensor, inputs: torch.Tensor,
            teacher: Callable[[torch.Tensor], torch.Tensor]) -> torch.Tensor:
        """The teacher's logits for ``inputs`` (samples ``indices``), running ``teacher`` only for unseen ones."""
        missing = ~self.filled[indices]
        if bool(missing.any()):
            with torch.no_grad():
                fresh = teacher(inputs[missing]).detach()
            if self.logits is None:
                self.logits = torch.zeros(len(self.filled), *fresh.shape[1:], dtype=fresh.dtype)
            self.logits[indices[missing]] = fresh
            self.filled[indices[missing]] = True
            self.misses += int(missing.sum())
        self.hits += int((~missing).sum())
        assert self.logits is not None
        return self.logits[indices]
