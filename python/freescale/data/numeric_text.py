"""Fast parsing of text files made of numbers, with errors that name the file and line.

The fast path never loops over lines in Python: numpy's C parser reads every number at once,
and a vectorized pass over the bytes counts the numbers on each line. Only when the fast path
fails does a line loop run, to find the line to blame.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np

_INTEGER = re.compile(rb"[+-]?\d+")
_DECIMAL = re.compile(rb"[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?")


@dataclass
class NumericLines:
    """The numbers of the non-blank lines of a text, flat, with per-line counts."""

    values: np.ndarray  # every number, in file order (int64 or float64)
    counts: np.ndarray  # int64: how many numbers each non-blank line has
    line_numbers: np.ndarray  # int64: 1-based line number of each non-blank line in the file


def parse_numeric_lines(
    path: Path,
    text: bytes,
    *,
    delimiter: bytes | None = None,
    dtype: type = np.int64,
    first_line: int = 1,
) -> NumericLines:
    """Parse `text` (read from `path`, starting at line `first_line`) as numbers split by
    whitespace or `delimiter`. Raises ValueError("path:line: ...") on a token that is not a number
    of `dtype` (int64 accepts only integers; float64 accepts decimals too)."""
    if delimiter is not None:
        # Delimiters become spaces, so one whitespace tokenizer serves every format; an empty
        # field then shows up as a missing column, which the caller reports.
        text = text.replace(delimiter, b" ")
    counts_per_line = _count_tokens_per_line(text)
    nonblank = np.flatnonzero(counts_per_line)
    counts = counts_per_line[nonblank]
    if counts.size == 0:  # fromstring rejects a text of only whitespace
        return NumericLines(np.empty(0, dtype=dtype), counts, nonblank + first_line)
    try:
        values = np.fromstring(text, dtype=dtype, sep=" ")
    except ValueError:
        values = None
    # The values and the per-line counts come from two different scans; they must agree.
    if values is None or len(values) != counts.sum():
        _raise_first_bad_token(path, text, dtype, first_line)
        raise ValueError(f"{path}: could not parse the file as {np.dtype(dtype).name} numbers")
    return NumericLines(values=values, counts=counts, line_numbers=nonblank + first_line)


def _count_tokens_per_line(text: bytes) -> np.ndarray:
    """Number of whitespace-separated tokens on each line (the last line may lack a newline)."""
    chars = np.frombuffer(text, dtype=np.uint8)
    is_space = chars <= ord(" ")  # space, tabs, CR, LF: all the separators numbers can have
    token_starts = np.flatnonzero(~is_space & np.concatenate([[True], is_space[:-1]]))
    line_ends = np.append(np.flatnonzero(chars == ord("\n")), len(chars))
    tokens_before_end = np.searchsorted(token_starts, line_ends)
    return np.diff(tokens_before_end, prepend=0)


def _raise_first_bad_token(path: Path, text: bytes, dtype: type, first_line: int) -> None:
    pattern = _INTEGER if np.dtype(dtype).kind in "iu" else _DECIMAL
    kind = "an integer" if pattern is _INTEGER else "a number"
    for line_no, line in enumerate(text.split(b"\n"), start=first_line):
        for token in line.split():
            if not pattern.fullmatch(token):
                shown = token.decode(errors="replace")
                raise ValueError(f"{path}:{line_no}: {shown!r} is not {kind}")
