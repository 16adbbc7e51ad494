"""Interaction tables with named columns (Parquet or CSV with a header): user, item, timestamp."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np

from freescale.data.sequences import SequenceData, from_interactions

# Column names tried, in order, when the caller does not name the column.
USER_COLUMNS = ("user_id", "user", "userId")
ITEM_COLUMNS = ("item_id", "item", "movieId", "itemId")
TIME_COLUMNS = ("timestamp", "ts", "time")


def read_table(
    path: str | Path,
    user_column: str | None = None,
    item_column: str | None = None,
    time_column: str | None = None,
) -> SequenceData:
    """Read a Parquet (by the .parquet suffix) or CSV interaction table.

    Users and items may be integers or strings. Without a timestamp column, each user's items
    keep file order. Parquet needs pyarrow.
    """
    path = Path(path)
    is_parquet = path.suffix == ".parquet"
    header = _parquet_header(path) if is_parquet else _csv_header(path)
    user = _pick_column(path, header, user_column, USER_COLUMNS, "user")
    item = _pick_column(path, header, item_column, ITEM_COLUMNS, "item")
    time = _pick_column(path, header, time_column, TIME_COLUMNS, "time", required=False)
    if is_parquet:
        users, items, timestamps = _read_parquet(path, user, item, time)
    else:
        users, items, timestamps = _read_csv(path, header, user, item, time)
    return from_interactions(users, items, timestamps=timestamps, name=path.stem)


def _pick_column(
    path: Path,
    header: list[str],
    requested: str | None,
    candidates: tuple[str, ...],
    role: str,
    required: bool = True,
) -> str | None:
    if requested is not None:
        if requested not in header:
            raise ValueError(f"{path}: no column {requested!r}; the columns are {header}")
        return requested
    found = next((c for c in candidates if c in header), None)
    if found is None and required:
        raise ValueError(
            f"{path}: no {role} column; looked for {list(candidates)} among {header} "
            f"(name it with {role}_column=...)"
        )
    return found


def _import_parquet(path: Path):
    try:
        import pyarrow.parquet as pq
    except ImportError as error:
        raise ImportError(f"reading {path} needs pyarrow: pip install pyarrow") from error
    return pq


def _parquet_header(path: Path) -> list[str]:
    return list(_import_parquet(path).read_schema(path).names)


def _read_parquet(
    path: Path, user: str, item: str, time: str | None
) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    names = [c for c in (user, item, time) if c is not None]
    table = _import_parquet(path).read_table(path, columns=names)
    columns = {}
    for name in names:
        column = table.column(name)
        if column.null_count:
            raise ValueError(f"{path}: column {name!r} has {column.null_count} missing values")
        columns[name] = column.to_numpy()
    timestamps = None
    if time is not None:
        timestamps = columns[time]
        if np.issubdtype(timestamps.dtype, np.datetime64):
            timestamps = timestamps.astype("datetime64[s]").astype(np.int64)  # unix seconds
    return columns[user], columns[item], timestamps


def _csv_header(path: Path) -> list[str]:
    with path.open(newline="", encoding="utf-8") as file:
        header = _first_row(csv.reader(file))
    if header is None:
        raise ValueError(f"{path}: empty file")
    return [name.strip() for name in header]


def _read_csv(
    path: Path, header: list[str], user: str, item: str, time: str | None
) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    wanted = [header.index(c) for c in (user, item, time) if c is not None]
    values: list[list[str]] = [[] for _ in wanted]
    line_numbers = []
    with path.open(newline="", encoding="utf-8") as file:
        reader = csv.reader(file)
        _first_row(reader)  # the header
        for row in reader:
            if not row:
                continue
            if len(row) != len(header):
                raise ValueError(
                    f"{path}:{reader.line_num}: expected {len(header)} fields, found {len(row)}"
                )
            for column, index in zip(values, wanted, strict=True):
                column.append(row[index].strip())
            line_numbers.append(reader.line_num)
    if not line_numbers:
        raise ValueError(f"{path}: no data rows after the header")
    timestamps = None
    if time is not None:
        timestamps = _integers(path, values[2], line_numbers, time)
    return _keys(values[0]), _keys(values[1]), timestamps


def _first_row(reader) -> list[str] | None:
    """The first non-blank row (csv.reader yields [] for a blank line)."""
    return next((row for row in reader if row), None)


def _keys(values: list[str]) -> np.ndarray:
    """Integer keys when every value is an integer (so 10 sorts after 9), else strings."""
    try:
        return np.array(values, dtype=np.int64)
    except ValueError:
        return np.array(values)


def _integers(path: Path, values: list[str], line_numbers: list[int], name: str) -> np.ndarray:
    try:
        return np.array(values, dtype=np.int64)
    except ValueError:
        for value, line_no in zip(values, line_numbers, strict=True):
            try:
                int(value)
            except ValueError:
                raise ValueError(f"{path}:{line_no}: {name} {value!r} is not an integer") from None
        raise
