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
