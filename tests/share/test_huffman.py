import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from slimkit.share import (
    canonical_codes,
    code_lengths,
    huffman_decode,
    huffman_encode,
    relative_decode,
    relative_encode,
)


def test_optimal_lengths_on_known_table():
    # the classic CLRS example: a:45 b:13 c:12 d:16 e:9 f:5 -> lengths 1,3,3,3,4,4 (224 bits per 100 symbols)
    freqs = {0: 45, 1: 13, 2: 12, 3: 16, 4: 9, 5: 5}
    lengths = code_lengths(freqs)
    assert lengths == {0: 1, 1: 3, 2: 3, 3: 3, 4: 4, 5: 4}
    assert sum(freqs[s] * n for s, n in lengths.items()) == 224
    codes = canonical_codes(lengths)
    assert codes[0] == (0b0, 1) and codes[1] == (0b100, 3) and codes[5] == (0b1111, 4)


def test_single_symbol_and_empty():
    assert code_lengths({7: 10}) == {7: 1}
    data, n = huffman_encode(np.array([7, 7, 7]), {7: 1})
    assert n == 3 and list(huffman_decode(data, n, {7: 1}, 3)) == [7, 7, 7]
    assert code_lengths({}) == {}


@settings(max_examples=30, deadline=None)
@given(st.lists(st.integers(0, 40), min_size=1, max_size=400))
def test_round_trip(symbols):
    arr = np.array(symbols)
    lengths = code_lengths(dict(zip(*np.unique(arr, return_counts=True))))
    data, n = huffman_encode(arr, lengths)
    assert np.array_equal(huffman_decode(data, n, lengths, len(arr)), arr)
    kraft = sum(2.0 ** -n for n in lengths.values())
    assert kraft == pytest.approx(1.0) or len(lengths) == 1


def test_relative_index_with_fillers():
    zero = 9
    flat = np.full(50, zero)
    flat[[3, 4, 30, 49]] = [1, 2, 3, 4]
    gaps, symbols = relative_encode(flat, zero, index_bits=3)
    # gaps 4, 1, 26 (= 3 fillers of 8 + 2), 19 (= 2 fillers + 3), stored minus one
    assert list(gaps) == [3, 0, 7, 7, 7, 1, 7, 7, 2]
    assert list(symbols) == [1, 2, zero, zero, zero, 3, zero, zero, 4]
    assert np.array_equal(relative_decode(gaps, symbols, 50, zero), flat)


@settings(max_examples=30, deadline=None)
@given(st.lists(st.integers(0, 5), min_size=1, max_size=300), st.integers(1, 6))
def test_relative_index_round_trip(values, bits):
    flat = np.array(values)
    gaps, symbols = relative_encode(flat, 0, bits)
    assert gaps.max(initial=0) < 2 ** bits
    assert np.array_equal(relative_decode(gaps, symbols, len(flat), 0), flat)
