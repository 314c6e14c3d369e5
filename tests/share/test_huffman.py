import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from slimkit import DataError
from slimkit.share import (
    canonical_codes,
    code_lengths,
    huffman_decode,
    huffman_encode,
    relative_decode,
    relative_encode,
)
from slimkit.share._huffman import decode_lengths, encode_lengths, fixed_width, pack_fixed, unpack_fixed


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


@settings(max_examples=40, deadline=None)
@given(st.lists(st.integers(0, 300), min_size=0, max_size=300), st.integers(1, 40))
def test_code_length_table_round_trip(symbols, alphabet_extra):
    alphabet = max(symbols, default=0) + alphabet_extra
    arr = np.array(symbols, dtype=np.int64)
    lengths = code_lengths(dict(zip(*np.unique(arr, return_counts=True)))) if symbols else {}
    table = encode_lengths(lengths, alphabet)
    assert decode_lengths(table, alphabet) == lengths
    # never larger than format 1's one byte per alphabet symbol; a tiny alphabet (1-2 symbols) may tie
    assert len(table) <= alphabet and (alphabet < 3 or len(table) < alphabet)


def test_code_length_table_picks_the_smaller_layout():
    # few symbols of a 257-symbol alphabet: pairs; 1 flag + 5 width + 9 count + 2 × (9 + 0) bits = 33 bits -> 5 B:
    # 1 | 00000 | 000000010 | 000000011 | 011001000 (+ 7 pad bits)
    assert encode_lengths({3: 1, 200: 1}, 257) == bytes([0b10000000, 0b00000100, 0b00000011, 0b01100100, 0b0])
    # all 256 symbols at 8 bits: bitmap (257 presence bits + 256 × 3 bits for length − 1 = 7) beats pairs (256 × 12)
    full = {s: 8 for s in range(256)}
    table = encode_lengths(full, 257)
    assert len(table) == -(-(1 + 5 + 257 + 256 * 3) // 8) and table[0] >> 7 == 0
    assert decode_lengths(table, 257) == full
    with pytest.raises(DataError, match="outside the alphabet"):
        encode_lengths({9: 1}, 8)
    with pytest.raises(DataError, match="truncated"):
        decode_lengths(table[:10], 257)


@settings(max_examples=30, deadline=None)
@given(st.lists(st.integers(0, 1000), min_size=0, max_size=200))
def test_fixed_width_round_trip(values):
    arr = np.array(values, dtype=np.int64)
    width = fixed_width(arr)
    data = pack_fixed(arr, width)
    assert len(data) == -(-len(values) * width // 8)
    assert np.array_equal(unpack_fixed(data, width, len(values)), arr)
