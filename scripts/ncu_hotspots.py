"""The source lines where a kernel's warps stall most, from an Nsight Compute report that holds
the SourceCounters section (per-instruction warp-state samples; the build has -lineinfo):

    ncu -i report.ncu-rep --kernel-name regex:backward --page source --print-source cuda --csv \
        | python3 scripts/ncu_hotspots.py --top 40

Reads the CSV of the source page on stdin: one row per source line with its sampled stall
counts. Prints the lines with the most samples, their share of all samples, and the columns
that break the samples down by reason (the largest first), so a profile names the statements
that cost the time instead of a kernel-wide average.
"""

from __future__ import annotations

import argparse
import csv
import sys


def _number(text: str) -> float:
    try:
        return float(text.replace(",", ""))
    except ValueError:
        return 0.0


def _total_column(header: list[str]) -> str:
    """The column of all warp-state samples of a line (its name varies across ncu versions)."""
    for name in header:
        if name.startswith("Warp Stall Sampling (All"):
            return name
    for name in header:
        if "Sampling" in name:
            return name
    raise SystemExit(f"no sampling column in the source page's CSV: {header}")


def _source_column(header: list[str]) -> str:
    for name in ("Source", "Source Line", "# Source"):
        if name in header:
            return name
    return header[-1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--top", type=int, default=40)
    args = parser.parse_args()
    lines = [line for line in sys.stdin if line.startswith('"')]  # (ncu's log lines are not)
    rows = list(csv.DictReader(lines))
    if not rows:
        raise SystemExit("no rows: was SourceCounters collected, and the kernel name matched?")
    header = list(rows[0].keys())
    total_column = _total_column(header)
    source_column = _source_column(header)
    total = sum(_number(r[total_column]) for r in rows) or 1.0
    reason_columns = [
        name
        for name in header
        if name != total_column and ("stall" in name.lower() or "Sampling" in name)
    ]
    rows.sort(key=lambda r: _number(r[total_column]), reverse=True)
    print(f"{len(rows)} source lines, {total:.0f} samples; top {args.top}:")
    for row in rows[: args.top]:
        samples = _number(row[total_column])
        reasons = sorted(
            ((name, _number(row[name])) for name in reason_columns), key=lambda x: -x[1]
        )
        top_reasons = ", ".join(f"{name}={value:.0f}" for name, value in reasons[:3] if value)
        line = row.get("#", row.get("Line", ""))
        source = row[source_column].strip()[:110]
        print(f"{100 * samples / total:5.1f}%  {line:>5}  {source}  [{top_reasons}]")


if __name__ == "__main__":
    main()
