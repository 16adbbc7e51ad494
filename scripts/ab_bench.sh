#!/usr/bin/env bash
# A/B benchmark of prepared kernel changes against the checked-out tree, in one call on one warm
# GPU machine (timings compare only within a machine, so the baseline runs in the same call).
#
#   scripts/ab_bench.sh "IMPLS" "SHAPES" [PATCH[+PATCH...][@STAGE,STAGE...] ...]
#
# IMPLS and SHAPES go to benchmarks/bench_hstu_attention.py (--impls, --shapes). Each PATCH is
# .peers/patches/PATCH.patch (`git format-patch` output; .peers is ignored by git and carried to
# the machine); `a+b` applies both. The tree as it is runs first (label "base"), then each spec
# applied in turn and reverted: its STAGEs of scripts/gpu_check.sh (default: build) and then the
# benchmark. A spec whose patch does not apply or whose stages fail is reported and skipped.
# KERNEL_TIMES="SHAPE ..." also runs scripts/hstu_kernel_times.py after each benchmark
# (KERNEL_TIMES_BIAS=1 adds --bias). Results: $OUT/<label>/ and a table in $OUT/ab_summary.txt.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-$PWD/out}
impls=${1:?usage: $0 IMPLS SHAPES [PATCH[+PATCH...][@STAGE,...] ...]}
shapes=${2:?usage: $0 IMPLS SHAPES [PATCH[+PATCH...][@STAGE,...] ...]}
shift 2
labels=()

measure() {  # label; a failed benchmark leaves the label out of the summary
  local dir=$OUT/$1
  # shellcheck disable=SC2086
  if ! python3 benchmarks/bench_hstu_attention.py --impls $impls --shapes $shapes \
    --out "$dir/bench.json" 2>&1 | tee "$dir/bench.log"; then
    echo "=== $1: the benchmark failed" | tee -a "$dir/skipped.txt"
    return 1
  fi
  if [ -n "${KERNEL_TIMES:-}" ]; then
    local bias=()
    [ "${KERNEL_TIMES_BIAS:-0}" = 1 ] && bias=(--bias)
    # shellcheck disable=SC2086
    python3 scripts/hstu_kernel_times.py --shapes $KERNEL_TIMES "${bias[@]}" 2>&1 |
      tee "$dir/kernel_times.log"
  fi
  labels+=("$1")
}

patch_files() {  # spec names joined by +
  local IFS=+
  for name in $1; do echo ".peers/patches/$name.patch"; done
}

mkdir -p "$OUT/base"
OUT=$OUT/base scripts/gpu_check.sh build || exit 1
measure base || exit 1

for spec in "$@"; do
  names=${spec%%@*}
  stages=build
  [[ $spec == *@* ]] && stages=${spec#*@}
  label=${names//+/_and_}
  mkdir -p "$OUT/$label"
  mapfile -t patches < <(patch_files "$names")
  applied=()
  for p in "${patches[@]}"; do
    if git apply "$p"; then
      applied+=("$p")
    else
      echo "=== $label: $p does not apply" | tee -a "$OUT/$label/skipped.txt"
      break
    fi
  done
  if [ ${#applied[@]} -eq ${#patches[@]} ]; then
    # shellcheck disable=SC2086
    if OUT=$OUT/$label scripts/gpu_check.sh ${stages//,/ }; then
      measure "$label"
    else
      echo "=== $label: a stage of '$stages' failed; not benchmarked" |
        tee -a "$OUT/$label/skipped.txt"
    fi
  fi
  for ((i = ${#applied[@]} - 1; i >= 0; i--)); do git apply -R "${applied[i]}"; done
done

python3 - "$OUT" "${labels[@]}" <<'PY' | tee "$OUT/ab_summary.txt"
import json
import sys

out, labels = sys.argv[1], sys.argv[2:]
runs = {label: json.load(open(f"{out}/{label}/bench.json")) for label in labels}
base = {(r["shape"], r["impl"]): r for r in runs[labels[0]]["rows"]}
print(f"device: {runs[labels[0]]['device']}; times, and the speedup over {labels[0]}")
for label in labels[1:]:
    print(f"\n{label}:")
    for r in runs[label]["rows"]:
        b = base.get((r["shape"], r["impl"]))
        if b is None:
            continue
        if r["bwd_ms"] <= 0:  # the dense GEMM row
            print(f"  {r['shape']:>24}: {b['fwd_tflops']:.1f} -> {r['fwd_tflops']:.1f} TFLOP/s")
            continue
        print(
            f"  {r['shape']:>24} {r['impl']:>22}: fwd {b['fwd_ms'] * 1e3:8.1f} -> "
            f"{r['fwd_ms'] * 1e3:8.1f} us ({b['fwd_ms'] / r['fwd_ms']:.3f}x), bwd "
            f"{b['bwd_ms'] * 1e3:8.1f} -> {r['bwd_ms'] * 1e3:8.1f} us "
            f"({b['bwd_ms'] / r['bwd_ms']:.3f}x)"
        )
PY
