"""Relative sparse indices (Han et al. 2016, Sec. 2, Fig. 2).

A sparse weight is stored as its non-zero entries in order, each with the *gap* to the previous entry in
``index_bits`` bits instead of an absolute position. A gap larger than ``2**index_bits`` cannot be represented, so a
filler entry (a stored zero) is inserted every ``2**index_bits`` positions until the remaining gap fits. Gaps are
stored minus one (a gap of 1, adjacent entries, is stored as 0), so ``index_bits`` bits reach gaps up to
``2**index_bits``.
"""

from __future__ import annotations

import numpy as np

from slimkit._errors import ConfigError, DataError


def relative_encode(symbols: np.ndarray, zero_symbol: int, index_bits: int) -> tuple[np.ndarray, np.ndarray]:
    """Encode a flat array of cluster indices (``zero_symbol`` = pruned) as ``(stored_gaps, entry_symbols)``.

    ``stored_gaps[i]`` is ``gap − 1`` in ``[0, 2**index_bits)``; filler entries carry ``zero_symbol``.
    """
    if not 1 <= index_bits <= 16:
        raise ConfigError(f"relative index width {index_bits} is out of range: use 1..16 bits")
    flat = np.asarray(symbols).ravel()
    positions = np.flatnonzero(flat != zero_symbol)
    if positions.size == 0:
        return np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.int64)
    span = 2 ** index_bits
    gaps = np.diff(positions, prepend=-1)
    fillers = (gaps - 1) // span  # filler entries needed before each real entry
    entries = fillers + 1
    total = int(entries.sum())
    stored = np.full(total, span - 1, dtype=np.int64)  # fillers each advance by a full span
    entry_symbols = np.full(total, zero_symbol, dtype=np.int64)
    last = np.cumsum(entries) - 1  # where each real entry lands
    stored[last] = gaps - fillers * span - 1
    entry_symbols[last] = flat[positions]
    return stored, entry_symbols


def relative_decode(stored_gaps: np.ndarray, entry_symbols: np.ndarray, length: int, zero_symbol: int) -> np.ndarray:
    """Rebuild the flat array of ``length`` cluster indices from :func:`relative_encode`'s output."""
    out = np.full(length, zero_symbol, dtype=np.int64)
    if len(stored_gaps) == 0:
        return out
    positions = np.cumsum(np.asarray(stored_gaps, dtype=np.int64) + 1) - 1
    if positions[-1] >= length:
        raise DataError(f"relative indices point past the end of the weight ({positions[-1]} ≥ {length}): "
                        "the compressed file is corrupt")
    out[positions] = entry_symbols
    return out
