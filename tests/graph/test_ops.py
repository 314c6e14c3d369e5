"""The reshape rules: which factor of a split channel dim becomes the pruning unit, and dim pairing."""

from __future__ import annotations

import numpy as np
import torch

from slimkit.graph import UnionFind, choose_unit_dim, dim_groups


def test_split_unit_choice():
    assert choose_unit_dim([2, 58]) == 1  # channel shuffle (groups, C/groups): prune C/groups
    assert choose_unit_dim([3, 4, 16]) == 1  # fused qkv (3, heads, head_dim): prune whole heads
    assert choose_unit_dim([3, 3, 16]) == 1  # ties go inwards, still heads
    assert choose_unit_dim([8, 2]) == 0


def test_dim_groups_pair_split_and_merged_dims():
    assert dim_groups((1, 64, 7, 7), (1, 64, 49)) == [([0], [0]), ([1], [1]), ([2, 3], [2])]
    assert dim_groups((2, 50, 192), (2, 50, 3, 4, 16)) == [([0], [0]), ([1], [1]), ([2], [2, 3, 4])]


def test_union_find_merges_and_blocks_whole_groups():
    uf = UnionFind()
    a, b = uf.fresh(4), uf.fresh(4)
    uf.union(a, b)
    uf.block(torch.tensor([int(a[1])]))
    assert np.array_equal(uf.find(a), uf.find(b))
    assert uf.is_blocked(b).tolist() == [False, True, False, False]


def test_union_find_after_flatten_answers_in_one_lookup_and_still_merges():
    rng = np.random.default_rng(0)
    uf = UnionFind()
    ids = uf.fresh(200)
    for _ in range(60):  # chains of unions leave ids several hops from their roots
        i, j = rng.integers(0, 200, size=(2, 5))
        uf.union(ids[i], ids[j])
    before = uf.find(ids).copy()
    uf.flatten()
    assert np.array_equal(uf.parent[:200], before)  # every id points straight at its root
    assert np.array_equal(uf.find(ids), before)
    late = uf.fresh(3)
    uf.union(late[:1], ids[:1])  # a union after flattening is still followed
    assert uf.find(late[:1]).tolist() == uf.find(ids[:1]).tolist() == [min(before[0], int(late[0]))]
    assert uf.find(late[1:]).tolist() == late[1:].tolist()
    roots = np.unique(before)
    a, b = roots[0], roots[-1]  # two groups merged after flattening: every member of both finds one root
    uf.union(torch.tensor([a]), torch.tensor([b]))
    members = np.flatnonzero((before == a) | (before == b))
    assert set(uf.find(ids[members]).tolist()) == {min(a, b)}


def test_unique_ids_matches_numpy_unique_on_ids_of_every_shape():
    from slimkit.graph._unionfind import unique_ids

    rng = np.random.default_rng(0)
    for size in (0, 1, 2, 7, 1000):
        ids = rng.integers(0, max(size // 3, 1), size=size)
        assert np.array_equal(unique_ids(ids), np.unique(ids))
        assert unique_ids(ids).dtype == np.int64
    as_tensor = torch.tensor([[5, 3], [3, 9]])
    assert unique_ids(as_tensor).tolist() == [3, 5, 9]
