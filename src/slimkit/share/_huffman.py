"""Canonical Huffman coding (Han et al. 2016, Sec. 4: Huffman-code the cluster indices and the sparse gaps).

Only the code *lengths* need storing: canonical codes are assigned in order of (length, symbol), so the decoder
rebuilds the same code book from the lengths alone (as DEFLATE does).
"""

from __future__ import annotations

import heapq
import itertools
from collections.abc import Mapping

import numpy as np

from slimkit._errors import DataError


def code_lengths(frequencies: Mapping[int, int]) -> dict[int, int]:
    """Optimal prefix-code lengths ``{symbol: bits}`` for ``{symbol: count}`` (Huffman 1952), built with a heap.

    Symbols with count 0 get no code. A single symbol gets a 1-bit code (a code must have at least one bit).
    """
    symbols = sorted(s for s, f in frequencies.items() if f > 0)
    if not symbols:
        return {}
    if len(symbols) == 1:
        return {symbols[0]: 1}
    tie = itertools.count()  # breaks frequency ties deterministically, never compares the lists
    heap = [(int(frequencies[s]), next(tie), [s]) for s in symbols]
    heapq.heapify(heap)
    lengths = dict.fromkeys(symbols, 0)
    while len(heap) > 1:
        f1, _, group1 = heapq.heappop(heap)
        f2, _, group2 = heapq.heappop(heap)
        for s in group1 + group2:  # every merge adds one bit to the codes of the merged symbols
            lengths[s] += 1
        heapq.heappush(heap, (f1 + f2, next(tie), group1 + group2))
    return lengths


def canonical_codes(lengths: Mapping[int, int]) -> dict[int, tuple[int, int]]:
    """``{symbol: (code, length)}``: canonical codes, consecutive integers within a length, ordered by symbol."""
    codes: dict[int, tuple[int, int]] = {}
    code, previous = 0, 0
    for symbol, length in sorted(((s, n) for s, n in lengths.items() if n > 0), key=lambda item: (item[1], item[0])):
        code <<= length - previous
        codes[symbol] = (code, length)
        code += 1
        previous = length
    return codes


def huffman_encode(symbols: np.ndarray, lengths: Mapping[int, int]) -> tuple[bytes, int]:
    """Encode ``symbols`` with the canonical code of ``lengths``; returns ``(packed bytes, number of bits)``."""
    codes = canonical_codes(lengths)
    try:
        table = {s: format(c, f"0{n}b") for s, (c, n) in codes.items()}
        bits = "".join(table[int(s)] for s in np.asarray(symbols).ravel())
    except KeyError as error:
        raise DataError(f"symbol {error} has no Huffman code: build the lengths from these symbols' counts") from None
    if not bits:
        return b"", 0
    packed = np.packbits(np.frombuffer(bits.encode("ascii"), dtype=np.uint8) - ord("0"))
    return packed.tobytes(), len(bits)


def huffman_decode(data: bytes, n_bits: int, lengths: Mapping[int, int], count: int) -> np.ndarray:
    """Decode ``count`` symbols from the first ``n_bits`` bits of ``data`` (canonical code of ``lengths``)."""
    codes = canonical_codes(lengths)
    # canonical decoding: per length, the first code and where its symbols start in the sorted symbol list
    ordered = sorted(codes, key=lambda s: (codes[s][1], s))
    first: dict[int, int] = {}
    start: dict[int, int] = {}
    per_length: dict[int, int] = {}
    for position, symbol in enumerate(ordered):
        code, length = codes[symbol]
        if length not in first:
            first[length], start[length] = code, position
        per_length[length] = per_length.get(length, 0) + 1
    bits = np.unpackbits(np.frombuffer(data, dtype=np.uint8))[:n_bits].tolist()
    out = np.empty(count, dtype=np.int64)
    produced = code = length = 0
    for bit in bits:
        code = (code << 1) | bit
        length += 1
        if length in first and code - first[length] < per_length[length]:
            out[produced] = ordered[start[length] + code - first[length]]
            produced += 1
            code = length = 0
            if produced == count:
                break
    if produced != count or length != 0:
        raise DataError(f"Huffman stream is corrupt: decoded {produced} of {count} symbols from {n_bits} bits")
    return out


# --- compact storage of the code-length table and of fixed-width fallbacks (container format 2) ---------------------
#
# A table over the whole alphabet (one byte per symbol, format 1) costs 2×257 B for an 8-bit conv layer, more than
# LeNet-5 conv1's whole Huffman payload. Only the symbols that occur need a length, and two layouts suit the two
# regimes, so the encoder writes whichever is smaller (1 flag bit says which):
#
# * bitmap: one presence bit per alphabet symbol, then each present symbol's length. Costs
#   ``alphabet + n·w`` bits: best when many symbols occur (a well-used 256-cluster codebook: 33 B + lengths).
# * pairs:  the count n, then (symbol, length) per present symbol. Costs
#   ``⌈log2(alphabet+1)⌉ + n·(⌈log2 alphabet⌉ + w)`` bits: best when few symbols occur (the gap stream of a
#   dense layer uses a handful of its 256 gap values).
#
# Lengths are stored as ``length − 1`` in ``w`` bits, ``w`` the width of the largest (5-bit field, so codes up to
# 2**31 bits). DEFLATE's run-length + Huffman-coded lengths would save a few more bytes on big alphabets, but the
# tables left after this are tens of bytes per layer, under 1% of a LeNet file.

