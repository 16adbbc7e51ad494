"""scripts/ncu_hotspots.py on a SASS-page CSV shaped like Nsight Compute's (a kernel-name row, a
header, one row per instruction): the totals, the regions between synchronizing instructions
and the instruction ranking it prints, and the clear error on a page without samples."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "ncu_hotspots.py"
HEADER = [
    "Address",
    "Source",
    "Warp Stall Sampling (All Samples)",
    "Warp Stall Sampling (Not-issued Samples)",
    "Instructions Executed",
    "stall_barrier",
    "stall_short_sb",
    "stall_wait",
    "stall_barrier (Not Issued)",
]
# (source, samples, executed, barrier, short scoreboard): a loop body ending in a shared atomic,
# a barrier and the instruction that waits on it, an MMA, and the exit.
INSTRUCTIONS = [
    ("IMAD R1, R2, R3, RZ", 10, 100, 0, 0),
    ("ATOMS.CAST.SPIN R4, [R5], R6, R7", 30, 300, 0, 25),
    ("BAR.SYNC.DEFER_BLOCKING 0x3, 0x100", 5, 100, 0, 0),
    ("@!P3 BRA 0x7f00", 40, 100, 38, 0),
    ("HGMMA.64x128x16.F32.BF16 R8, R9, gdesc[UR4], R8", 10, 50, 0, 0),
    ("EXIT", 5, 10, 0, 0),
]


def _csv() -> str:
    def row(cells) -> str:
        return ",".join(f'"{c}"' for c in cells)

    lines = ['"Kernel Name","void kernel<(int)128>(int)",', row(HEADER)]
    for at, (source, samples, executed, barrier, short_sb) in enumerate(INSTRUCTIONS):
        lines.append(
            row(
                [hex(0x1000 + 16 * at), source, samples, samples, executed, barrier, short_sb, 0, 0]
            )
        )
    return "\n".join(lines) + "\n"


def _run(stdin: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, str(SCRIPT), "--top", "3"],
        input=stdin,
        capture_output=True,
        text=True,
        check=False,
    )


def test_ranks_regions_and_instructions_by_samples():
    result = _run(_csv())
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0] == "6 instructions, 660 warp instructions executed, 100 samples"
    # Every reason with samples, largest first; none without (wait) nor the not-issued columns.
    assert lines[1] == "stall reasons: barrier 38.0%, short_sb 25.0%"
    regions = lines[lines.index("regions with the most samples (top 3):") + 1 :][:3]
    # The barrier's region is the wait after it up to the MMA (40 + 10); then the loop body
    # up to its atomic (10 + 30); then the barrier alone.
    assert regions[0].startswith(" 50.0%  rows     3-4 ")
    assert regions[1].startswith(" 40.0%  rows     0-1 ")
    assert regions[2].startswith("  5.0%  rows     2-2 ")
    # Each region's share of the executed instructions (660): 150, 400, 100.
    assert regions[0].endswith("[executed 22.7%]") and regions[1].endswith("[executed 60.6%]")
    by_count = lines[lines.index("regions with the most warp instructions executed (top 3):") + 1 :]
    assert by_count[0].startswith(" 40.0%  rows     0-1 ") and by_count[0].endswith("60.6%]")
    assert by_count[1].startswith(" 50.0%  rows     3-4 ")
    assert by_count[2].startswith("  5.0%  rows     2-2 ")
    ranked = lines[lines.index("instructions with the most samples (top 3):") + 1 :]
    assert ranked[0].startswith(" 40.0%  row     3  @!P3 BRA 0x7f00  [barrier=38]")
    assert "ATOMS.CAST.SPIN" in ranked[1] and "short_sb=25" in ranked[1]


@pytest.mark.parametrize(
    "page",
    ['"File Name","/src/kernel.cuh"\n"Line No","Source"\n"1","int x;"\n', ""],
    ids=["cuda_page_without_metrics", "empty"],
)
def test_page_without_samples_fails_with_the_reason(page):
    result = _run(page)
    assert result.returncode != 0
    assert "Warp Stall Sampling (All Samples)" in result.stderr
    assert "--print-source sass" in result.stderr
