"""The documentation's relative links resolve, and the sm_90a measurement log's index
(docs/hstu_sm90/README.md) names every measurement file: the log moved out of benchmarks.md, and
an entry added to one place and not the other would go unnoticed."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
LINK = re.compile(r"\]\(([^)\s]+)\)")


def _relative_links(path: Path) -> list[str]:
    links = [m.split("#")[0] for m in LINK.findall(path.read_text())]
    return [m for m in links if m and not re.match(r"[a-z]+:", m)]


def test_relative_links_resolve():
    pages = [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]
    broken = [
        f"{page.relative_to(ROOT)} -> {link}"
        for page in pages
        for link in _relative_links(page)
        if not (page.parent / link).exists()
    ]
    assert len(pages) > 30 and not broken


def test_the_measurement_log_names_every_measurement():
    log = ROOT / "docs" / "hstu_sm90"
    measurements = sorted(p.name for p in log.glob("[0-9][0-9].md"))
    indexed = set(_relative_links(log / "README.md"))
    assert len(measurements) >= 37
    assert [m for m in measurements if m not in indexed] == []
