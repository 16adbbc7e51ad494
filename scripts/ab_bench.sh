#!/usr/bin/env bash
# A/B benchmark of prepared kernel changes against the checked-out tree, in one call on one warm
# GPU machine (timings compare only within a machine, so the baseline runs in the same call).
#
#   scripts/ab_bench.sh "IMPLS" "SHAPES" [PATCH[+PATCH...][@STAGE,STAGE...] ...]
#
# IMPLS and SHAPES go to benchmarks/bench_hstu_attention.py (--impls, --shapes). Each PATCH is
# .peers/patches/PATCH.patch (a diff; .peers is ignored by git and carried to the machine);
# `a+b` applies both. The tree as it is builds first (label "base"), then each spec applied in
# turn and reverted: its STAGEs of scripts/gpu_check.sh (default: build). A spec whose patch does
# not apply or whose stages fail is reported and skipped.
# The timings come after every build, each build's extension put back in place before its run,
# in the order base, spec 1 .. spec k, then spec k .. spec 1, base: a drift over the call
# (clocks, heat) then weighs on each build's mean alike, where timing each build once, right
# after it, read untouched kernels up to 5% apart (docs/hstu_sm90/24.md). The summary gives the
# speedup of each spec's mean over base's, and base's second run against its first (the noise).
# KERNEL_TIMES="SHAPE ..." also runs scripts/hstu_kernel_times.py in the first pass
# (KERNEL_TIMES_BIAS=1 adds --bias). Results: $OUT/ab_summary.txt, the table and each label's
# stages (their exit codes, the tests' and sanitizers' summary lines), and $OUT/ab_logs.tar.gz,
# every label's folder (bench_1.json, bench_2.json, the stages' logs): the device tool sends
# back 8 files, and with per-label folders the stages' logs were the ones left out (26.md).
# AB_DEADLINE_S=N ends the work N seconds after the start (set it inside the device tool's limit
# or the device time left: a call killed there returned none of its results, 20.md): the builds'
# stages run under what is left less AB_TIMING_S (default 90, kept for the timing passes), each
# timing pass under what is left; what is cut is reported so, and the summary and the archive
# are written all the same (but for base's build: cut, like failed, it ends the call).
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-$PWD/out}
impls=${1:?usage: $0 IMPLS SHAPES [PATCH[+PATCH...][@STAGE,...] ...]}
shapes=${2:?usage: $0 IMPLS SHAPES [PATCH[+PATCH...][@STAGE,...] ...]}
shift 2
labels=()   # the builds timed
folders=()  # every label's folder under $OUT, packed at the end
kept=$(mktemp -d)  # each build's extension (outside $OUT: not sent back)
trap 'rm -rf "$kept"' EXIT
deadline=${AB_DEADLINE_S:-}
timing_reserve=${AB_TIMING_S:-90}

before_deadline() {  # reserve command...: the command under the seconds left less reserve
  local reserve=$1
  shift
  [ -z "$deadline" ] && { "$@"; return; }
  local seconds=$((deadline - SECONDS - reserve))
  ((seconds > 0)) || return 124
  timeout -k 5 "$seconds" "$@"  # (its process group goes too)
  local rc=$?
  # Cut: rc 124, or 137 where the command ignored the TERM and was killed 5 s later (a command
  # failing on its own in the last second before the cut keeps its own code).
  if (((rc == 124 || rc == 137) && SECONDS >= deadline - reserve)); then return 124; fi
  return "$rc"
}

extension_path() {
  python3 -c "import torch, freescale_ext._C as c; print(c.__file__)"
}

skip() {  # label message: why the label lost a stage or pass, into its skipped.txt (summary)
  echo "=== $1: $2" | tee -a "$OUT/$1/skipped.txt"
}

keep_build() {  # label: the extension just built
  local built
  built=$(extension_path) && cp "$built" "$kept/$1.so" && labels+=("$1")
}

measure() {  # label pass; a failed benchmark is reported (the summary leaves its rows out)
  local dir=$OUT/$1
  cp "$kept/$1.so" "$extension" || return 1
  # shellcheck disable=SC2086
  before_deadline 0 python3 benchmarks/bench_hstu_attention.py --impls $impls --shapes $shapes \
    --out "$dir/bench_$2.json" 2>&1 | tee "$dir/bench_$2.log"
  local rc=${PIPESTATUS[0]}
  if [ "$rc" = 124 ]; then
    rm -f "$dir/bench_$2.json"
    skip "$1" "pass $2 cut at the deadline"
    return 1
  elif [ "$rc" != 0 ]; then
    skip "$1" "the benchmark failed (pass $2)"
    return 1
  fi
  if [ -n "${KERNEL_TIMES:-}" ] && [ "$2" = 1 ]; then
    local bias=()
    [ "${KERNEL_TIMES_BIAS:-0}" = 1 ] && bias=(--bias)
    # shellcheck disable=SC2086
    before_deadline 0 python3 scripts/hstu_kernel_times.py --shapes $KERNEL_TIMES "${bias[@]}" \
      2>&1 | tee "$dir/kernel_times.log"
    if [ "${PIPESTATUS[0]}" = 124 ]; then skip "$1" "kernel times cut at the deadline"; fi
  fi
}

