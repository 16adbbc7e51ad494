#!/usr/bin/env bash
# One call on the GPU machine: build, GPU tests, sanitizers, benchmarks, quality runs.
#
#   scripts/gpu_check.sh [stage ...]
#     stages: build test sanitize sanitize_compressed bench persrec serve optim comm_test
#     comm_sanitize comm sharded balance quality sm90 sm90_sanitize sm90_bench sm90_profile
#     sm90_stalls sm90_vs_sdpa portable
#     (default: build test sanitize bench persrec serve); persrec: the compressed-attention
#     benchmark; serve: PerSRec serving with and without the token cache; optim: the fused
#     sparse optimizer kernels against the PyTorch update; comm_test: the multi-GPU comm and
#     sharded-training tests; comm_sanitize: memcheck on a 2-GPU comm test; comm: copy-engine all-to-all vs
#     NCCL, alone and under a GEMM, and an urgent call during a bulk one (all GPUs); sharded: sharded-embedding training (all GPUs)
#     balance: bench_balance.py on 2 (and 4) GPUs; quality: QUALITY_RUNS="preset:seed ...",
#     run concurrently, one per GPU; sm90: the sm_90a HSTU kernels' smoke check and tests;
#     sm90_sanitize: memcheck and racecheck; sm90_bench: the benchmark beside SDPA and, when
#     scripts/stage_triton_hstu_peer.sh has staged it into .peers/ (carry it), the Triton HSTU
#     kernel; sm90_profile: Nsight Compute on the sm_90a kernels (scripts/profile_hstu_sm90.py);
#     sm90_stalls: the sm_90a backward's stall reasons without and with the bias;
#     portable: the build a GPU without sm_90a gets, run here through its PTX (then rebuilds)
#
# Results go under $OUT (or ./out when unset): logs, JSON benchmark results, training summaries.
# Real datasets are read from $FREESCALE_DATA_DIR (carry a copy in an ignored folder, e.g. .data/).
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-$PWD/out}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1
# NVLink multicast stays off on the lent machines (KINDS.md).
export NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1 NVSHMEM_DISABLE_NVLS=1
# Build with the system compiler, whose libstdc++ is the one the process loads. The image sets
# CXX=/opt/gcc/bin/g++: its headers instantiate iostream internals (num_put facet ids) inside
# _C, which then clash with the system libstdc++ and crash any TORCH_CHECK that formats an int.
unset CC CXX CUDAHOSTCXX
stages=("$@")
[ ${#stages[@]} -eq 0 ] && stages=(build test sanitize bench persrec serve)
status=0

run_stage() {  # name command...
  local name=$1; shift
  echo "=== $name: $*"
  local t0=$SECONDS
  "$@" 2>&1 | tee "$OUT/$name.log"
  local rc=${PIPESTATUS[0]}
  echo "=== $name: rc=$rc in $((SECONDS - t0)) s"
  [ "$rc" -ne 0 ] && status=1
  return "$rc"
}

hotspots() {  # report kernel-regex top log: a report's SASS page ranked by scripts/ncu_hotspots.py
  ncu -i "$1" --kernel-name "regex:$2" --page source --print-source sass --csv 2>&1 \
    | python3 scripts/ncu_hotspots.py --top "$3" | tee "$4"
}

for stage in "${stages[@]}"; do
  case $stage in
    build)
      nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$OUT/gpu.txt"
      MAX_JOBS=${MAX_JOBS:-16} run_stage build \
        python3 -m pip install --no-build-isolation --no-deps -e . || exit 1
      python3 -c "import freescale_ext, torch; print(freescale_ext.build_info(), torch.__version__)"
      ;;
    portable)
      # What an A100, L4 or B200 runs: a build without sm_90a (FREESCALE_CUDA_ARCHS=80+PTX), whose
      # sm_80 PTX the driver compiles for this card, so the simple and compressed kernels' GPU
      # tests run on the code those GPUs get. Then the build for this card again, for the stages
      # after it.
      FREESCALE_CUDA_ARCHS=80+PTX MAX_JOBS=${MAX_JOBS:-16} run_stage portable_build \
        python3 -m pip install --no-build-isolation --no-deps -e . &&
        python3 -c "import freescale_ext; print(freescale_ext.build_info())" &&
        run_stage portable_test python3 -m pytest tests/test_hstu_attention_cuda.py \
          tests/test_compressed_attention_cuda.py -q -p no:cacheprovider
      MAX_JOBS=${MAX_JOBS:-16} run_stage build \
        python3 -m pip install --no-build-isolation --no-deps -e . || exit 1
      ;;
    test)
      run_stage test python3 -m pytest tests -q -m "gpu or multi_gpu" -p no:cacheprovider ;;
    sanitize)
      run_stage memcheck compute-sanitizer --tool memcheck --error-exitcode 1 \
        python3 scripts/sanitize_hstu.py
      run_stage racecheck compute-sanitizer --tool racecheck --error-exitcode 1 \
        python3 scripts/sanitize_hstu.py
      "$0" sanitize_compressed || status=1
      ;;
    sanitize_compressed)
      run_stage memcheck_compressed compute-sanitizer --tool memcheck --error-exitcode 1 \
        python3 scripts/sanitize_compressed.py
      run_stage racecheck_compressed compute-sanitizer --tool racecheck --error-exitcode 1 \
        python3 scripts/sanitize_compressed.py
      ;;
    sm90)
      # Timeouts: a kernel that deadlocks on a barrier must not eat the whole call.
      run_stage sm90_smoke timeout 120 python3 scripts/sm90_smoke.py
      run_stage sm90_test timeout 420 python3 -m pytest tests/test_hstu_attention_sm90.py -q \
        -p no:cacheprovider -rA ;;
    sm90_sanitize)
      run_stage sm90_memcheck timeout 280 compute-sanitizer --tool memcheck --error-exitcode 1 \
        python3 scripts/sanitize_hstu.py
      run_stage sm90_racecheck timeout 280 compute-sanitizer --tool racecheck \
        --error-exitcode 1 python3 scripts/sanitize_hstu.py
      run_stage sm90_synccheck timeout 280 compute-sanitizer --tool synccheck \
        --error-exitcode 1 python3 scripts/sanitize_hstu.py ;;
    sm90_bench)
      # Batches of about 1M tokens, issue 3's size (FREESCALE_BENCH_TOKENS overrides it; the
      # benchmark's own default, 256K, keeps its pytest run short). SM90_BENCH_IMPLS /
      # SM90_BENCH_SHAPES narrow it when device time is short (on an H100 at 1M tokens the plain
      # and bias rows with the Triton, SDPA and padded PyTorch peers on every shape took 284 s).
      # SM90_BENCH_TIMEOUT (seconds) ends the benchmark itself in time for the call's limit: the
      # rows done so far stay in the JSON and the log (a `timeout` around this script would
      # leave the benchmark running). At 1M tokens our rows and SDPA's take 0.3-2 s each, the
      # Triton peer's 20-70 s (its autotuning at each new shape; 38.md).
      # shellcheck disable=SC2086
      FREESCALE_BENCH_TOKENS=${FREESCALE_BENCH_TOKENS:-1048576} \
        FREESCALE_BENCH_OUT="$OUT/bench_hstu_sm90.json" run_stage sm90_bench \
        timeout "${SM90_BENCH_TIMEOUT:-0}" python3 benchmarks/bench_hstu_attention.py \
        --impls ${SM90_BENCH_IMPLS:-freescale_sm90 freescale_sm90_plain freescale_sm90_overlap \
        freescale_sm90_pingpong freescale_sm90_full_grid freescale_sm90_atomic_dq \
        freescale_sm90_bias freescale_sm90_bias_ms triton_hstu sdpa} --shapes ${SM90_BENCH_SHAPES:-full jagged ml1m} ;;
    sm90_profile)
      # Nsight Compute on one forward and backward per shape (scripts/profile_hstu_sm90.py):
      # speed of light, memory (L2 hit rate, DRAM bytes read and written), warp stalls, tensor
      # pipe. PROFILE_SHAPES picks shapes; PROFILE_BIAS=1 profiles the relative-bias kernels
      # instead, with instruction mix and per-instruction stall samples (SourceCounters), and
      # ranks their source lines by stall samples (scripts/ncu_hotspots.py); PROFILE_TIME_UNIT
      # (seconds, milliseconds, flat, none) picks the bias's timestamps.
      profile_sections=(--section SpeedOfLight --section MemoryWorkloadAnalysis --section WarpStateStats)
      profile_bias_args=()
      if [ "${PROFILE_BIAS:-0}" = 1 ]; then
        profile_sections+=(--section InstructionStats --section SourceCounters)
        profile_bias_args=(--bias --time-unit "${PROFILE_TIME_UNIT:-seconds}")
      fi
      rm -f "$OUT/sm90_profile.ncu-rep"
      # shellcheck disable=SC2086
      run_stage sm90_profile_collect timeout 400 ncu --profile-from-start off \
        --kernel-name regex:hstu_ "${profile_sections[@]}" --import-source yes \
        --metrics sm__pipe_tensor_cycles_active.avg.pct_of_peak_sustained_active,lts__t_sector_hit_rate.pct,dram__bytes_read.sum,dram__bytes_write.sum \
        -o "$OUT/sm90_profile" \
        python3 scripts/profile_hstu_sm90.py --shapes ${PROFILE_SHAPES:-full_n2048 full_n8192} \
        "${profile_bias_args[@]}"
      run_stage sm90_profile ncu -i "$OUT/sm90_profile.ncu-rep"
      if [ "${PROFILE_BIAS:-0}" = 1 ]; then
        for kernel in forward backward; do
          hotspots "$OUT/sm90_profile.ncu-rep" "$kernel" 30 "$OUT/sm90_hotspots_$kernel.log"
        done
      fi ;;
    sm90_stalls)
      # The backward's stall reasons, the kernel without the bias and with it, on the same
      # shape (PROFILE_SHAPES, default full_n2048): per-instruction warp-state samples, summed
      # kernel-wide and by code region (scripts/ncu_hotspots.py), e.g. whether the bias
      # kernel's larger code waits on instruction fetch (no_instructions) where the plain one
      # does not. One backward per kernel; FREESCALE_BENCH_TOKENS sets the batch,
      # STALLS_VARIANTS="plain bias" (the default) which kernels. The reports are removed once
      # read (the device tool returns few files) unless STALLS_KEEP_REPORTS=1.
      for variant in ${STALLS_VARIANTS:-plain bias}; do
        bias_flag=()
        [ "$variant" = bias ] && bias_flag=(--bias)
        rm -f "$OUT/sm90_stalls_$variant.ncu-rep"
        # shellcheck disable=SC2086
        run_stage "sm90_stalls_collect_$variant" timeout 300 ncu --profile-from-start off \
          --kernel-name regex:hstu_backward --section WarpStateStats --section SourceCounters \
          -o "$OUT/sm90_stalls_$variant" python3 scripts/profile_hstu_sm90.py \
          --shapes ${PROFILE_SHAPES:-full_n2048} "${bias_flag[@]}"
        hotspots "$OUT/sm90_stalls_$variant.ncu-rep" hstu_backward 12 "$OUT/sm90_stalls_$variant.log"
        [ "${STALLS_KEEP_REPORTS:-0}" = 1 ] || rm -f "$OUT/sm90_stalls_$variant.ncu-rep"
      done ;;
    sm90_vs_sdpa)
      # Our backward beside torch SDPA's causal softmax forward and backward (the
      # FlashAttention-class peer the targets name; cuDNN's kernels on the lent machines) under
      # the same Nsight Compute sections, on one shape (PROFILE_SHAPES, default full_n8192):
      # tensor-pipe activity, issue slots, memory tables (shared-memory bank conflicts), side
      # by side (docs/hstu_sm90/33.md). Printed reports only (the .ncu-rep files are removed
      # once read: the device tool returns few files).
      vs_sections=(--section SpeedOfLight --section ComputeWorkloadAnalysis
        --section MemoryWorkloadAnalysis_Tables --section WarpStateStats --section Occupancy
        --metrics sm__pipe_tensor_cycles_active.avg.pct_of_peak_sustained_active,sm__inst_executed_pipe_tensor.sum)
      for peer in ours sdpa; do
        kernel_args=(--kernel-name regex:hstu_backward)  # (SDPA's: every kernel it launches)
        peer_args=()
        [ "$peer" = sdpa ] && kernel_args=() && peer_args=(--peer sdpa)
        rm -f "$OUT/sm90_vs_sdpa_$peer.ncu-rep"
        # shellcheck disable=SC2086
        run_stage "sm90_vs_sdpa_collect_$peer" timeout 240 ncu --profile-from-start off \
          "${kernel_args[@]}" "${vs_sections[@]}" -o "$OUT/sm90_vs_sdpa_$peer" \
          python3 scripts/profile_hstu_sm90.py --shapes ${PROFILE_SHAPES:-full_n8192} \
          "${peer_args[@]}"
        run_stage "sm90_vs_sdpa_$peer" ncu -i "$OUT/sm90_vs_sdpa_$peer.ncu-rep"
        rm -f "$OUT/sm90_vs_sdpa_$peer.ncu-rep"
      done ;;
    bench)
      FREESCALE_BENCH_OUT="$OUT/bench_hstu.json" run_stage bench \
        python3 benchmarks/bench_hstu_attention.py ;;
    persrec)
      run_stage persrec python3 benchmarks/bench_compressed_attention.py \
        --out "$OUT/bench_compressed.json" ;;
    serve)
      # History 1024, recent 50 (the issue's serving point), bf16 so that HSTU runs the kernels;
      # batch sizes from one user to 1024, CUDA graphs (the default on a GPU) and one eager sweep.
      for args in "--model hstu" "--model hstu --segment 128" "--model hstu --no-cuda-graphs" \
        "--model sasrec --users 1,16,256"; do
        # shellcheck disable=SC2086
        run_stage "serve_${args//[ -,]/_}" python3 -m freescale.cli serve-bench \
          --users 1,16,256,1024 $args --history 1024 --recent 50 --repeats 20 --device cuda \
          --dtype bfloat16
      done ;;
    optim)
      run_stage optim python3 benchmarks/bench_sparse_optim.py --out "$OUT/bench_sparse_optim.json" ;;
    comm_test)
      # The runtime's and the exchange's multi-GPU tests (2 and 4 GPUs where there are 4).
      run_stage comm_test python3 -m pytest tests/test_comm_runtime.py tests/test_sharded_training.py \
        -q -m multi_gpu -p no:cacheprovider -rA ;;
    comm_sanitize)
      # memcheck over both ranks of one exact 2-GPU test (IPC-mapped peers, stream memory ops).
      run_stage comm_memcheck compute-sanitizer --tool memcheck --target-processes all \
        --error-exitcode 1 python3 -m pytest tests/test_comm_runtime.py -q -p no:cacheprovider \
        -k "exactly and 2-streams-fenced-write" ;;
    comm)
      run_stage comm python3 benchmarks/comm_overlap.py --out "$OUT/comm_overlap.json"
      run_stage comm_priority python3 benchmarks/comm_priority.py --out "$OUT/comm_priority.json"
      ;;
    sharded)
      # Six torchrun runs in one call can pass its 10 minutes: SHARDED_CONFIGS picks some
      # (comma-separated names; "no prefetch", the base, always runs).
      run_stage sharded python3 benchmarks/bench_sharded_training.py --steps 30 --warmup 10 \
        --configs "${SHARDED_CONFIGS:-}" --out "$OUT/bench_sharded.json" ;;
    balance)
      gpus=$(nvidia-smi -L | wc -l)
      worlds=2; [ "$gpus" -ge 4 ] && worlds=2,4
      run_stage balance python3 benchmarks/bench_balance.py --worlds "$worlds" \
        --out "$OUT/bench_balance.json" ;;
    quality)
      # QUALITY_GPUS="1 2" restricts the runs to those GPUs (default: all of them).
      read -r -a gpu_ids <<<"${QUALITY_GPUS:-$(seq -s ' ' 0 $(($(nvidia-smi -L | wc -l) - 1)))}"
      gpus=${#gpu_ids[@]}; i=0; pids=()
      # An entry is preset:seed, or preset:seed:tag:--flag,--flag=value (extra train flags).
      for run in ${QUALITY_RUNS:-ml-1m-sasrec:42 ml-1m-hstu-large:42}; do
        IFS=: read -r preset seed tag flags <<<"$run"
        name="$preset${tag:+-$tag}-s$seed"
        IFS=, read -r -a extra <<<"${flags:-}"
        echo "=== train $name ${extra[*]} on GPU ${gpu_ids[$((i % gpus))]}"
        CUDA_VISIBLE_DEVICES=${gpu_ids[$((i % gpus))]} python3 -m freescale.cli train --preset "$preset" \
          --seed "$seed" "${extra[@]}" --run-dir "runs/$name" --progress off \
          >"$OUT/train-$name.log" 2>&1 &
        pids+=($!); i=$((i + 1))
      done
      for pid in "${pids[@]}"; do wait "$pid" || status=1; done
      tail -n 14 "$OUT"/train-*.log
      tar czf "$OUT/quality_summaries.tar.gz" runs/*/summary.json 2>/dev/null
      ;;
    *) echo "unknown stage $stage"; exit 2 ;;
  esac
done
exit $status
