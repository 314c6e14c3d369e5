"""Vectorised union-find over integer channel ids: the bookkeeping behind coupled channel groups."""

from __future__ import annotations

import numpy as np
import torch


class UnionFind:
    """Channel ids that must be pruned together end up with one root; a *blocked* root is never pruned.

    Ids are allocated in blocks by :meth:`fresh`; unions take whole arrays so a residual add of two C-channel
    tensors is one call, not C Python calls.
    """

    def __init__(self) -> None:
        self.parent = np.zeros(0, dtype=np.int64)
        self.blocked = np.zeros(0, dtype=bool)

    def __len__(self) -> int:
        return len(self.parent)

    def fresh(self, shape: int | tuple[int, ...], blocked: bool = False) -> torch.Tensor:
        """New distinct ids, as an int64 tensor of ``shape``."""
        size = int(np.prod(shape)) if isinstance(shape, tuple) else int(shape)
        start = len(self.parent)
        self.parent = np.concatenate([self.parent, np.arange(start, start + size, dtype=np.int64)])
        self.blocked = np.concatenate([self.blocked, np.full(size, blocked)])
        ids = torch.arange(start, start + size, dtype=torch.int64)
        return ids.reshape(shape if isinstance(shape, tuple) else (size,))

    def find(self, ids: np.ndarray | torch.Tensor) -> np.ndarray:
        """Roots of ``ids`` (same shape), with path compression."""
        x = ids.numpy() if isinstance(ids, torch.Tensor) else np.asarray(ids, dtype=np.int64)
        root = self.parent[x]
        while True:
            up = self.parent[root]
            if np.array_equal(up, root):
                break
            root = up
        self.parent[x] = root
        return root

    def roots(self, ids: torch.Tensor) -> torch.Tensor:
        return torch.from_numpy(self.find(ids).reshape(tuple(ids.shape)))

    def union(self, a: torch.Tensor | np.ndarray, b: torch.Tensor | np.ndarray) -> None:
        """Merge ``a[i]`` with ``b[i]`` for every (broadcast) position i."""
        ta = torch.as_tensor(np.asarray(a)) if not isinstance(a, torch.Tensor) else a
        tb = torch.as_tensor(np.asarray(b)) if not isinstance(b, torch.Tensor) else b
        ta, tb = torch.broadcast_tensors(ta, tb)
        ra, rb = self.find(ta.reshape(-1)), self.find(tb.reshape(-1))
        differ = ra != rb
        if not differ.any():
            return
        pairs = np.unique(np.stack([ra[differ], rb[differ]], axis=1), axis=0)
        for x, y in pairs:
            rx, ry = int(self.find(np.array([x]))[0]), int(self.find(np.array([y]))[0])
            if rx == ry:
                continue
            low, high = min(rx, ry), max(rx, ry)
            self.parent[high] = low
            self.blocked[low] |= self.blocked[high]

    def block(self, ids: torch.Tensor | np.ndarray) -> None:
        """Mark the groups holding ``ids`` as never prunable."""
        arr = ids.reshape(-1) if isinstance(ids, torch.Tensor) else np.asarray(ids).reshape(-1)
        self.blocked[self.find(arr)] = True

    def is_blocked(self, ids: torch.Tensor | np.ndarray) -> np.ndarray:
        return self.blocked[self.find(ids)]
