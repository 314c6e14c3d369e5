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
