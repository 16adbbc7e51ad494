"""Dataset readers: interaction files in the common formats, format detection, named datasets.

Formats (DESIGN §10):
  movielens-dat   user::item::rating::timestamp         (MovieLens-1M/10M ratings.dat)
  movielens-csv   CSV with header userId,movieId,...,timestamp   (MovieLens-20M/25M ratings.csv)
  ml100k          user<TAB>item<TAB>rating<TAB>timestamp      (MovieLens-100K u.data)
  user-sequence   user item1 item2 ...   one user per line, items in time order (S3-Rec files)
  user-item       user item   per line, each user's lines in time order (SASRec files)
  table           Parquet, or CSV with a header, with user/item/(timestamp) columns
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import numpy as np

from freescale.data.csr import offsets_from_lengths
from freescale.data.numeric_text import NumericLines, parse_numeric_lines
from freescale.data.sequences import SequenceData, from_interactions
from freescale.data.synthetic import SyntheticConfig, make_synthetic
from freescale.data.table import read_table

# name -> (file under the data root, format)
REGISTERED_DATASETS = {
    "ml-1m": ("ml-1m/ml-1m_seq.txt", "user-item"),
    "ml-100k": ("ml-100k/u.data", "ml100k"),
    "amazon-beauty": ("amazon-beauty/Beauty.txt", "user-sequence"),
    "amazon-sports": ("amazon-sports/Sports_and_Outdoors.txt", "user-sequence"),
    "amazon-toys": ("amazon-toys/Toys_and_Games.txt", "user-sequence"),
    "yelp": ("yelp/Yelp.txt", "user-sequence"),
    "lastfm": ("lastfm/LastFM.txt", "user-sequence"),
}
DATA_DIR_ENV = "FREESCALE_DATA_DIR"
_SNIFF_BYTES = 1 << 16


def load_dataset(spec: str) -> SequenceData:
    """Load `spec`: a registered name (see REGISTERED_DATASETS), "synthetic" or
    "synthetic:key=value,..." (SyntheticConfig fields), "PATH" or "PATH:FORMAT"."""
    if spec == "synthetic" or spec.startswith("synthetic:"):
        data = make_synthetic(SyntheticConfig.parse(spec.partition(":")[2]))
        data.name = spec
        return data
    if spec in REGISTERED_DATASETS:
        relative_path, fmt = REGISTERED_DATASETS[spec]
        data = read_interactions(data_root() / relative_path, fmt)
        data.name = spec
        return data
    head, _, tail = spec.rpartition(":")
    path, fmt = (Path(head), tail) if tail in FORMATS else (Path(spec), "auto")
    if not path.exists():
        raise FileNotFoundError(
            f"dataset {spec!r} is neither an existing file nor a registered name "
            f"({', '.join(REGISTERED_DATASETS)}, synthetic[:key=value,...])"
        )
    return read_interactions(path, fmt)


def data_root() -> Path:
    """The folder holding the registered datasets: $FREESCALE_DATA_DIR, else shared/data in or
    next to the repository."""
    if configured := os.environ.get(DATA_DIR_ENV):
        if not Path(configured).is_dir():
            raise FileNotFoundError(f"{DATA_DIR_ENV}={configured} is not a directory")
        return Path(configured)
    repo_root = Path(__file__).resolve().parents[3]  # python/freescale/data/readers.py
    for candidate in (repo_root / "shared" / "data", repo_root.parent / "shared" / "data"):
        if candidate.is_dir():
            return candidate
    raise FileNotFoundError(
        f"no data directory found: set {DATA_DIR_ENV} to the folder holding ml-1m/, "
        "amazon-beauty/, ..., or pass a file path (PATH or PATH:FORMAT) instead of a name"
    )


def read_interactions(path: str | Path, fmt: str = "auto") -> SequenceData:
    """Read an interaction file in format `fmt` ("auto": detect_format) into sequences."""
    path = Path(path)
    if fmt == "auto":
        fmt = detect_format(path)
    if fmt not in _READERS:
        raise ValueError(f"unknown format {fmt!r}; known formats: {', '.join(FORMATS)}")
    return _READERS[fmt](path)


def detect_format(path: str | Path) -> str:
    """Guess the format from the file name and its first lines."""
    path = Path(path)
    if path.suffix == ".parquet":
        return "table"
    with path.open("rb") as file:
        head = file.read(_SNIFF_BYTES)
    lines = head.decode(errors="replace").splitlines()
    if len(head) == _SNIFF_BYTES and len(lines) > 1:
        lines.pop()  # probably cut in the middle
    lines = [line for line in lines if line.strip()]
    if not lines:
        raise ValueError(f"{path}: empty file")
    first = lines[0]
    if "::" in first:
        return "movielens-dat"
    if "," in first:
        return "movielens-csv" if "userId" in _csv_fields(first) else "table"
    if "\t" in first and len(first.split()) == 4:
        return "ml100k"
    most_columns = max(len(line.split()) for line in lines)
    if most_columns == 2:
        return "user-item"
    if most_columns > 2:
        return "user-sequence"
    raise ValueError(
        f"{path}: cannot detect the format from its first line {first!r}; "
        f"pass it as PATH:FORMAT with FORMAT one of {', '.join(FORMATS)}"
    )


def _csv_fields(line: str) -> list[str]:
    return [field.strip().strip('"') for field in line.split(",")]


def _read_movielens_dat(path: Path) -> SequenceData:
    rows = _fixed_columns(path, ("user", "item", "rating", "timestamp"), delimiter=b"::")
    return from_interactions(rows[:, 0], rows[:, 1], timestamps=rows[:, 3], name=path.stem)


def _read_ml100k(path: Path) -> SequenceData:
    rows = _fixed_columns(path, ("user", "item", "rating", "timestamp"))
    return from_interactions(rows[:, 0], rows[:, 1], timestamps=rows[:, 3], name=path.stem)


def _read_user_item(path: Path) -> SequenceData:
    rows = _fixed_columns(path, ("user", "item"))
    return from_interactions(rows[:, 0], rows[:, 1], name=path.stem)


def _read_movielens_csv(path: Path) -> SequenceData:
    text = path.read_bytes()
    if not text.strip():
        raise ValueError(f"{path}: empty file")
    header_end = text.find(b"\n") + 1 or len(text)
    header = _csv_fields(text[:header_end].decode(errors="replace"))
    needed = ("userId", "movieId", "timestamp")
    if missing := [name for name in needed if name not in header]:
        raise ValueError(f"{path}:1: header {header} lacks {missing}")
    # Parsed as float64 because ratings can be decimals (3.5); ids and times are checked integral.
    lines = parse_numeric_lines(
        path, text[header_end:], delimiter=b",", dtype=np.float64, first_line=2
    )
    rows = _check_column_count(path, lines, len(header), ",".join(header))
    columns = {}
    for name in needed:
        column = rows[:, header.index(name)]
        if (fractional := np.flatnonzero(column != np.floor(column))).size:
            line_no, value = lines.line_numbers[fractional[0]], column[fractional[0]]
            raise ValueError(f"{path}:{line_no}: {name} {value} is not an integer")
        columns[name] = column.astype(np.int64)
    return from_interactions(
        columns["userId"], columns["movieId"], timestamps=columns["timestamp"], name=path.stem
    )


def _read_user_sequence(path: Path) -> SequenceData:
    lines = parse_numeric_lines(path, path.read_bytes())
    _check_not_empty(path, lines)
    too_short = np.flatnonzero(lines.counts < 2)
    if too_short.size:
        raise ValueError(
            f"{path}:{lines.line_numbers[too_short[0]]}: expected a user id followed by at "
            "least one item"
        )
    line_starts = offsets_from_lengths(lines.counts)[:-1]
    is_item = np.ones(len(lines.values), dtype=bool)
    is_item[line_starts] = False
    users = np.repeat(lines.values[line_starts], lines.counts - 1)
    return from_interactions(users, lines.values[is_item], name=path.stem)


def _fixed_columns(
    path: Path, columns: tuple[str, ...], delimiter: bytes | None = None
) -> np.ndarray:
    """[rows, columns] int64 table of a file whose every line has these integer columns,
    separated by `delimiter` (default: whitespace)."""
    lines = parse_numeric_lines(path, path.read_bytes(), delimiter=delimiter)
    layout = (delimiter or b" ").decode().join(columns)
    return _check_column_count(path, lines, len(columns), layout)


def _check_column_count(
    path: Path, lines: NumericLines, num_columns: int, layout: str
) -> np.ndarray:
    _check_not_empty(path, lines)
    wrong = np.flatnonzero(lines.counts != num_columns)
    if wrong.size:
        first = wrong[0]
        raise ValueError(
            f"{path}:{lines.line_numbers[first]}: expected {num_columns} columns ({layout}), "
            f"found {lines.counts[first]}"
        )
    return lines.values.reshape(-1, num_columns)


def _check_not_empty(path: Path, lines: NumericLines) -> None:
    if len(lines.counts) == 0:
        raise ValueError(f"{path}: empty file (no data lines)")


_READERS: dict[str, Callable[[Path], SequenceData]] = {
    "movielens-dat": _read_movielens_dat,
    "movielens-csv": _read_movielens_csv,
    "ml100k": _read_ml100k,
    "user-sequence": _read_user_sequence,
    "user-item": _read_user_item,
    "table": read_table,
}
FORMATS = tuple(_READERS)
