"""ThiNet: greedy selection equals the brute-force optimum of its objective at every step; least-squares
rescaling never increases the reconstruction error; end to end it reconstructs the next layer."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch

from slimkit import models
from slimkit.prune import PruneConfig, prune_channels, thinet_greedy, thinet_scales


def _objective(a: np.ndarray, subset) -> float:
    return float((a[:, list(subset)].sum(1) ** 2).sum())


@pytest.mark.parametrize("seed", range(5))
def test_greedy_step_is_the_brute_force_optimum(seed):
    rng = np.random.default_rng(seed)
    a = rng.normal(size=(40, 6)) * rng.uniform(0.1, 2, size=6)
    chosen = thinet_greedy(a, 3)
    # Replay Algorithm 1: each pick is the brute-force argmin of ‖Σ_{T∪{c}} x̂‖² over the channels left.
    picked: list[int] = []
    for _ in range(3):
        best = min((c for c in range(6) if c not in picked), key=lambda c: _objective(a, [*picked, c]))
        picked.append(best)
    assert sorted(picked) == chosen.tolist()
    # Removing one channel: greedy is the exact optimum over all subsets of size 1.
    brute = min(range(6), key=lambda c: _objective(a, [c]))
    assert thinet_greedy(a, 1).tolist() == [brute]


def test_greedy_on_a_tiny_layer_matches_exhaustive_search_when_contributions_cancel():
    # Channels 0 and 1 cancel exactly; every subset of size 2 other than {0, 1} costs more.
    rng = np.random.default_rng(0)
    base = rng.normal(size=(30, 1))
    a = np.concatenate([base, -base, rng.normal(size=(30, 3)) * 3], axis=1)
    best = min(itertools.combinations(range(5), 2), key=lambda s: _objective(a, s))
    assert best == (0, 1)
    assert thinet_greedy(a[:, [0, 1]], 1).tolist() in ([0], [1])
    assert _objective(a, thinet_greedy(a, 2)) <= _objective(a, (2, 3)) + 1e-9


@pytest.mark.parametrize("seed", range(10))
def test_least_squares_rescaling_never_increases_error(seed):
    rng = np.random.default_rng(seed)
    a = rng.normal(size=(60, 8)) @ rng.normal(size=(8, 8)) * 0.5
    removed = thinet_greedy(a, rng.integers(1, 7))
    keep = np.setdiff1d(np.arange(8), removed)
    y = a.sum(1)
    plain = ((y - a[:, keep].sum(1)) ** 2).sum()
    w = thinet_scales(a, removed)[keep]
    rescaled = ((y - a[:, keep] @ w) ** 2).sum()
    assert rescaled <= plain + 1e-9
    np.testing.assert_allclose(w, np.linalg.lstsq(a[:, keep], y, rcond=None)[0], rtol=1e-3, atol=1e-3)


def test_thinet_reconstructs_the_next_layer_better_than_l1():
    torch.manual_seed(0)
    model = models.create("lenet5").eval()
    gen = torch.Generator().manual_seed(1)
    data = [(torch.rand(64, 1, 28, 28, generator=gen), torch.zeros(64, dtype=torch.long)) for _ in range(2)]
    x = torch.cat([b[0] for b in data])
    config = {"ratio": {"conv2": 0.6}}
    errors = {}
    for criterion in ("l1", "thinet"):
        pruned = prune_channels(model, x[:1], PruneConfig(criterion=criterion, **config), data=data)
        feats = {}
        for name, m in (("orig", model), ("pruned", pruned)):
            m.get_submodule("fc1").register_forward_hook(
                lambda mod, a, out, name=name, feats=feats: feats.__setitem__(name, out))
            with torch.no_grad():
                m(x)
        errors[criterion] = float(((feats["orig"] - feats["pruned"]) ** 2).mean())
        model.get_submodule("fc1")._forward_hooks.clear()
    assert errors["thinet"] < errors["l1"]
