"""Vectorised union-find over integer channel ids: the bookkeeping behind coupled channel groups."""

from __future__ import annotations

import numpy as np
import torch

#: below this many ids a pair of ids packs into one int64 (size * size < 2**63)
_PAIR_KEY_LIMIT = 3_000_000_000


class UnionFind:
    """Channel ids that must be pruned together end up with one root; a *blocked* root is never pruned.

    Ids are allocated in blocks by :meth:`fresh` (amortised growth, so a model with millions of channel ids costs
    linear time); unions take whole arrays and are solved by vectorised hooking, so a residual add of two
    C-channel tensors is a few numpy calls, not C Python calls.
    """

    def __init__(self) -> None:
        self.parent = np.zeros(1024, dtype=np.int64)
        self._blocked = np.zeros(1024, dtype=bool)
        self.size = 0

    def __len__(self) -> int:
        return self.size

    @property
    def blocked(self) -> np.ndarray:
        """Blocked flags (meaningful at roots; use :meth:`is_blocked` for arbitrary ids)."""
        return self._blocked[: self.size]

    def fresh(self, shape: int | tuple[int, ...], blocked: bool = False) -> torch.Tensor:
        """New distinct ids, as an int64 tensor of ``shape``."""
        dims = tuple(shape) if isinstance(shape, (tuple, list, torch.Size)) else (int(shape),)
        size = int(np.prod(dims)) if dims else 1
        start = self.size
        if start + size > len(self.parent):
            capacity = max(2 * len(self.parent), start + size)
            self.parent = np.concatenate([self.parent, np.zeros(capacity - len(self.parent), dtype=np.int64)])
            self._blocked = np.concatenate([self._blocked, np.zeros(capacity - len(self._blocked), dtype=bool)])
        self.parent[start:start + size] = np.arange(start, start + size, dtype=np.int64)
        self._blocked[start:start + size] = blocked
        self.size = start + size
        return torch.arange(start, start + size, dtype=torch.int64).reshape(dims)

    def find(self, ids: np.ndarray | torch.Tensor) -> np.ndarray:
        """Roots of ``ids`` (same shape), with path compression."""
        x = ids.numpy() if isinstance(ids, torch.Tensor) else np.asarray(ids, dtype=np.int64)
        root = np.asarray(self.parent[x])
        while True:
            up = self.parent[root]
            if np.array_equal(up, root):
                break
            root = up
        self.parent[x] = root
        return root

    def roots(self, ids: torch.Tensor) -> torch.Tensor:
        """``find`` as a tensor of the same shape."""
        return torch.from_numpy(self.find(ids).reshape(tuple(ids.shape)))

    def union(self, a: torch.Tensor | np.ndarray, b: torch.Tensor | np.ndarray) -> None:
        """Merge ``a[i]`` with ``b[i]`` for every (broadcast) position i."""
        ta = a if isinstance(a, torch.Tensor) else torch.as_tensor(np.asarray(a, dtype=np.int64))
        tb = b if isinstance(b, torch.Tensor) else torch.as_tensor(np.asarray(b, dtype=np.int64))
        ta, tb = torch.broadcast_tensors(ta, tb)
        ra, rb = self.find(ta.reshape(-1)), self.find(tb.reshape(-1))
        differ = ra != rb
        if not differ.any():
            return
        lo, hi = np.minimum(ra[differ], rb[differ]), np.maximum(ra[differ], rb[differ])
        if self.size < _PAIR_KEY_LIMIT:  # one int64 key per pair: a 1-D unique, not a record sort over rows
            key = np.unique(hi * self.size + lo)
            x, y = key % self.size, key // self.size
        else:
            pairs = np.unique(np.stack([lo, hi], axis=1), axis=0)
            x, y = pairs[:, 0], pairs[:, 1]
        first = np.unique(np.concatenate([x, y]))  # every root involved, for the blocked flags below
        flags = self._blocked[first].copy()
        while len(x):
            lo, hi = np.minimum(x, y), np.maximum(x, y)
            np.minimum.at(self.parent, hi, lo)  # hook each higher root under a lower one; parents only decrease
            x, y = self.find(x), self.find(y)
            keep = x != y
            x, y = x[keep], y[keep]
        np.logical_or.at(self._blocked, self.find(first), flags)

    def block(self, ids: torch.Tensor | np.ndarray) -> None:
        """Mark the groups holding ``ids`` as never prunable."""
        arr = ids.reshape(-1) if isinstance(ids, torch.Tensor) else np.asarray(ids).reshape(-1)
        self._blocked[self.find(arr)] = True

    def is_blocked(self, ids: torch.Tensor | np.ndarray) -> np.ndarray:
        """Whether each id's group is blocked (same shape as ``ids``)."""
        return self._blocked[self.find(ids)]
