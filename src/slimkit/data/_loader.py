"""A fast loader for datasets held as tensors in memory (MNIST, digits), with sharding for DDP.

``torch.utils.data.DataLoader`` indexes one sample at a time and collates in Python; for 28×28 images that costs
more than the model. :class:`TensorLoader` slices whole batches from the tensors instead, shuffles with a
generator seeded by ``(seed, epoch)`` (so an interrupted run resumes with the same order), and gives each DDP rank
a disjoint shard of every epoch's permutation, like ``DistributedSampler``.
"""

from __future__ import annotations

import math
from collections.abc import Iterator

import torch

from slimkit._errors import ConfigError
from slimkit.data._augment import Augment


class TensorLoader:
    """Iterates ``(inputs, targets)`` batches over in-memory tensors.

    ``len(loader)`` is the number of batches this rank yields per epoch; ``set_epoch`` chooses the permutation.
    """

    def __init__(
        self,
        inputs: torch.Tensor,
        targets: torch.Tensor,
        batch_size: int = 128,
        *,
        shuffle: bool = False,
        drop_last: bool = False,
        augment: Augment | None = None,
        seed: int = 0,
        rank: int = 0,
        world_size: int = 1,
    ) -> None:
        if len(inputs) != len(targets):
            raise ConfigError(f"inputs ({len(inputs)}) and targets ({len(targets)}) differ in length")
        if batch_size < 1:
            raise ConfigError(f"batch_size must be ≥ 1, got {batch_size}")
        self.inputs, self.targets = inputs, targets
        self.batch_size, self.shuffle, self.drop_last = batch_size, shuffle, drop_last
        self.augment, self.seed = augment, seed
        self.rank, self.world_size = rank, world_size
        self.epoch = 0

    @property
    def dataset_size(self) -> int:
        return len(self.inputs)

    def set_epoch(self, epoch: int) -> None:
        """Choose the shuffle order and augmentation for ``epoch`` (deterministic given the seed)."""
        self.epoch = epoch

    def shard(self, rank: int, world_size: int) -> TensorLoader:
        """A copy of this loader that yields rank ``rank``'s share of each epoch."""
        loader = TensorLoader(
            self.inputs, self.targets, self.batch_size, shuffle=self.shuffle, drop_last=self.drop_last,
            augment=self.augment, seed=self.seed, rank=rank, world_size=world_size,
        )
        loader.epoch = self.epoch
        return loader

    def _indices(self) -> torch.Tensor:
        n = len(self.inputs)
        if self.shuffle:
            generator = torch.Generator().manual_seed(self.seed * 100_003 + self.epoch)
            order = torch.randperm(n, generator=generator)
        else:
            order = torch.arange(n)
        if self.world_size > 1:
            per_rank = math.ceil(n / self.world_size)
            padded = torch.cat([order, order[: per_rank * self.world_size - n]])
            order = padded[self.rank :: self.world_size]
        return order

    def __len__(self) -> int:
        n = len(self._indices()) if self.world_size > 1 else len(self.inputs)
        return n // self.batch_size if self.drop_last else math.ceil(n / self.batch_size)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        order = self._indices()
        generator = torch.Generator().manual_seed(self.seed * 7_919 + self.epoch * 31 + self.rank)
        for start in range(0, len(order), self.batch_size):
            idx = order[start : start + self.batch_size]
            if self.drop_last and len(idx) < self.batch_size:
                break
            x = self.inputs[idx]
            if self.augment is not None:
                x = self.augment(x, generator)
            yield x, self.targets[idx]