patch_files() {  # spec names joined by +
  local IFS=+
  for name in $1; do echo ".peers/patches/$name.patch"; done
}

mkdir -p "$OUT/base"
folders+=(base)
before_deadline "$timing_reserve" env OUT="$OUT/base" scripts/gpu_check.sh build 2>&1 |
  tee "$OUT/base/stages.txt" || exit 1
extension=$(extension_path) || exit 1
keep_build base || exit 1

for spec in "$@"; do
  names=${spec%%@*}
  stages=build
  [[ $spec == *@* ]] && stages=${spec#*@}
  label=${names//+/_and_}
  if [[ " ${folders[*]} " == *" $label "* ]]; then  # (one folder, build and timing per label)
    echo "=== $label: given twice (or named base); skipped"
    continue
  fi
  mkdir -p "$OUT/$label"
  folders+=("$label")
  mapfile -t patches < <(patch_files "$names")
  applied=()
  for p in "${patches[@]}"; do
    if git apply "$p"; then
      applied+=("$p")
    else
      skip "$label" "$p does not apply"
      break
    fi
  done
  if [ ${#applied[@]} -eq ${#patches[@]} ]; then
    # shellcheck disable=SC2086
    before_deadline "$timing_reserve" env OUT="$OUT/$label" scripts/gpu_check.sh ${stages//,/ } \
      2>&1 | tee "$OUT/$label/stages.txt"
    rc=${PIPESTATUS[0]}
    if [ "$rc" = 0 ]; then
      keep_build "$label"
    elif [ "$rc" = 124 ]; then
      skip "$label" "stages '$stages' cut at the deadline; not benchmarked"
    else
      skip "$label" "a stage of '$stages' failed; not benchmarked"
    fi
  fi
  for ((i = ${#applied[@]} - 1; i >= 0; i--)); do git apply -R "${applied[i]}"; done
done

for label in "${labels[@]}"; do measure "$label" 1; done
for ((i = ${#labels[@]} - 1; i >= 0; i--)); do measure "${labels[i]}" 2; done
cp "$kept/base.so" "$extension"  # the tree's own build back in place

python3 - "$OUT" "${labels[@]}" <<'PY' | tee "$OUT/ab_summary.txt"
import json
import os
import sys

out, labels = sys.argv[1], sys.argv[2:]


FIELDS = ("fwd_ms", "bwd_ms", "fwd_tflops")


def times(run):
    """(shape, impl) -> (fwd_ms, bwd_ms, fwd TFLOP/s) of one pass's JSON."""
    return {(r["shape"], r["impl"]): tuple(r[f] for f in FIELDS) for r in run["rows"]}


def mean_rows(label):
    """times() averaged over the label's passes, the device, and the passes."""
    runs = [f"{out}/{label}/bench_{k}.json" for k in (1, 2)]
    runs = [json.load(open(path)) for path in runs if os.path.exists(path)]
    rows = {}
    for run in runs:
        for key, values in times(run).items():
            rows.setdefault(key, []).append(values)
    mean = {key: tuple(sum(v) / len(v) for v in zip(*vs)) for key, vs in rows.items()}
    return mean, (runs[0]["device"] if runs else "?"), runs


def speedups(name, base, rows):
    print(f"\n{name}:")
    for key, (fwd, bwd, tflops) in rows.items():
        b = base.get(key)
        if b is None:
            continue
        if bwd <= 0:  # the dense GEMM row
            print(f"  {key[0]:>24}: {b[2]:.1f} -> {tflops:.1f} TFLOP/s")
            continue
        print(
            f"  {key[0]:>24} {key[1]:>22}: fwd {b[0] * 1e3:8.1f} -> {fwd * 1e3:8.1f} us "
            f"({b[0] / fwd:.3f}x), bwd {b[1] * 1e3:8.1f} -> {bwd * 1e3:8.1f} us ({b[1] / bwd:.3f}x)"
        )


base, device, base_runs = mean_rows(labels[0])
print(f"device: {device}; times (the mean of each build's two passes), and the speedup over base")
if len(base_runs) == 2:  # the noise: base's second pass (the call's last run) against its first
    speedups("base, pass 2 against pass 1 (the noise)", *map(times, base_runs))
for label in labels[1:]:
    speedups(label, base, mean_rows(label)[0])
PY

{
  echo
  echo "stages (exit codes and summary lines; the logs are in ab_logs.tar.gz):"
  for folder in "${folders[@]}"; do
    dir=$OUT/$folder
    echo "  $folder:"
    # gpu_check's "=== stage: rc=..." lines, pytest's last line, the sanitizers' verdicts
    grep -h '^=== .*: rc=' "$dir"/stages.txt 2>/dev/null | sed 's/^/    /'
    sed 's/^/    /' "$dir"/skipped.txt 2>/dev/null
    for log in "$dir"/*.log; do
      [ -e "$log" ] || continue
      grep -h -E '[0-9]+ (passed|failed)|ERROR SUMMARY|RACECHECK SUMMARY' "$log" | tail -1 |
        sed "s|^|    $(basename "$log"): |"
    done
  done
} | tee -a "$OUT/ab_summary.txt"
(cd "$OUT" && tar czf ab_logs.tar.gz -- "${folders[@]}" && rm -rf -- "${folders[@]}")
