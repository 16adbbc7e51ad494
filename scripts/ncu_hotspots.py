"""Where a kernel's warps stall, from an Nsight Compute report that holds the SourceCounters
section (per-instruction warp-state samples):

    ncu -i report.ncu-rep --kernel-name regex:backward --page source --print-source sass --csv \
        | python3 scripts/ncu_hotspots.py --top 30

Reads the SASS page's CSV on stdin: a "Kernel Name" row, then a header, then one row per
instruction with its sampled stall counts. (The `--print-source cuda` page of ncu 2025 lists
the lines without any metric, so the SASS page is the one to read.) Prints the stall reasons
kernel-wide, then the code regions with the most samples and those with the most warp
instructions executed (each with its share of both), then the instructions. A region
runs from one synchronizing or asynchronous instruction (barrier, MMA, atomic, bulk copy) to
the next, so an inlined loop body shows as one row per copy and a barrier wait lands on the
instruction after it.
"""

from __future__ import annotations

import argparse
import csv
import sys

# Instructions that end a region: waits, MMAs, atomics and asynchronous copies.
_REGION_MARKS = (
    "HGMMA",
    "BAR.",
    "SYNCS",
    "WARPGROUP.DEPBAR",
    "ATOMS",
    "ATOMG",
    "REDG",
    "UBLKCP",
    "UBLKRED",
    "UTMA",
    "EXIT",
)


def _number(text: str) -> float:
    try:
        return float(text.replace(",", ""))
    except ValueError:
        return 0.0


def read_instructions(lines: list[str]) -> tuple[list[dict[str, str]], str]:
    """The instruction rows and the name of their all-samples column."""
    rows = list(csv.reader(line for line in lines if line.startswith('"')))
    for at, row in enumerate(rows):
        sampled = [name for name in row if name.startswith("Warp Stall Sampling (All")]
        if "Source" in row and sampled:
            body = [r for r in rows[at + 1 :] if len(r) == len(row)]
            return [dict(zip(row, r, strict=True)) for r in body], sampled[0]
    raise SystemExit(
        "no SASS header with a 'Warp Stall Sampling (All Samples)' column: was SourceCounters "
        "collected, the kernel name matched, and the page `--print-source sass`?"
    )


def regions(rows: list[dict[str, str]], total_column: str) -> list[tuple[int, int, float, float]]:
    """(first row, end row, samples, warp instructions executed) of each stretch ending at a
    synchronizing instruction."""
    out = []
    start = 0
    for at, row in enumerate(rows):
        if any(mark in row["Source"] for mark in _REGION_MARKS) or at == len(rows) - 1:
            end = at + 1
            body = rows[start:end]
            out.append(
                (
                    start,
                    end,
                    sum(_number(r[total_column]) for r in body),
                    sum(_number(r.get("Instructions Executed", "0")) for r in body),
                )
            )
            start = end
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--top", type=int, default=30)
    args = parser.parse_args()
    rows, total_column = read_instructions(sys.stdin.readlines())
    if not rows:
        raise SystemExit("no instruction rows")
    total = sum(_number(r[total_column]) for r in rows) or 1.0
    executed = sum(_number(r.get("Instructions Executed", "0")) for r in rows)
    reasons = [n for n in rows[0] if n.startswith("stall_") and "Not Issued" not in n]
    by_reason = sorted(
        ((n, sum(_number(r[n]) for r in rows)) for n in reasons), key=lambda x: -x[1]
    )
    print(
        f"{len(rows)} instructions, {executed:.4g} warp instructions executed, {total:.0f} samples"
    )
    print(
        "stall reasons: "
        + ", ".join(f"{n[6:]} {100 * v / total:.1f}%" for n, v in by_reason if v >= total / 1000)
    )

    # Samples say where the warps wait; executed instructions where the issue slots go (a
    # kernel that runs more instructions than another is slower there even without stalls).
    stretches = regions(rows, total_column)
    for title, key in (("samples", 2), ("warp instructions executed", 3)):
        print(f"\nregions with the most {title} (top {args.top}):")
        for start, end, samples, count in sorted(stretches, key=lambda x: -x[key])[: args.top]:
            first = rows[start]["Source"].strip()[:60]
            last = rows[end - 1]["Source"].strip()[:60]
            print(
                f"{100 * samples / total:5.1f}%  rows {start:>5}-{end - 1:<5}  {first}  ..  {last}"
                f"  [executed {100 * count / (executed or 1.0):.1f}%]"
            )

    print(f"\ninstructions with the most samples (top {args.top}):")
    ranked = sorted(range(len(rows)), key=lambda at: -_number(rows[at][total_column]))
    for at in ranked[: args.top]:
        row = rows[at]
        samples = _number(row[total_column])
        top = sorted(((n, _number(row[n])) for n in reasons), key=lambda x: -x[1])[:2]
        why = ", ".join(f"{n[6:]}={v:.0f}" for n, v in top if v)
        print(f"{100 * samples / total:5.1f}%  row {at:>5}  {row['Source'].strip()[:70]}  [{why}]")


if __name__ == "__main__":
    main()
