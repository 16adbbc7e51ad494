"""scripts/ab_bench.sh end to end on the CPU, with a stub GPU check and benchmark.

The stubs stand in for the GPU: the "build" writes an extension module that names the kernel
source it was built from, and the "benchmark" times each build by that name. So the test sees
that every spec's patch is applied for its build and reverted after, that each timing pass runs
its own build, that the summary's speedups and stage verdicts are right, and that the call's
folders end up in one archive beside the summary (the device tool returns at most eight files)
while anything else under $OUT stays.
"""

import json
import os
import shutil
import subprocess
import sys
import tarfile
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]

GPU_CHECK_STUB = """#!/usr/bin/env bash
# Stub of scripts/gpu_check.sh: "build" writes the extension from kernel.txt.
cd "$(dirname "$0")/.."
mkdir -p "$OUT"
for stage in "$@"; do
  case $stage in
    build) printf 'KERNEL = %s\\n' "'$(cat kernel.txt)'" >freescale_ext/_C.py ;;
    sm90) echo "===== 3 passed in 1.00s =====" | tee "$OUT/sm90_test.log" ;;
    sm90_sanitize) echo "========= ERROR SUMMARY: 0 errors" | tee "$OUT/sm90_memcheck.log" ;;
    stubborn) trap '' TERM; sleep 60 ;;  # (ignores the deadline's TERM: killed after it)
    broken) echo "=== broken: rc=1 in 0 s"; exit 1 ;;
  esac
  echo "=== $stage: rc=0 in 0 s"
done
"""

BENCH_STUB = """import argparse, importlib, json
import freescale_ext._C as ext
parser = argparse.ArgumentParser()
parser.add_argument("--impls", nargs="+")
parser.add_argument("--shapes", nargs="+")
parser.add_argument("--out")
args = parser.parse_args()
if ext.KERNEL == "lazy":  # (a benchmark that runs past any deadline)
    import time
    time.sleep(60)
bwd_ms = {"base": 2.0, "fast": 1.0, "slow": 4.0}[ext.KERNEL]
rows = [{"shape": s, "impl": i, "fwd_ms": 1.0, "bwd_ms": bwd_ms, "fwd_tflops": 100.0}
        for s in args.shapes for i in args.impls]
json.dump({"device": "stub GPU", "rows": rows}, open(args.out, "w"))
print("benchmarked", ext.KERNEL)
"""


def kernel_patch(tree: Path, name: str, new: str) -> None:
    """Writes .peers/patches/NAME.patch: kernel.txt from "base" to `new`."""
    (tree / "kernel.txt").write_text(new + "\n")
    diff = subprocess.run(
        ["git", "diff"], cwd=tree, check=True, capture_output=True, text=True
    ).stdout
    (tree / ".peers" / "patches" / f"{name}.patch").write_text(diff)
    subprocess.run(["git", "checkout", "--", "kernel.txt"], cwd=tree, check=True)


@pytest.fixture
def stub_tree(tmp_path):
    if shutil.which("git") is None:
        pytest.skip("git is needed")
    tree = tmp_path / "repo"
    (tree / "scripts").mkdir(parents=True)
    (tree / "benchmarks").mkdir()
    (tree / "freescale_ext").mkdir()
    (tree / ".peers" / "patches").mkdir(parents=True)
    shutil.copy(REPO / "scripts" / "ab_bench.sh", tree / "scripts")
    (tree / "scripts" / "gpu_check.sh").write_text(GPU_CHECK_STUB)
    (tree / "scripts" / "gpu_check.sh").chmod(0o755)
    (tree / "benchmarks" / "bench_hstu_attention.py").write_text(BENCH_STUB)
    (tree / "freescale_ext" / "__init__.py").write_text("")
    (tree / "torch.py").write_text("")  # (the script imports torch before the extension)
    (tree / "kernel.txt").write_text("base\n")
    (tree / ".gitignore").write_text(".peers/\nfreescale_ext/_C.py\nout/\n__pycache__/\n")
    git = ["git", "-c", "user.name=t", "-c", "user.email=t@t"]
    subprocess.run(["git", "init", "-q"], cwd=tree, check=True)
    subprocess.run(["git", "add", "-A"], cwd=tree, check=True)
    subprocess.run([*git, "commit", "-qm", "stub"], cwd=tree, check=True)
    kernel_patch(tree, "fast", "fast")
    kernel_patch(tree, "slow", "slow")
    kernel_patch(tree, "other", "other")
    kernel_patch(tree, "lazy", "lazy")
    (tree / ".peers" / "patches" / "stale.patch").write_text(
        "--- a/kernel.txt\n+++ b/kernel.txt\n@@ -1 +1 @@\n-gone\n+stale\n"
    )
    return tree


def run_ab_bench(tree: Path, out: Path, shapes: str, specs: list[str], **env_extra: str):
    """scripts/ab_bench.sh in the stub tree, results under `out`."""
    env = dict(os.environ, OUT=str(out), PYTHONPATH=str(tree), **env_extra)
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env['PATH']}"
    return subprocess.run(
        ["bash", "scripts/ab_bench.sh", "impl_a", shapes, *specs],
        cwd=tree,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,  # (the deadline test's stub sleeps are 60 s)
    )


