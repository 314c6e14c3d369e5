"""Rank selection rules: explicit rank, energy threshold, target compression ratio, VBMF.

Each rule registers in ``RANK_RULES`` as ``rule(method, module, value) -> ranks`` (one rank per factorised mode of
the method; see :mod:`slimkit.decompose._methods`). Ranks are clamped to [1, full rank].
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
from torch import nn

from slimkit._registry import Registry
from slimkit.decompose._methods import Decomposition, limit_blas
from slimkit.decompose._vbmf import evbmf

RankRule = Callable[[Decomposition, nn.Module, Any], tuple[int, ...]]

RANK_RULES: Registry[RankRule] = Registry("rank rule")


def _clamp(ranks: tuple[int, ...], full: tuple[int, ...], clamp_to_full: bool = True) -> tuple[int, ...]:
    if not clamp_to_full:
        return tuple(max(1, int(r)) for r in ranks)
    return tuple(max(1, min(int(r), f)) for r, f in zip(ranks, full))


def _combine(method: Decomposition, ranks: tuple[int, ...]) -> tuple[int, ...]:
    combine = getattr(method, "combine", None)
    return combine(ranks) if combine else ranks


@limit_blas
def energy_rank(matrix: np.ndarray, energy: float) -> int:
    """The smallest K whose top-K singular values hold ``energy`` of Σσ² (the squared Frobenius norm)."""
    s2 = np.linalg.svd(matrix, compute_uv=False) ** 2
    total = s2.sum()
    if total <= 0:
        return 1
    cumulative = np.cumsum(s2) / total
    return int(np.searchsorted(cumulative, energy - 1e-12) + 1)


@RANK_RULES.register("rank")
def explicit_rank(method: Decomposition, module: nn.Module, value: int | tuple[int, ...]) -> tuple[int, ...]:
    """An explicit rank: one int for every mode (clamped per mode), or one int per mode (Tucker-2: (R_out, R_in)).

    CP ranks are not clamped: a CP rank above the channel counts is meaningful (Lebedev et al. 2015).
    """
    full = method.full_ranks(module)
    ranks = (value,) * len(full) if isinstance(value, int) else tuple(value)
    if len(ranks) != len(full):
        from slimkit._errors import ConfigError

        raise ConfigError(f"rank {value!r} has {len(ranks)} entries but this decomposition takes {len(full)} "
                          f"(Tucker-2: (R_out, R_in); SVD and CP: one int)")
    return _clamp(ranks, full, clamp_to_full=not hasattr(method, "combine"))


@RANK_RULES.register("energy")
def energy_rule(method: Decomposition, module: nn.Module, value: float) -> tuple[int, ...]:
    """Per mode, the fewest singular values of the unfolding holding ``value`` of its energy."""
    ranks = tuple(energy_rank(m, value) for m in method.matrices(module))
    return _clamp(_combine(method, ranks), method.full_ranks(module))


@RANK_RULES.register("vbmf")
def vbmf_rule(method: Decomposition, module: nn.Module, value: object = True) -> tuple[int, ...]:
    """Per mode, the rank EVBMF keeps on the unfolding (Kim et al. 2016, §3.1; Nakajima et al. 2013)."""
    ranks = tuple(evbmf(m).rank for m in method.matrices(module))
    return _clamp(_combine(method, ranks), method.full_ranks(module))


@RANK_RULES.register("ratio")
def ratio_rule(method: Decomposition, module: nn.Module, value: float) -> tuple[int, ...]:
    """The largest ranks whose replacement has at most ``value`` × the layer's parameters (weights + bias).

    Multi-mode ranks keep the modes' proportions (R_out/O = R_in/I, as Kim et al.'s rank ratios); at least rank 1.
    """
    full = method.full_ranks(module)
    budget = value * sum(p.numel() for p in module.parameters(recurse=False))
    if hasattr(method, "combine"):
        # A CP rank is not bounded by the channel counts: grow it until the next one would exceed the budget.
        rank = 1
        while method.params(module, (rank + 1,)) <= budget:
            rank += 1
        return (rank,)
    best = tuple(1 for _ in full)
    top = max(full)
    for step in range(1, top + 1):
        ranks = tuple(max(1, round(f * step / top)) for f in full)
        if method.params(module, ranks) <= budget:
            best = ranks
        else:
            break
    return best