_WIDTH_FIELD = 5  # bits of the length-width field


def _to_bits(values: np.ndarray, width: int) -> np.ndarray:
    """MSB-first bits (uint8 0/1) of each value in ``width`` bits, concatenated."""
    if width == 0 or len(values) == 0:
        return np.zeros(0, dtype=np.uint8)
    shifts = np.arange(width - 1, -1, -1, dtype=np.int64)
    return ((np.asarray(values, dtype=np.int64)[:, None] >> shifts) & 1).astype(np.uint8).ravel()


def _from_bits(bits: np.ndarray, width: int, count: int) -> np.ndarray:
    if width == 0 or count == 0:
        return np.zeros(count, dtype=np.int64)
    weights = 1 << np.arange(width - 1, -1, -1, dtype=np.int64)
    return bits[:width * count].reshape(count, width).astype(np.int64) @ weights


def fixed_width(values: np.ndarray) -> int:
    """Bits per value to store ``values`` (non-negative ints) at one fixed width: the largest value's bit length."""
    values = np.asarray(values)
    return int(values.max()).bit_length() if values.size else 0


def pack_fixed(values: np.ndarray, width: int) -> bytes:
    """Pack non-negative ints MSB-first at ``width`` bits each (the raw fallback when Huffman does not pay)."""
    values = np.asarray(values, dtype=np.int64).ravel()
    if values.size and (values.min() < 0 or values.max() >= 1 << width):
        raise DataError(f"values in [{values.min()}, {values.max()}] do not fit in {width} bits")
    return np.packbits(_to_bits(values, width)).tobytes()


def unpack_fixed(data: bytes, width: int, count: int) -> np.ndarray:
    """Inverse of :func:`pack_fixed`."""
    bits = np.unpackbits(np.frombuffer(data, dtype=np.uint8))
    if bits.size < width * count:
        raise DataError(f"fixed-width stream is truncated: {bits.size} bits for {count} values of {width} bits")
    return _from_bits(bits, width, count)


def encode_lengths(lengths: Mapping[int, int], alphabet: int) -> bytes:
    """The code-length table ``{symbol: bits}`` of symbols in ``[0, alphabet)``, compactly (see the layouts above)."""
    present = sorted(s for s, n in lengths.items() if n > 0)
    if present and (present[0] < 0 or present[-1] >= alphabet):
        raise DataError(f"symbol {present[-1] if present[-1] >= alphabet else present[0]} is outside the alphabet "
                        f"[0, {alphabet})")
    minus_one = np.array([lengths[s] - 1 for s in present], dtype=np.int64)
    width = fixed_width(minus_one)
    if width >= 1 << _WIDTH_FIELD:
        raise DataError(f"a Huffman code of {int(minus_one.max()) + 1} bits is too long to store")
    symbol_bits, count_bits = (alphabet - 1).bit_length(), alphabet.bit_length()
    n = len(present)
    pairs = count_bits + n * (symbol_bits + width) < alphabet + n * width
    parts = [_to_bits(np.array([int(pairs)]), 1), _to_bits(np.array([width]), _WIDTH_FIELD)]
    if pairs:
        parts.append(_to_bits(np.array([n]), count_bits))
        parts.append(_to_bits((np.array(present, dtype=np.int64) << width) | minus_one, symbol_bits + width))
    else:
        bitmap = np.zeros(alphabet, dtype=np.uint8)
        bitmap[present] = 1
        parts += [bitmap, _to_bits(minus_one, width)]
    return np.packbits(np.concatenate(parts)).tobytes()


def decode_lengths(data: bytes, alphabet: int) -> dict[int, int]:
    """Inverse of :func:`encode_lengths`."""
    bits = np.unpackbits(np.frombuffer(data, dtype=np.uint8))
    symbol_bits, count_bits = (alphabet - 1).bit_length(), alphabet.bit_length()

    def take(position: int, width: int, count: int = 1) -> np.ndarray:
        if position + width * count > bits.size:
            raise DataError("Huffman code-length table is truncated: the compressed file is corrupt")
        return _from_bits(bits[position:], width, count)

    pairs, width = int(take(0, 1)[0]), int(take(1, _WIDTH_FIELD)[0])
    position = 1 + _WIDTH_FIELD
    if pairs:
        n = int(take(position, count_bits)[0])
        position += count_bits
        fields = take(position, symbol_bits + width, n)
        symbols, minus_one = fields >> width, fields & ((1 << width) - 1)
    else:
        if position + alphabet > bits.size:
            raise DataError("Huffman code-length table is truncated: the compressed file is corrupt")
        symbols = np.flatnonzero(bits[position:position + alphabet])
        minus_one = take(position + alphabet, width, len(symbols))
    if len(symbols) and int(symbols.max()) >= alphabet:
        raise DataError(f"Huffman code-length table names symbol {int(symbols.max())} outside [0, {alphabet})")
    return {int(s): int(m) + 1 for s, m in zip(symbols, minus_one)}