def test_ab_bench_times_each_build_and_packs_its_folders(stub_tree):
    out = stub_tree / "result"
    (out / "earlier").mkdir(parents=True)  # another run's results: left as they are
    (out / "earlier" / "keep.txt").write_text("kept")
    specs = [
        "fast@build,sm90,sm90_sanitize",
        "slow",
        "stale",
        "fast+slow",
        "other@build,broken",
        "other",  # given twice (its first build failed): skipped, its folder kept once
    ]
    result = run_ab_bench(stub_tree, out, "shape_1 shape_2", specs)
    assert result.returncode == 0, result.stdout + result.stderr
    assert (stub_tree / "kernel.txt").read_text() == "base\n"  # every patch reverted

    assert sorted(p.name for p in out.iterdir()) == ["ab_logs.tar.gz", "ab_summary.txt", "earlier"]
    assert (out / "earlier" / "keep.txt").read_text() == "kept"
    summary = (out / "ab_summary.txt").read_text()
    assert "device: stub GPU" in summary
    fast = summary.split("\nfast:\n")[1].split("\n\n")[0]
    slow = summary.split("\nslow:\n")[1].split("\n\n")[0]
    assert fast.count("(2.000x)") == 2 and slow.count("(0.500x)") == 2
    noise = summary.split("(the noise):\n")[1].split("\n\n")[0].splitlines()
    assert len(noise) == 2 and all(row.count("(1.000x)") == 2 for row in noise)  # base, twice
    # "slow" does not apply on top of "fast"; "stale" never applies; "broken" fails a stage
    assert "fast_and_slow" not in summary.split("stages")[0]
    stages = summary.split("stages (")[1]
    assert "stale: .peers/patches/stale.patch does not apply" in stages
    assert "=== other: a stage of 'build,broken' failed; not benchmarked" in stages
    assert "=== other: given twice (or named base); skipped" in result.stdout
    assert stages.count("  other:\n") == 1
    assert "sm90_test.log: ===== 3 passed in 1.00s =====" in stages
    assert "sm90_memcheck.log: ========= ERROR SUMMARY: 0 errors" in stages
    assert "=== sm90: rc=0 in 0 s" in stages

    with tarfile.open(out / "ab_logs.tar.gz") as archive:
        names = set(archive.getnames())
        first = json.load(archive.extractfile("fast/bench_1.json"))
    assert {"base/bench_1.json", "base/bench_2.json", "fast/sm90_test.log"} <= names
    assert {row["bwd_ms"] for row in first["rows"]} == {1.0}


def test_ab_bench_cuts_its_work_at_the_deadline_and_still_reports(stub_tree):
    """AB_DEADLINE_S: a stage that would run on, ignoring the TERM, is cut where only
    AB_TIMING_S is left (killed 5 s later), a spec with no time left is not started, a timing
    pass is cut at the deadline itself, and the summary and the archive come back with what was
    measured."""
    if shutil.which("timeout") is None:
        pytest.skip("coreutils' timeout is needed")
    out = stub_tree / "result"
    specs = ["lazy", "fast@build,stubborn", "slow"]
    started = time.monotonic()
    result = run_ab_bench(stub_tree, out, "shape_1", specs, AB_DEADLINE_S="12", AB_TIMING_S="8")
    elapsed = time.monotonic() - started
    assert result.returncode == 0, result.stdout + result.stderr
    assert elapsed < 30  # (the stub's sleeps are 60 s each)
    assert (stub_tree / "kernel.txt").read_text() == "base\n"
    assert sorted(p.name for p in out.iterdir()) == ["ab_logs.tar.gz", "ab_summary.txt"]
    summary = (out / "ab_summary.txt").read_text()
    stages = summary.split("stages (")[1]
    assert "=== fast: stages 'build,stubborn' cut at the deadline; not benchmarked" in stages
    assert "=== slow: stages 'build' cut at the deadline; not benchmarked" in stages
    assert "=== lazy: pass 1 cut at the deadline" in stages
    assert "=== lazy: pass 2 cut at the deadline" in stages
    assert "=== base: pass 2 cut at the deadline" in stages
    assert "device: stub GPU" in summary  # base's first pass, measured before the deadline
    assert "(the noise)" not in summary  # (one pass of base)
    with tarfile.open(out / "ab_logs.tar.gz") as archive:
        names = set(archive.getnames())
    assert "base/bench_1.json" in names and "lazy/bench_1.json" not in names


def test_ab_bench_reports_kernel_times_cut_at_the_deadline(stub_tree):
    """KERNEL_TIMES under AB_DEADLINE_S: a kernel-times run past the deadline is cut and
    reported, and base's benchmark pass before it still comes back."""
    if shutil.which("timeout") is None:
        pytest.skip("coreutils' timeout is needed")
    (stub_tree / "scripts" / "hstu_kernel_times.py").write_text("import time\ntime.sleep(60)\n")
    out = stub_tree / "result"
    started = time.monotonic()
    result = run_ab_bench(
        stub_tree, out, "shape_1", [], AB_DEADLINE_S="4", AB_TIMING_S="2", KERNEL_TIMES="shape_1"
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert time.monotonic() - started < 20  # (the stub sleeps 60 s)
    stages = (out / "ab_summary.txt").read_text().split("stages (")[1]
    assert "=== base: kernel times cut at the deadline" in stages
    assert "=== base: pass 2 cut at the deadline" in stages
    with tarfile.open(out / "ab_logs.tar.gz") as archive:
        assert "base/bench_1.json" in set(archive.getnames())
