"""Index arithmetic for CSR (offsets-encoded) jagged arrays, vectorized with numpy."""

from __future__ import annotations

import numpy as np


def offsets_from_lengths(lengths: np.ndarray, dtype: type = np.int64) -> np.ndarray:
    """[0, l0, l0 + l1, ...]: the CSR offsets of rows with these lengths."""
    offsets = np.zeros(len(lengths) + 1, dtype=dtype)
    np.cumsum(lengths, out=offsets[1:])
    return offsets


def concat_ranges(starts: np.ndarray, lengths: np.ndarray) -> np.ndarray:
    """Concatenation of arange(s, s + l) for each (s, l), as one int64 index array.

    Position k of the output, inside range r, is starts[r] + (k - out_start[r]); computing it
    as arange(total) plus a per-range shift avoids a Python loop over ranges.
    """
    lengths = np.asarray(lengths, dtype=np.int64)
    out_starts = offsets_from_lengths(lengths)[:-1]
    shift = np.asarray(starts, dtype=np.int64) - out_starts
    return np.arange(int(lengths.sum()), dtype=np.int64) + np.repeat(shift, lengths)


def as_row_indices(rows: np.ndarray, num_rows: int, what: str) -> np.ndarray:
    """`rows` as an int64 index array, checked to lie in [0, num_rows)."""
    rows = np.asarray(rows)
    if rows.ndim != 1 or (rows.size and rows.dtype.kind not in "iu"):
        raise TypeError(f"{what} must be a 1-D integer array, got {rows.dtype} {rows.shape}")
    rows = rows.astype(np.int64, copy=False)
    if rows.size and (rows.min() < 0 or rows.max() >= num_rows):
        raise IndexError(
            f"{what} out of range: values in [{rows.min()}, {rows.max()}], rows are [0, {num_rows})"
        )
    return rows
