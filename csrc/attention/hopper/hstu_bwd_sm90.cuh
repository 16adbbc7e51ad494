// HSTU attention backward for sm_90a (DESIGN §4), with x = alpha q.k, sigma = sigmoid(x),
// M the mask and N the normalizer:
//   N dV = (N P)^T dO,  dP = dO V^T,  N dX = dP sigma (1 + x (1 - sigma)) M,
//   dQ = alpha dX K,  dK = alpha dX^T Q.
//
// A block owns 128 key rows of one (sequence, head) and walks the 64-row query tiles that can
// see them (HstuMask::row_ranges: a contextual prefix, then the rows from the block on); each
// consumer warpgroup owns 64 of the key rows (at d = 256: the block's 64 key rows, half of d
// each; see BwdTiles). Per query tile a producer warp loads Q and dO (TMA,
// ring of stages); a consumer computes the transposed scores S^T = K Q^T and dP^T = V dO^T (both
// operands in shared memory), forms (N P)^T and (N dX)^T in registers, accumulates dV and dK with
// them as register A operands (at d = 256 without the bias the warpgroups split S^T and dP^T by
// query columns and take dV and dK from shared memory: kSplitS), stores (N dX)^T to shared memory
// and multiplies it by K into a partial dQ (at d = 128 both warpgroups' (N dX)^T by all of the
// block's keys, each for half of d; at d = 64 the same for all of d, by one warpgroup per step in
// turns), which it adds to an fp32 workspace (TMA tensor reductions or atomics: dQ sums over key
// blocks). dK, dV are written once per block, exactly; a second kernel turns the dQ workspace into
// dQ. Blocks take the work items of tile_list.h (key blocks of one (sequence, head) together, so
// their Q and dO share L2). Relative-bias gradients are reduced in shared memory per warpgroup,
// then added to the fp32 tables with one atomic per slot: relative positions per query step
// (diagonal sums of an fp32 tile of the step's (N dX)^T), time buckets per block.
#pragma once

#include <cuda.h>
#include <cuda_runtime.h>

#include <type_traits>

#include "attention/hopper/hstu_fwd_sm90.cuh"
#include "attention/hopper/sm90_primitives.cuh"
#include "attention/hopper/tile_list.h"
#include "attention/hopper/wgmma.cuh"
#include "attention/hstu_params.h"
#include "attention/hstu_sequence.cuh"
#include "attention/mma_m16n8k16.cuh"

namespace freescale::attention::hopper {

template <int D>
struct BwdTiles {
  // d <= 128: each consumer warpgroup owns 64 of the block's 128 key rows and all of d. d = 256
  // would need 2 x 128 accumulator registers for dV and dK: both warpgroups take the block's
  // 64 key rows and each owns half of d for dV, dK and dQ (S^T and dP^T, contracted over all
  // of d, are computed by both).
  static constexpr bool kSplitD = D == 256;
  static constexpr int kBlockN = kSplitD ? 64 : 128;   // key rows per block
  static constexpr int kBlockM = 64;                   // query rows per step
  static constexpr int kOutDim = kSplitD ? D / 2 : D;  // columns of dV, dK, dQ per warpgroup
  static constexpr int kStages = kSplitD ? 1 : 2;
  // dQ of a step: at d = 128 each warpgroup contracts (N dX) over all of the block's 128 keys
  // for its half of d, so every dQ element gets one atomic per block instead of one per
  // warpgroup (both warpgroups' (N dX)^T must then be in shared memory: a 256-thread barrier).
  // At d = 64 half of d would start mid-row of K's 128-byte swizzle; at d = 256 the warpgroups
  // already own halves of d.
  static constexpr bool kSplitDq = D == 128;
  // At d = 64 the warpgroups take the steps' dQ in turns (step it: warpgroup it % 2), each over
  // all of the block's 128 keys and all of d: one atomic per dQ element and block, as kSplitDq's,
  // where each warpgroup's over its own 64 keys made two (without them the d = 64 backward ran
  // 1.51x, docs/hstu_sm90/21.md; the turns with float4 atomics ran it 1.23x, 22.md). The other
  // warpgroup's next step runs meanwhile.
  static constexpr bool kDqTurns = D == 64;
  static constexpr bool kDqOverBlock = kSplitDq || kDqTurns;  // dQ contracts over 128 keys
  // Whether the bias with positions only runs a kernel of its own, without the time buckets'
  // code (kTs = false). With that code ptxas laid d = 256's positions-only steps out slower:
  // without it the backward ran 1.19x on an H100 (docs/hstu_sm90/20.md call 2); at d = 64 the
  // same kernel ran 1.00x, and at d = 128 0.90-0.94x, where ptxas serialized its wgmma with
  // bulk dQ (C7512), so those keep the one bias kernel.
  static constexpr bool kPositionsOnlyKernel = D == 256;
  static constexpr int kDqDim = kSplitDq ? D / 2 : kOutDim;    // dQ columns per warpgroup
  static constexpr int kDqKeys = kDqOverBlock ? kBlockN : 64;  // keys each contracts over
  // With bulk dQ (every plain kernel, and the bias kernels where kBulkWithBias): each
  // warpgroup's 64 x kDqDim fp32 partial dQ as kDqDim / 32 boxes of 64 rows x 32 floats (128 bytes,
  // the widest 128-byte swizzled TMA box), swizzled as TMA lays them out, which also spreads a
  // half-warp's float2 writes over the banks; each warp adds its 16 rows of a box to dQ with one
  // tensor reduction (kDqBoxRows). A warpgroup's boxes start at its staging region (kDqStageFloats,
  // below).
  static constexpr int kDqBoxFloats = 32;
  static constexpr int kDqBoxRows = 16;
  static constexpr int kChunks = D / 64;
  static constexpr int kConsumers = 2;
  static constexpr int kThreads = 128 * (1 + kConsumers);
  static constexpr int kKVBytes = kBlockN * D * 2;  // one of K, V
  static constexpr int kQBytes = kBlockM * D * 2;   // one of Q, dO
  // One (N dX)^T buffer: 64 key rows per warpgroup (its own rows, or its own copy with
  // kSplitD), 128-byte rows of 64 queries.
  static constexpr int kDXBytes = kConsumers * 64 * kBlockM * 2;
  // Relative-bias gradients: the time buckets' runs still open at the block's end reduced in
  // shared memory per consumer warpgroup (kTsGradFloats); the relative positions from each step's
  // (N dX)^T in fp32, summed along the diagonals of its 64 x 64 tile (the 127 offsets j - i a step
  // covers; see kDiagRows).
  static constexpr int kMaxTsBuckets = 1024;
  // (The runs flushed on the way go to global memory, see add_to_run.)
  static constexpr int kTsGradFloats = kMaxTsBuckets;
  // A thread's accumulator rows g and g + 8 of a warp's 16 key rows hold the same diagonals
  // 8 columns apart, so it adds them and stores one row (kDiagRows per warpgroup) of 9 float2:
  // half the stores of the tile (with the sums below, 1.02-1.05x the bias backward on an H200
  // against two diagonal lines per lane, docs/hstu_sm90/14.md). Rows are kDiagRowFloats apart
  // (a half-warp's float2 writes, four rows by 8 floats each, hit distinct banks), the 72
  // written floats then 64 zeros, and kDiagPadFloats zeros lead: every diagonal meets every row
  // at one column of the 56 before to the 56 after the written ones, so lane x sums the slot x
  // of every row, 32 loads at constant offsets from one address and no tests (the zeros stay:
  // only the bulk dQ boxes, which share the region, overwrite them, and that kernel zeroes them
  // again).
  static constexpr int kDiagRows = 32;
  static constexpr int kDiagRowFloats = 136;
  static constexpr int kDiagWrittenFloats = 72;
  static constexpr int kDiagPadFloats = 56;
  // A warpgroup's region of the fp32 staging: 64 rows of 72 floats (18 KB, a multiple of the
  // 1024 bytes that the bulk dQ boxes' swizzle aligns to).
  static constexpr int kStagingFloats = 64 * 72;
  static constexpr int kDiagBytes = kConsumers * kStagingFloats * 4;
  // Every plain kernel adds dQ by bulk reductions. d = 256's 64 x 256 floats a step (with
  // float2 atomics the backward ran 1.44x slower than without them, docs/hstu_sm90/21.md call
  // 2) take 32 KB of boxes per warpgroup, which fit only a carve without the bias's regions
  // (kLeanPlain, below); d = 64's turns give the warpgroup that takes a step's dQ 64 x 64
  // floats, two boxes (1.06x the backward over the turns' float4 atomics at n = 2048 on an
  // H100, docs/hstu_sm90/23.md).
  static constexpr bool kLeanPlain = kSplitD;
  // The bias kernels add dQ by bulk reductions where a warpgroup's boxes fit the staging region
  // the diagonal tile already takes (d = 64 and 128; 1.05x d = 64's bias backward at n = 2048,
  // 0.99-1.01x on ML-1M's short calls, 23.md); d = 256's keep the atomics.
  static constexpr bool kBulkWithBias = 64 * kDqDim <= kStagingFloats;
  static constexpr int kDqStageFloats = 64 * kDqDim > kStagingFloats ? 64 * kDqDim : kStagingFloats;
  static constexpr int kDqStageBytes = kConsumers * kDqStageFloats * 4;
  // The bias itself, staged like the forward's: the time-bucket weights once per block, and a
  // slot per Q/dO stage (BiasSlot) that warps 1-3 of the producer warpgroup fill for the
  // stage's step: t_{i+1} of its queries (int64, and int32 offsets from the block's reference
  // time) and the position weights of the offsets j - i of the block's keys and its queries
  // (kBlockM + kBlockN - 1 of them, one spare).
  static constexpr int kPosWindow = kBlockM + kBlockN;
  using BiasSlotOf = BiasSlot<kBlockM, kPosWindow>;
  static constexpr int kBiasStagers = 96;
  static constexpr int kBiasBytes =
      4 * kConsumers * kTsGradFloats + 4 * kMaxTsBuckets + kStages * BiasSlotOf::kBytes;
  static constexpr int kBarrierBytes = 8 * (1 + 2 * kStages) + 8;  // + 8: 16-byte padding
  // The time-bucket tables (TsBucketTables: the cells, 8-byte loads, then the thresholds).
  static constexpr int kThresholdBytes = 8 * kTsCells + 8 * kTsBucketThresholds;
  // Without the fp32 staging region (which only the kernels that use it carve, for bulk dQ or
  // the bias: the plain kernels with the dQ atomics keep the shared memory, and so the L1
  // carve-out, they had). The bulk dQ boxes and the bias's diagonal tile share it: a
  // warpgroup's 64 x 72 floats.
  static constexpr int kSmemBytes = 2 * kKVBytes + 2 * kStages * kQBytes + 2 * kDXBytes +
                                    kBiasBytes + kBarrierBytes + kThresholdBytes + 1024;
  static constexpr int stage_bytes(bool bulk_dq, bool bias) {
    const int dq = bulk_dq ? kDqStageBytes : 0;
    const int diag = bias ? kDiagBytes : 0;
    return dq > diag ? dq : diag;
  }
  // Whether a call runs the bulk dQ kernels (and needs the dQ accumulator's tensor map).
  static bool runs_bulk_dq(const HstuParams& p) {
    const bool bias = p.bias.pos_weight != nullptr || p.bias.ts_weight != nullptr;
    return (kBulkWithBias || !bias) && p.sm90_bulk_dq;
  }
  // With kLeanPlain the plain kernel carves none of the bias's regions, so that its dQ boxes fit
  // (225 KB with them). The other plain kernels keep the bias's regions unused: their shared
  // memory, and so the L1 carve-out, stays what it was measured with.
  static constexpr int kLeanPlainBytes =
      2 * kKVBytes + 2 * kStages * kQBytes + 2 * kDXBytes + kBarrierBytes + 1024;
  static constexpr int smem_bytes(bool bulk_dq, bool bias) {
    return kLeanPlain && !bias ? kLeanPlainBytes + stage_bytes(bulk_dq, false)
                               : kSmemBytes + stage_bytes(bulk_dq, bias);
  }
  static_assert(D == 64 || D == 128 || D == 256, "the sm_90a backward takes head dims 64-256");
  static_assert(kDiagPadFloats + kDiagRows * kDiagRowFloats <= kStagingFloats,
                "the diagonal tile fits a warpgroup's staging region");
  static_assert(smem_bytes(kBulkWithBias, true) <= 227 * 1024, "shared memory of one sm_90 block");
  static_assert(smem_bytes(true, false) <= 227 * 1024, "shared memory of one sm_90 block");
  static_assert(kThreads == FwdTiles<D>::kThreads, "the forward's register split applies");
};

// dpt dSiLU/dx of a pair from its half score h = x / 2 and th = tanh h: one MUFU operation for
// SiLU(x) = h (1 + th) (the forward's silu_of_half) and its gradient, where an exponential and a
// reciprocal took two (1.07-1.11x on an H100 for the plain kernel, 1.05-1.07x for the bias
// kernel: docs/hstu_sm90/12.md and 13.md). The kernels scale alpha and the bias weights by 1/2
// instead of each score (exact: a power of two). dSiLU/dx = sigma (1 + x (1 - sigma)) = (1 + th)
// / 2 (1 + h (1 - th)), so dpt dSiLU/dx = g (1 + b), g = dpt (1 + th) / 2, b = h (1 - th): it
// ends in one FFMA, and g takes no register for 0.5 (fmaf(0.5, th, 0.5) does); with the bias's
// half scores, 1.05-1.10x for the bias backward on an H100 (docs/hstu_sm90/30.md). The callers
// keep tanh and SiLU: a helper returning SiLU and the gradient together compiled the d = 128
// bias kernel 248 SASS instructions longer. Near saturation tanh's absolute error is that of
// sigma and 1 - sigma, so dSiLU/dx is off by |x| times it, far below the 16-bit rounding of (N
// dX) before dQ, dK and dV. The bias tables' gradients sum fp32 (N dX) and are held to 1e-4 of
// their largest entry: an emulation of the tests' inputs put their error at 0.2-0.75 times
// tanh's relative error, and sm_90's tanh.approx.f32 measured at most 1.1e-5 relative on an
// H100 (every 7th float of 2^-20 <= |x| < 16 against float64).
__device__ __forceinline__ float silu_grad_of_half(float h, float th, float dpt) {  // th = tanh h
  const float dpt_half = 0.5f * dpt;
  const float g = fmaf(dpt_half, th, dpt_half);
  return fmaf(g, fmaf(-h, th, h), g);
}

// Adds `value` to table[key] (key < 0: nothing) for every lane of the warp (all 32 converged),
// with one shared atomic per distinct key instead of one per lane.
__device__ __forceinline__ void warp_add_by_key(float* table, int key, float value, int lane) {
  constexpr int kDone = 0x7fffffff;
  int pending = key < 0 ? kDone : key;
  for (;;) {
    const int smallest = __reduce_min_sync(0xffffffffu, pending);
    if (smallest == kDone) return;
    float part = pending == smallest ? value : 0.f;
#pragma unroll
    for (int offset = 16; offset > 0; offset /= 2) {
      part += __shfl_xor_sync(0xffffffffu, part, offset);
    }
    if (lane == 0) atomicAdd(&table[smallest], part);
    if (pending == smallest) pending = kDone;
  }
}

// The backward's bias stagers (warps 1-3 of the producer warpgroup): for every step, in the
// consumers' order, they fill the step's slot (the query rows' t_{i+1}, the position weights of
// the block's offsets, the threshold-table flags per warpgroup) and each arrives on the stage's
// full barrier beside the producer's loads, so that the consumers find the bias staged with Q
// and dO, without global reads of their own. The step's query tile is row_tile(it); a stage
// comes back when every consumer thread arrived on its empty barrier (each read the slot).
template <typename Tiles, typename RowTile>
__device__ __forceinline__ void stage_backward_bias(const HstuParams& p, int64_t begin, int len,
                                                    int col0, int m_count, RowTile row_tile,
                                                    uint64_t* qdo_full, uint64_t* qdo_empty,
                                                    uint8_t* slots) {
  // (lean on registers: the producer warpgroup keeps 24 per thread)
  constexpr int kBM = Tiles::kBlockM;
  constexpr int kStages = Tiles::kStages;
  constexpr bool kSplitD = Tiles::kSplitD;
  constexpr int kStagers = Tiles::kBiasStagers;
  const int stager = static_cast<int>(threadIdx.x) - 32;
  const int last = len - 1;
  const int64_t* ts = p.bias.timestamps == nullptr ? nullptr : p.bias.timestamps + begin;
  const int64_t ts_ref = ts == nullptr ? 0 : ts[col0];
  // Each stager issues all of its step's global reads before it uses any: one read latency per
  // step, where its reads in turn (the row's times, a warpgroup's key check, two position
  // weights) took four, and the stagers have about one step to fill a slot. Stagers 0..kBM-1
  // take the times of their query row, kBM and kBM + 1 the check of warpgroup 0 and 1's key rows
  // (with kSplitD both warpgroups' keys are the block's first 64), all of them the weights.
  static_assert(kBM + 2 <= kStagers, "a stager per query row and two for the key rows");
  constexpr int kWindow = Tiles::kPosWindow - 1;
  constexpr int kWeightsPerStager = (kWindow + kStagers - 1) / kStagers;
  const int checker = stager - kBM;
  const int key_last = imin(col0 + (kSplitD ? 0 : checker * 64) + 63, last);
#pragma unroll 1
  for (int it = 0; it < m_count; ++it) {
    const int s = it % kStages;
    if (it >= kStages) barrier_wait(&qdo_empty[s], ((it / kStages) & 1) ^ 1);
    const typename Tiles::BiasSlotOf slot(slots, s);
    const int row0 = row_tile(it) * kBM;
    // Offsets j - i from the block's first key and the step's last query on (read here, stored
    // below: BiasSlot::stage_pos_weights in two halves).
    const int first = col0 - row0 - (kBM - 1);
    float weight[kWeightsPerStager];
#pragma unroll
    for (int k = 0; k < kWeightsPerStager; ++k) {
      const int x = stager + k * kStagers;
      // (Halved: the consumers activate from half scores, below.)
      weight[k] = x < kWindow ? Tiles::BiasSlotOf::pos_weight_of(p, first + x, 0.5f) : 0.f;
    }
    // A row's t_{i+1} and t_i (its times ascend where t_i <= t_{i+1}; row r - 1 holds t_i); a
    // checker's first t_{i+1} of the step and its last key's time.
    int64_t t_next = 0;
    int64_t t_before = 0;
    const int i = imin(row0 + stager, last);
    const int first_next = imin(imin(row0, last) + 1, last);
    if (ts != nullptr && stager < kBM) {
      t_next = ts[imin(i + 1, last)];
      t_before = ts[i];
    } else if (ts != nullptr && checker < 2) {
      t_next = ts[first_next];
      t_before = ts[key_last];
    }
    int wide = 0;
    if (ts != nullptr && stager < kBM) {
      // (The order check before the stores: after them, ptxas issued t_i's read behind the
      // slot's stores, a second read latency.)
      bool far = stager > 0 && t_next < t_before;
      slot.ts[stager] = t_next;
      slot.ts_off[stager] = small_ts_offset(t_next, ts_ref, &far);
      if (far) wide = 3;
    } else if (ts != nullptr && checker < 2) {
      // With the key rows' times ascending, every visible gap t_{i+1} - t_j (j <= i) is >= 0
      // (a causal mask) when none of the key rows is among the step's queries and the step's
      // first time follows the last key's.
      if (row0 + 1 > key_last && t_next < t_before) wide = 1 << checker;
    }
#pragma unroll
    for (int k = 0; k < kWeightsPerStager; ++k) {
      const int x = stager + k * kStagers;
      if (x < kWindow) slot.pos_w[x] = weight[k];
    }
    slot.publish_flags(wide, stager);
    barrier_arrive(&qdo_full[s]);  // (every stager: an arrival releases its own writes only)
  }
}

// kBias: the relative bias is on (a separate instantiation keeps its registers, its bucket
// tables and its gradient reductions out of the plain kernel); warps 1-3 of the producer
// warpgroup stage it (stage_backward_bias).
// kTs: the time buckets may be on (then p.bias.ts_weight says whether they are); without it
// the kernel takes the position table only and holds none of the time-bucket code
// (BwdTiles::kPositionsOnlyKernel says which head dims have one).
// kBulkDq: dQ through shared memory and TMA tensor reductions into dq_map
// (HstuParams::sm90_bulk_dq; d = 64 and 128, and d = 256 without the bias).
template <typename T, int D, bool kBias, bool kTs, bool kBulkDq>
__global__ void __launch_bounds__(BwdTiles<D>::kThreads, 1)
    hstu_backward_sm90_kernel(const __grid_constant__ CUtensorMap q_map,
                              const __grid_constant__ CUtensorMap k_map,
                              const __grid_constant__ CUtensorMap v_map,
                              const __grid_constant__ CUtensorMap do_map,
                              const __grid_constant__ CUtensorMap dq_map,
                              const __grid_constant__ HstuParams p, int col_blocks) {
#if FREESCALE_SM90A
  using Tiles = BwdTiles<D>;
  static_assert(!kBulkDq || Tiles::kBulkWithBias || !kBias,
                "bulk dQ: d = 64 and 128, or d = 256 without the bias");
  constexpr bool kLean = Tiles::kLeanPlain && !kBias;  // no bias regions (smem_bytes)
  static_assert(!kTs || kBias, "the time buckets are part of the bias");
  constexpr int kBM = Tiles::kBlockM;
  constexpr int kBN = Tiles::kBlockN;
  constexpr int kStages = Tiles::kStages;
  constexpr int kChunks = Tiles::kChunks;

  extern __shared__ uint8_t smem_raw[];
  uint8_t* base = align_1024(smem_raw);
  T* k_s = reinterpret_cast<T*>(base);            // [chunk][kBN][64]
  T* v_s = k_s + kChunks * kBN * 64;              // [chunk][kBN][64]
  T* q_s = v_s + kChunks * kBN * 64;              // [stage][chunk][kBM][64]
  T* do_s = q_s + kStages * kChunks * kBM * 64;   // [stage][chunk][kBM][64]
  T* dx_s = do_s + kStages * kChunks * kBM * 64;  // [2][128][kBM], swizzled like TMA
  // The fp32 staging region: bulk dQ boxes and, with the bias, the diagonal tiles (a
  // [wg][64 * 72] region each; see the steps for who waits on whom).
  float* dq_s = reinterpret_cast<float*>(dx_s + 2 * Tiles::kDXBytes / 2);  // [wg][box][64][32]
  float* diag_s = dq_s;
  float* ts_grad_s = reinterpret_cast<float*>(reinterpret_cast<uint8_t*>(dq_s) +
                                              Tiles::stage_bytes(kBulkDq, kBias));  // [wg][buckets]
  uint64_t* kv_full = reinterpret_cast<uint64_t*>(
      kLean ? reinterpret_cast<uint8_t*>(dq_s) + Tiles::stage_bytes(kBulkDq, false)
            : reinterpret_cast<uint8_t*>(ts_grad_s + Tiles::kConsumers * Tiles::kTsGradFloats));
  uint64_t* qdo_full = kv_full + 1;
  uint64_t* qdo_empty = qdo_full + kStages;
  // (The tables after the barriers stay 16-byte aligned: the odd count of barriers is padded. The
  // padding is added to the pointer, not computed on an integer: a pointer rebuilt from an
  // integer loses its shared address space, and the bias loads below became generic loads.)
  uint8_t* barriers_end = reinterpret_cast<uint8_t*>(qdo_empty + kStages);
  auto* ts_cells =
      reinterpret_cast<uint32_t (*)[2]>(barriers_end + ((16 - (smem_u32(barriers_end) & 15)) & 15));
  int64_t* ts_thresholds = reinterpret_cast<int64_t*>(ts_cells + kTsCells);
  float* ts_weight_s = reinterpret_cast<float*>(ts_thresholds + kTsBucketThresholds);
  uint8_t* bias_slots = reinterpret_cast<uint8_t*>(ts_weight_s + Tiles::kMaxTsBuckets);

  // The block's (sequence, head, key block): work item blockIdx.x of tile_list.h's order.
  int batch, col_block, head;
  if (!work_item(p, blockIdx.x, col_blocks, /*rows=*/false, &batch, &col_block, &head)) return;
  const Sequence seq = load_sequence(p, batch);
  const int col0 = col_block * kBN;
  if (col0 >= seq.len || col_block >= col_blocks) return;  // uniform across the block
  // Query tiles of the contextual prefix first, then those from the key block on; step `it`
  // takes query tile row_tile(it) (the producer and the consumers walk the same list).
  int prefix_end, lo, hi;
  seq.mask.row_ranges(col0, imin(col0 + kBN, seq.len), &prefix_end, &lo, &hi);
  const int prefix_tiles = (prefix_end + kBM - 1) / kBM;
  const int main_first = imax(lo / kBM, prefix_tiles);
  const int m_count = prefix_tiles + imax((hi + kBM - 1) / kBM - main_first, 0);
  const auto row_tile = [&](int it) {
    return it < prefix_tiles ? it : main_first + it - prefix_tiles;
  };

  // With the bias, the stagers arrive on a stage's full barrier beside the producer, and every
  // consumer thread (not one per warp) on its empty one: it read the stage's bias slot.
  init_pipeline_barriers(kv_full, qdo_full, qdo_empty, kStages,
                         1 + (kBias ? Tiles::kBiasStagers : 0),
                         Tiles::kConsumers * (kBias ? 128 : 4));
  if (kTs && p.bias.ts_weight != nullptr) {
    stage_ts_tables(p.bias, ts_cells, ts_thresholds, ts_weight_s);
  }
  __syncthreads();

  const int warpgroup = threadIdx.x / 128;
  if (warpgroup == 0) {
    // (the plain kernels' split, also with the bias: in the forward's bias split, 232, the
    // d = 128 and 256 consumers' products serialize, and d = 64's ran no faster, 24.md)
    registers_decrease<FwdTiles<D>::kProducerRegisters>();
    if constexpr (kBias) {
      static_assert(Tiles::kBiasStagers == 128 - 32, "warps 1-3 of the producer warpgroup");
      if (threadIdx.x >= 32) {
        stage_backward_bias<Tiles>(p, seq.begin, seq.len, col0, m_count, row_tile, qdo_full,
                                   qdo_empty, bias_slots);
        return;
      }
    }
    if (threadIdx.x != 0) return;
    tma_prefetch_descriptor(&q_map);
    tma_prefetch_descriptor(&k_map);
    tma_prefetch_descriptor(&v_map);
    tma_prefetch_descriptor(&do_map);
    const int kv_row = static_cast<int>(seq.begin) + col0;
    barrier_arrive_expect_bytes(kv_full, 2 * Tiles::kKVBytes);
    for (int c = 0; c < kChunks; ++c) {
      tma_load_3d(k_s + c * kBN * 64, &k_map, kv_full, c * 64, head, kv_row);
      tma_load_3d(v_s + c * kBN * 64, &v_map, kv_full, c * 64, head, kv_row);
    }
    for (int it = 0; it < m_count; ++it) {
      const int s = it % kStages;
      if (it >= kStages) barrier_wait(&qdo_empty[s], ((it / kStages) & 1) ^ 1);
      barrier_arrive_expect_bytes(&qdo_full[s], 2 * Tiles::kQBytes);
      const int q_row = static_cast<int>(seq.begin) + row_tile(it) * kBM;
      for (int c = 0; c < kChunks; ++c) {
        const int tile = (s * kChunks + c) * kBM * 64;
        tma_load_3d(q_s + tile, &q_map, &qdo_full[s], c * 64, head, q_row);
        tma_load_3d(do_s + tile, &do_map, &qdo_full[s], c * 64, head, q_row);
      }
    }
    return;
  }

  registers_increase<FwdTiles<D>::kConsumerRegisters>();
  // kSplitS (d = 256 without the bias): the warpgroups split the step's S^T and dP^T by query
  // columns, kSN = 32 each, where with the bias both compute all 64 (the bias's diagonal sums and
  // time-bucket runs read a warpgroup's 64 x 64 tile). Both write their halves of (N P)^T and
  // (N dX)^T to shared memory, and dV and dK take them from there: products over 64 of d for S^T
  // and dP^T that both warpgroups repeated (without the repeat and the dQ atomics the backward
  // ran 1.22x faster than without the atomics alone, docs/hstu_sm90/21.md call 2; with the
  // atomics the split alone ran 1.01x, with bulk dQ after it 1.35x, 22.md call 1).
  constexpr bool kSplitS = Tiles::kSplitD && !kBias;
  constexpr int kSN = kSplitS ? kBM / 2 : kBM;  // query columns of this warpgroup's S^T
  using MmaS = Wgmma<T, kSN>;                   // S^T, dP^T: 64 key rows x kSN query columns
  using MmaD = Wgmma<T, Tiles::kOutDim>;        // dV, dK, dQ: 64 rows x this warpgroup's columns
  constexpr int kOut = Tiles::kOutDim;
  const int wg = warpgroup - 1;
  const int warp = (threadIdx.x / 32) % 4;
  const int lane = threadIdx.x % 32;
  const int g = lane / 4;
  const int t = lane % 4;
  // This warpgroup's key rows in the block (its S^T rows) and its columns of dV, dK, dQ.
  const int key_base = Tiles::kSplitD ? 0 : wg * 64;
  const int col_base = Tiles::kSplitD ? wg * kOut : 0;
  // With kSplitD both warpgroups compute the same S^T, so one of them reduces the bias grads.
  const bool bias_owner = !Tiles::kSplitD || wg == 0;
  const int key_local = key_base + warp * 16 + g;  // key rows of accumulator elements 0,1 / +8
  // Its rows in the (N dX)^T buffer (kSplitS: one buffer of 64 key rows that both warpgroups
  // write, each its kSN columns, then (N P)^T's beside it) and its first query column.
  const int dx_row = (kSplitS ? 0 : wg * 64) + warp * 16 + g;
  const int q_base = kSplitS ? wg * kSN : 0;
  const int j0 = col0 + key_local;
  const int j1 = j0 + 8;
  const float inv_norm = 1.f / static_cast<float>(p.max_seq_len);

  float dv[kOut / 2];
  float dk[kOut / 2];
#pragma unroll
  for (int e = 0; e < kOut / 2; ++e) dv[e] = dk[e] = 0.f;

  barrier_wait(kv_full, 0);
  const uint32_t k_addr = smem_u32(k_s) + key_base * 128;  // this warpgroup's 64 key rows
  const uint32_t v_addr = smem_u32(v_s) + key_base * 128;
  const uint32_t dx_addr = smem_u32(dx_s) + wg * 64 * 128;
  const uint32_t out_chunk = col_base / 64;  // first 64-column chunk of its dV, dK columns
  // Its dQ product: A = (N dX)^T of the keys it contracts over, B = K's rows of those keys in its
  // dQ columns (a 64-column chunk with kSplitDq, all of the block's keys with kDqTurns).
  using MmaDq = Wgmma<T, Tiles::kDqDim>;
  const int dq_col_base = Tiles::kSplitDq ? wg * Tiles::kDqDim : col_base;
  const uint32_t dq_a_addr = Tiles::kDqOverBlock || kSplitS ? smem_u32(dx_s) : dx_addr;
  const uint32_t dq_b_addr = Tiles::kSplitDq   ? smem_u32(k_s) + wg * kBN * 128
                             : Tiles::kDqTurns ? smem_u32(k_s)
                                               : k_addr + out_chunk * kBN * 128;
  uint8_t* dx_bytes = reinterpret_cast<uint8_t*>(dx_s);

  // Bias gradients of this warpgroup, zeroed before the first step's accumulation.
  const int wg_thread = threadIdx.x % 128;
  const bool has_pos = kBias && p.bias.pos_weight != nullptr;  // the bias is on
  const bool has_ts = kTs && p.bias.ts_weight != nullptr;
  const bool add_pos = has_pos && bias_owner;  // and this warpgroup reduces its gradients
  const bool add_ts = has_ts && bias_owner;
  float* diag = diag_s + wg * Tiles::kStagingFloats;
  float* ts_grad = ts_grad_s + wg * Tiles::kTsGradFloats;
  // t_j of key rows j0 and j1 (time bias), and as int32 offsets from the block's reference
  // time ts_ref (exact while within kSmallTsSpan of it; ts_wide says one is not).
  int64_t key_ts[2] = {0, 0};
  int32_t key_off[2] = {0, 0};
  int64_t ts_ref = 0;
  bool ts_wide = false;
  // Whether the warpgroup's key rows' times ascend (one of the conditions of the two-bucket
  // steps below).
  bool keys_unsorted = false;
  if (has_ts) {
    ts_ref = p.bias.timestamps[seq.begin + col0];
#pragma unroll
    for (int r = 0; r < 2; ++r) {
      const int j = r == 0 ? j0 : j1;
      if (j >= seq.len) continue;
      key_ts[r] = p.bias.timestamps[seq.begin + j];
      key_off[r] = small_ts_offset(key_ts[r], ts_ref, &ts_wide);
      if (j > col0 + key_base) keys_unsorted |= key_ts[r] < p.bias.timestamps[seq.begin + j - 1];
    }
  }
  // Relative-position sums (see the diagonal sums in the steps): lane x = wg_thread sums slot
  // x of the step's tile, offset j - i = pos_base + x, over the kDiagRows rows: row 8 w + g of
  // warp w holds column C = 8 m + 2 t + e, slot x = 16 w + g + 71 - C (71: the last written
  // column; a warp's 16 key rows shift its diagonals by 16).
  static_assert(kBM == 64, "a warp's 16 x 64 accumulator rows as one row of 9 float2");
  // The zeros around the written columns (kDiagRowFloats), 16-byte aligned.
  const auto zero_diag_pads = [&] {
    constexpr int kRowPadVectors = (Tiles::kDiagRowFloats - Tiles::kDiagWrittenFloats) / 4;
    constexpr int kRowVectors = Tiles::kDiagRows * kRowPadVectors;
    for (int v = wg_thread; v < kRowVectors + Tiles::kDiagPadFloats / 4; v += 128) {
      const int at = v < kRowVectors
                         ? Tiles::kDiagPadFloats + (v / kRowPadVectors) * Tiles::kDiagRowFloats +
                               Tiles::kDiagWrittenFloats + 4 * (v % kRowPadVectors)
                         : 4 * (v - kRowVectors);
      *reinterpret_cast<float4*>(diag + at) = make_float4(0.f, 0.f, 0.f, 0.f);
    }
  };
  // This block's copy of the gradient tables (HstuBiasParams::grad_copies).
  const int grad_copy = static_cast<int>(blockIdx.x % static_cast<unsigned>(p.bias.grad_copies));
  float* grad_ts_copy =
      add_ts ? p.bias.grad_ts +
                   grad_copy * static_cast<int64_t>(p.bias.num_ts_buckets + 1) * kTsGradLanes
             : nullptr;
  const auto add_pos_grad = [&](float sum, int delta) {
    if (sum != 0.f) {
      const int64_t at = grad_copy * (2 * static_cast<int64_t>(p.max_seq_len) - 1) +
                         hstu_pos_index(0, delta, p.max_seq_len);
      atomicAdd(&p.bias.grad_pos[at], sum * inv_norm);
    }
  };
  // The open run of time buckets of key rows j0, j1: it carries from step to step (the
  // queries go on ascending), so a run is flushed when its bucket changes, not per step. A
  // flush is a global reduction into the block's copy of the table (RED, which the thread
  // issues and does not wait for; ptxas branches around it), onto float `lane % kTsGradLanes` of
  // its bucket: ~22 lanes of a warp flush one bucket at once away from the diagonal, and spread
  // over the 8 floats of one sector they ran the bias backward 1.03-1.09x at n = 1024 / 2048 and
  // jagged (0.99x at n = 8192) against all on one float; over 32 floats, 1.02-1.06x (27.md in
  // docs/hstu_sm90). It was a float shared atomic, a compare-and-swap loop, which next to the
  // diagonal, where runs are short, the warp took at almost every pair.
  int run_bucket[2] = {-1, -1};
  float run_sum[2] = {0.f, 0.f};
  // Selects and a predicated reduction, not a branch around the run's update: with the update
  // under the branch, ptxas laid the per-pair path out one pair after the other (each pair's
  // three dependent shared loads, its tanh and its flush test in turn); with selects it still
  // branches around the reduction alone, but interleaves the pairs' loads and math across it.
  // The flushes cost 9% of the bias backward at n = 2048, 17.5% at n = 1024 (taken out, wrong
  // gradients: docs/hstu_sm90/25.md). Fewer reductions did not pay: one per distinct bucket of
  // the flushing lanes (a shuffle sum per bucket) ran 0.96-0.98x on the two-bucket path and
  // 0.59-0.79x on the per-pair path too; a third bucket per row (fewer per-pair rows) 0.96-0.99x.
  // The branch is not the cost but what keeps it down: a reduction from every lane at every
  // pair (0 where the run goes on), no branch, ran 0.59-0.88x (docs/hstu_sm90/26.md).
  const auto add_to_run = [&](int r, int bucket, float sum) {
    const bool change = bucket != run_bucket[r];
    red_add_if(change && run_bucket[r] >= 0,
               grad_ts_copy + imax(run_bucket[r], 0) * kTsGradLanes + lane % kTsGradLanes,
               run_sum[r] * inv_norm);
    run_sum[r] = change ? sum : run_sum[r] + sum;
    run_bucket[r] = bucket;
  };
  // Whether the warpgroup's steps take the threshold table because of its key rows (one lies
  // far from ts_ref, or their times do not ascend); the stagers add the queries' reasons.
  bool keys_by_thresholds = false;
  if (has_pos || has_ts) {
    for (int x = wg_thread; kTs && x < Tiles::kTsGradFloats; x += 128) ts_grad[x] = 0.f;
    keys_by_thresholds = named_barrier_sync_any<128>(1 + wg, ts_wide || keys_unsorted);
  }

  for (int it = 0; it < m_count; ++it) {
    const int s = it % kStages;
    const int row0 = row_tile(it) * kBM;
    barrier_wait(&qdo_full[s], (it / kStages) & 1);
    const uint32_t q_addr = smem_u32(q_s + s * kChunks * kBM * 64);
    const uint32_t do_addr = smem_u32(do_s + s * kChunks * kBM * 64);

    // S^T = K Q^T and dP^T = V dO^T over D, both operands K-major in shared memory: A = this
    // warpgroup's key rows of K or V, B = the step's Q or dO, 16 of D per step.
    float st[kSN / 2];
    float dpt[kSN / 2];
    const auto transposed_product = [&](float (&acc)[kSN / 2], uint32_t a_addr, uint32_t b_addr) {
#pragma unroll
      for (int kk = 0; kk < D / 16; ++kk) {
        const uint32_t a_off = (kk / 4) * kBN * 128 + (kk % 4) * 32;
        const uint32_t b_off = (kk / 4) * kBM * 128 + (kk % 4) * 32 + q_base * 128;
        MmaS::ss(acc, swizzle128_descriptor(a_addr + a_off, 16, 1024),
                 swizzle128_descriptor(b_addr + b_off, 16, 1024), kk > 0 ? 1 : 0);
      }
    };
    wgmma_fence();
    transposed_product(st, k_addr, q_addr);
    transposed_product(dpt, v_addr, do_addr);
    wgmma_commit();
    wgmma_wait<0>();
    fence_registers(st);
    fence_registers(dpt);

    // (N P)^T and (N dX)^T on the visible pairs, 0 elsewhere. Element e: key row j0 / j1,
    // query column row0 + 8 (e / 4) + 2 t + (e & 1). With the bias, N dX also goes to the
    // time-bucket table (and, below, to the warpgroup's diagonal tile for relative positions).
    // Time buckets go to the table in runs: along a key row the queries ascend, so with sorted
    // timestamps the bucket of t_{i+1} - t_j never decreases and a thread sums a run of equal
    // buckets before one global reduction (lanes of a warp mostly share a bucket: an atomic
    // per pair would serialize on it).
    const bool full = seq.mask.tile_fully_visible(row0 + q_base, kSN, col0 + key_base, 64);
    const int pos_base = col0 + key_base - row0 - (kBM - 1);
    // The step's bias, staged by the stagers (the stage's full barrier above released it): t_{i+1}
    // of its queries, also as int32 offsets from ts_ref, and the position weights of offsets
    // j - i = pos_base + x (this warpgroup's window of the slot's). The step buckets by the
    // threshold table where some gap is 2^31 or more or its times do not ascend; else from the
    // cell table, or two buckets per key row.
    const typename Tiles::BiasSlotOf slot(bias_slots, s);
    const int64_t* row_ts = slot.ts;
    const int32_t* row_off = slot.ts_off;
    const float* pos_w = slot.pos_w + key_base;
    bool by_thresholds = false;
    if (has_pos || has_ts) {
      by_thresholds = keys_by_thresholds || slot.warpgroup_by_thresholds(wg);
      if (add_pos) {
        // The diagonal tile is rewritten below: every warp of the warpgroup summed the last
        // step's first (the barrier). With bulk dQ it is also this warpgroup's dQ staging
        // boxes: the last step's bulk reductions must have read them, and its zeros are
        // rewritten. (The zeros are written in the first step, not before the loop, where the
        // registers they took spilled; the barrier before the sums orders them.)
        if constexpr (kBulkDq) {
          if (lane == 0) bulk_wait_read();  // (lane 0 issues the warp's reductions)
        }
        named_barrier_sync<128>(1 + wg);
        if (kBulkDq || it == 0) zero_diag_pads();
      }
    }
    // The visible pairs as one bit each, found first: held as 32 booleans across the math
    // below, they spilled (ptxas keeps few predicates).
    static_assert(kBM / 2 == 32, "one bit per accumulator element");
    uint32_t visible_bits = full ? ~0u : 0u;
    if (!full && seq.mask.plain_causal()) {  // (a compare per pair, not the general mask)
#pragma unroll
      for (int e = 0; e < kSN / 2; ++e) {
        const int j = (e & 2) ? j1 : j0;
        const int i = row0 + q_base + (e / 4) * 8 + 2 * t + (e & 1);
        if (i < seq.len && j <= i) visible_bits |= 1u << e;
      }
    } else if (!full) {
#pragma unroll
      for (int e = 0; e < kSN / 2; ++e) {
        const int j = (e & 2) ? j1 : j0;
        const int i = row0 + q_base + (e / 4) * 8 + 2 * t + (e & 1);
        if (i < seq.len && j < seq.len && seq.mask.valid(i, j)) visible_bits |= 1u << e;
      }
    }
    // Element e's half score h = x / 2 (bias included) to (N P)^T and (N dX)^T: the scores are
    // summed halved (alpha / 2, the position weights staged halved, the time weights halved as
    // they are read), so no multiply halves them per pair.
    const float alpha_half = 0.5f * p.alpha;
    const auto activate = [&](int e, float h) {
      const bool visible = (visible_bits >> e) & 1u;
      const float th = tanh_approx(h);
      st[e] = visible ? silu_of_half(h, th) : 0.f;
      dpt[e] = visible ? silu_grad_of_half(h, th, dpt[e]) : 0.f;
    };
    // Key row r's elements (e & 2 == 2 r): ts_bucket(e, i) gives the time bucket of element e
    // (query i).
    const auto activate_row = [&](int r, auto ts_bucket) {
      const int j = r ? j1 : j0;
#pragma unroll
      for (int e = 2 * r; e < kBM / 2; e += (e & 1) ? 3 : 1) {
        const int i = row0 + (e / 4) * 8 + 2 * t + (e & 1);
        float h = alpha_half * st[e];
        int bucket = 0;
        if (has_pos || has_ts) {
          h += pos_w[j - i - pos_base];
          if (has_ts) {
            bucket = ts_bucket(e, i);
            h = fmaf(0.5f, ts_weight_s[bucket], h);
          }
        }
        activate(e, h);
        // (A masked pair, whose dpt is 0, continues the open run.)
        if (add_ts) add_to_run(r, ((visible_bits >> e) & 1u) ? bucket : run_bucket[r], dpt[e]);
      }
    };
    // Two buckets per key row (ts_two_buckets): with ascending times and a causal mask, a key
    // row's gaps grow along its queries, so a thread's 16 queries of the row (row0 + 2t ..
    // row0 + 57 + 2t) lie between its first query's gap and its last's. A compare per pair
    // instead of the cell lookup, and two sums per row instead of the run test. A warp takes
    // it for a row where every lane's row spans at most two buckets (away from the diagonal,
    // where the gaps are long), else the cell table. Where no lane's row steps (far from the
    // diagonal, where buckets are wide), not even the compare: one weight, one sum.
    const auto activate_row_two_buckets = [&](int r, const TsTwoBuckets& row) {
      const float w_lo = 0.5f * ts_weight_s[row.lower];  // (halved: activate's half scores)
      const float w_hi = 0.5f * ts_weight_s[row.upper];
      const int j = r ? j1 : j0;
      // The row's sum and its upper bucket's (masked pairs: dpt is 0); the lower bucket's is
      // their difference: two adds per pair (one predicated) where two sums took a select and
      // three.
      float row_sum = 0.f;
      float hi_sum = 0.f;
      const auto activate_with = [&](auto in_upper) {
#pragma unroll
        for (int e = 2 * r; e < kBM / 2; e += (e & 1) ? 3 : 1) {
          const int i = row0 + (e / 4) * 8 + 2 * t + (e & 1);
          const bool upper = in_upper(i);
          activate(e, fmaf(alpha_half, st[e], pos_w[j - i - pos_base]) + (upper ? w_hi : w_lo));
          row_sum += dpt[e];
          if (upper) hi_sum += dpt[e];
        }
      };
      if (__all_sync(0xffffffffu, row.upper == row.lower)) {
        activate_with([](int) { return false; });
      } else {
        activate_with([&](int i) { return row_off[i - row0] - key_off[r] >= row.split; });
      }
      if (add_ts) {
        add_to_run(r, row.lower, row_sum - hi_sum);
        if (row.upper != row.lower) add_to_run(r, row.upper, hi_sum);
      }
    };
    // The plain kernel's 32 elements in one pass, from h = alpha s / 2 (silu_grad_of_half): a
    // fully visible tile (most of them at long lengths) skips the mask's per-element bit test
    // and selects. About 8 SASS instructions per element on such a tile where the exponential,
    // the reciprocal and the mask took about 20 with two MUFU operations (d = 128; by the peak
    // rates, 16 MUFU results and 4096 dense 16-bit FLOPs per clock and SM, two per element are
    // 40% of a step's tensor-core time, and both warpgroups activate at once). The masked pass
    // is `activate`'s math, written again: calling `activate` from it compiled the plain
    // kernels at d = 128 with a 4-byte spill they do not have (docs/hstu_sm90/30.md).
    const auto activate_plain = [&](auto masked) {
#pragma unroll
      for (int e = 0; e < kSN / 2; ++e) {
        const float h = alpha_half * st[e];
        const float th = tanh_approx(h);
        const float silu = silu_of_half(h, th);
        const float grad = silu_grad_of_half(h, th, dpt[e]);
        if constexpr (decltype(masked)::value) {
          const bool visible = (visible_bits >> e) & 1u;
          st[e] = visible ? silu : 0.f;
          dpt[e] = visible ? grad : 0.f;
        } else {
          st[e] = silu;
          dpt[e] = grad;
        }
      }
    };
    if constexpr (!kBias) {
      if (full) {
        activate_plain(std::false_type{});
      } else {
        activate_plain(std::true_type{});
      }
    }
#pragma unroll
    for (int r = 0; r < 2 && kBias; ++r) {
      if (!has_ts) {
        activate_row(r, [](int, int) { return 0; });
      } else if (!by_thresholds) {  // small gaps, ascending times: the cell table
        const TsTwoBuckets row =
            ts_two_buckets(row_off[2 * t] - key_off[r], row_off[kBM - 7 + 2 * t] - key_off[r],
                           ts_cells, ts_thresholds);
        if (__all_sync(0xffffffffu, seq.mask.plain_causal() && row.two)) {
          activate_row_two_buckets(r, row);
        } else {
          activate_row(r, [&](int, int i) {
            const int gap = row_off[i - row0] - key_off[r];
            return ts_bucket_of_small_gap(static_cast<uint32_t>(gap < 0 ? -gap : gap), ts_cells);
          });
        }
      } else {
        activate_row(r, [&](int, int i) {
          const int64_t delta = row_ts[i - row0] - key_ts[r];
          return hstu_ts_bucket_from_thresholds(delta, p.bias.num_ts_buckets, ts_thresholds);
        });
      }
    }
    // Relative positions: the step's (N dX)^T to the warpgroup's fp32 tile, summed along its
    // diagonals after the barrier below (no shared atomics: a float one is a compare-and-swap
    // loop, and one per pair couple was most of the bias's backward). Element (key row
    // 16 warp + g + 8 half, query 8 n8 + 2 t + e) is dpt[4 n8 + 2 half + e]: rows g + 8, n8 + 1
    // and g, n8 share a diagonal, so column 8 m + 2 t + e of the thread's row is their sum.
    if (add_pos) {
      float* row = diag + Tiles::kDiagPadFloats + (warp * 8 + g) * Tiles::kDiagRowFloats + 2 * t;
      *reinterpret_cast<float2*>(row) = make_float2(dpt[2], dpt[3]);
#pragma unroll
      for (int m = 1; m < kBM / 8; ++m) {
        *reinterpret_cast<float2*>(row + 8 * m) =
            make_float2(dpt[4 * (m - 1)] + dpt[4 * m + 2], dpt[4 * (m - 1) + 1] + dpt[4 * m + 3]);
      }
      *reinterpret_cast<float2*>(row + kBM) = make_float2(dpt[kBM / 2 - 4], dpt[kBM / 2 - 3]);
    }
    uint32_t pa[kSN / 16][4];
    uint32_t xa[kSN / 16][4];
#pragma unroll
    for (int kk = 0; kk < kSN / 16; ++kk) {
#pragma unroll
      for (int r = 0; r < 4; ++r) {
        pa[kk][r] = mma::pack<T>(st[8 * kk + 2 * r], st[8 * kk + 2 * r + 1]);
        xa[kk][r] = mma::pack<T>(dpt[8 * kk + 2 * r], dpt[8 * kk + 2 * r + 1]);
      }
    }

    // (N dX)^T to shared memory for dQ, before the MMAs below start reading xa (an A fragment
    // must not be touched until its MMA retires). Register r of slice kk holds key row g (+8
    // for odd r) and query columns 16 kk + 8 (r / 2) + 2 t, +1: 16-byte chunk 2 kk + r / 2 of
    // its 128-byte row, XOR-swizzled by the row as TMA's 128-byte mode does. Steps alternate
    // between two buffers: a buffer is rewritten two steps later, after every warp of the
    // warpgroup has passed the barrier of the step between, i.e. retired its dQ MMA that read it
    // (with a 256-thread barrier, kDqOverBlock or kSplitS, the other warpgroup's products that read
    // it too: each warpgroup waits for all of its step's products before the next step's barrier).
    // With kSplitS the warpgroup's kSN columns start at chunk q_base / 8, and (N P)^T goes to
    // the 64 rows after (N dX)^T's.
    uint8_t* dx_step = dx_bytes + (it & 1) * Tiles::kDXBytes;
    uint8_t* p_step = dx_step + 64 * 128;
#pragma unroll
    for (int kk = 0; kk < kSN / 16; ++kk) {
#pragma unroll
      for (int r = 0; r < 4; ++r) {
        const int row = dx_row + (r & 1) * 8;
        const int chunk = (q_base / 8 + 2 * kk + r / 2) ^ (row & 7);
        *reinterpret_cast<uint32_t*>(dx_step + row * 128 + chunk * 16 + 4 * t) = xa[kk][r];
        if constexpr (kSplitS) {
          *reinterpret_cast<uint32_t*>(p_step + row * 128 + chunk * 16 + 4 * t) = pa[kk][r];
        }
      }
    }
    fence_shared_to_async();

    // N dV += (N P)^T dO and dK / alpha += (N dX)^T Q: B operands MN-major, 16 query rows
    // (2048 bytes) per step. At d <= 128 dK's product is issued after dQ's, so that it runs
    // while dQ goes out (FlashAttention-3's backward orders them so; on an H200 1.02-1.09x the
    // plain backward, docs/hstu_sm90/14.md; on an H100 1.06-1.13x the bias backward,
    // docs/hstu_sm90/19.md, whose consumers spilled with this order until the time-bucket runs
    // went to global reductions, and since then spill no more than without it); d = 256's dQ
    // accumulators leave no registers for the overlap (ptxas serialized its wgmma, C7512).
    constexpr bool kDqBeforeDk = !Tiles::kSplitD;
    const auto issue_dk = [&] {
#pragma unroll
      for (int kk = 0; kk < kBM / 16; ++kk) {
        MmaD::rs_mn(
            dk, xa[kk],
            swizzle128_descriptor(q_addr + out_chunk * kBM * 128 + kk * 2048, kBM * 128, 1024), 1);
      }
    };
    // Q and dO of this stage are consumed (and, with the bias, each thread's reads of its
    // slot) once dV's and dK's products retired.
    const auto release_stage = [&] {
      fence_registers(dv);
      fence_registers(dk);
      if constexpr (!kSplitS) {  // (kSplitS: A operands from shared memory)
        keep_registers(pa);
        keep_registers(xa);
      }
      __syncwarp();
      if (kBias || lane == 0) barrier_arrive(&qdo_empty[s]);
    };
    if constexpr (kSplitS) {
      // Both warpgroups' columns of (N P)^T and (N dX)^T are written; dV and dK take all 64
      // queries of them as A operands (K-major, rows of 64 queries).
      named_barrier_sync<256>(3);
      wgmma_fence();
#pragma unroll
      for (int kk = 0; kk < kBM / 16; ++kk) {
        const uint32_t b_off = out_chunk * kBM * 128 + kk * 2048;
        MmaD::ss_bmn(dv, swizzle128_descriptor(smem_u32(p_step) + kk * 32, 16, 1024),
                     swizzle128_descriptor(do_addr + b_off, kBM * 128, 1024), 1);
        MmaD::ss_bmn(dk, swizzle128_descriptor(smem_u32(dx_step) + kk * 32, 16, 1024),
                     swizzle128_descriptor(q_addr + b_off, kBM * 128, 1024), 1);
      }
      wgmma_commit();
    } else {
      wgmma_fence();
#pragma unroll
      for (int kk = 0; kk < kBM / 16; ++kk) {
        MmaD::rs_mn(
            dv, pa[kk],
            swizzle128_descriptor(do_addr + out_chunk * kBM * 128 + kk * 2048, kBM * 128, 1024), 1);
      }
      if constexpr (!kDqBeforeDk) issue_dk();
      wgmma_commit();
      // This warpgroup's rows of (N dX)^T are all written (and with kDqOverBlock the other's,
      // which its dQ product reads too).
      if constexpr (Tiles::kDqOverBlock) {
        named_barrier_sync<256>(3);
      } else {
        named_barrier_sync<128>(1 + wg);
      }
    }

    // The step's diagonal tile is complete: lane x sums slot x (pairs j - i = pos_base + x) of
    // every row, zeros where the diagonal misses it, and adds it to the table with one atomic.
    if (add_pos) {
      const float* slot_line =
          diag + Tiles::kDiagPadFloats + (Tiles::kDiagWrittenFloats - 1) - wg_thread;
      float warp_sums[4] = {0.f, 0.f, 0.f, 0.f};  // (four chains of adds, not one of 32)
#pragma unroll
      for (int g8 = 0; g8 < 8; ++g8) {
#pragma unroll
        for (int w = 0; w < 4; ++w) {
          warp_sums[w] +=
              slot_line[w * (8 * Tiles::kDiagRowFloats + 16) + g8 * (Tiles::kDiagRowFloats + 1)];
        }
      }
      add_pos_grad((warp_sums[0] + warp_sums[1]) + (warp_sums[2] + warp_sums[3]),
                   pos_base + wg_thread);
    }

    if constexpr (!kDqBeforeDk) {
      wgmma_wait<0>();
      release_stage();
    }

    // With kDqTurns the other warpgroup takes this step's dQ: this one issues its dK product
    // and goes on to its next step.
    const bool takes_dq = !Tiles::kDqTurns || (it & 1) == wg;
    if (takes_dq) {
      // dQ / alpha (partial over this block's keys, or this warpgroup's 64 of them) = (N dX) K:
      // A = (N dX)^T read MN-major, B = K read MN-major, 16 key rows per step.
      float dq[Tiles::kDqDim / 2];
      wgmma_fence();
#pragma unroll
      for (int kk = 0; kk < Tiles::kDqKeys / 16; ++kk) {
        MmaDq::ss_mn(dq,
                     swizzle128_descriptor(dq_a_addr + (it & 1) * Tiles::kDXBytes + kk * 2048,
                                           64 * 128, 1024),
                     swizzle128_descriptor(dq_b_addr + kk * 2048, kBN * 128, 1024), kk > 0 ? 1 : 0);
      }
      wgmma_commit();
      if constexpr (kDqBeforeDk) {
        wgmma_wait<1>();  // dV's group
        fence_registers(dv);
        keep_registers(pa);
        wgmma_fence();
        issue_dk();
        wgmma_commit();
        wgmma_wait<1>();  // dQ's group; dK's runs on through the dQ reductions
      } else {
        wgmma_wait<0>();
      }
      fence_registers(dq);

      // dQ rows: query row0 + 16 warp + g (+8), columns dq_col_base + 8 n8 + 2 t, +1.
      // With bulk dQ, a warp whose 16 rows all lie in the sequence writes them to its rows of
      // the staging boxes and lane 0 adds each box's rows to dQ with one tensor reduction (the
      // rows of a sequence's last tile past its end would add zeros to the next sequence's dQ:
      // that warp takes the atomics). Before rewriting its rows, lane 0 waits for the last
      // step's reductions to have read them.
      const bool dq_by_boxes = kBulkDq && row0 + warp * 16 + 15 < seq.len;
      if constexpr (kBulkDq) {
        if (lane == 0) bulk_wait_read();
        if constexpr (kBias) {  // the boxes are the diagonal tile: every warp's sums are done
          if (add_pos) named_barrier_sync<128>(1 + wg);
        }
        __syncwarp();
      }
      if (dq_by_boxes) {
        constexpr int kBoxFloats = Tiles::kDqBoxFloats;
        float* dq_rows = dq_s + wg * Tiles::kDqStageFloats + warp * 16 * kBoxFloats;
        // Element (row r, column c) of box c / 32 at row r, 16-byte chunk (c % 32) / 4 XOR r % 8
        // (the 128-byte swizzle; r % 8 = g). An 8-byte store goes out a half-warp at a time
        // (g < 4, g >= 4); were every lane's columns 8 n8 + 2 t, its 16 lanes' chunks (2 (n8 %
        // 4) + t / 2) ^ g would be 4, not 8, and each store took two passes (a 2-way conflict on
        // every dQ store, measured on d = 128 by Nsight Compute, docs/hstu_sm90/33.md). Lanes of
        // odd g store n8 ^ 2 where even lanes store n8 (same box), which spreads them over 8.
        const bool odd_row = (g & 1) != 0;
#pragma unroll
        for (int half = 0; half < 2; ++half) {
#pragma unroll
          for (int n8 = 0; n8 < Tiles::kDqDim / 8; ++n8) {
            const int box = n8 / 4;
            const int col8 = (n8 % 4) ^ (odd_row ? 2 : 0);  // this lane's n8 % 4
            const int chunk = (col8 * 2 + t / 2) ^ g;
            // Both indices are compile-time and the lane picks its value by a select: dq
            // indexed by a lane-dependent value would go to local memory.
            const int even = 4 * n8 + 2 * half, odd = 4 * (n8 ^ 2) + 2 * half;
            *reinterpret_cast<float2*>(dq_rows + box * 64 * kBoxFloats +
                                       (g + 8 * half) * kBoxFloats + chunk * 4 + 2 * (t % 2)) =
                odd_row ? make_float2(dq[odd], dq[odd + 1]) : make_float2(dq[even], dq[even + 1]);
          }
        }
        fence_shared_to_async();
        __syncwarp();
        if (lane == 0) {
          const int first_row = static_cast<int>(seq.begin) + row0 + warp * 16;
#pragma unroll
          for (int box = 0; box < Tiles::kDqDim / kBoxFloats; ++box) {
            tma_reduce_add_3d(&dq_map, dq_rows + box * 64 * kBoxFloats,
                              dq_col_base + box * kBoxFloats, head, first_row);
          }
          bulk_commit();
        }
      } else {
        // Four columns per atomic: lanes t and t ^ 1 hold columns 2 t, +1 of rows g and g + 8;
        // they swap a pair so that the even lane holds its row g's four and the odd lane row g +
        // 8's, and each adds them with one 16-byte reduction, half the float2 reductions' count
        // (without the atomics the d = 64 and d = 256 backward ran 1.44-1.51x,
        // docs/hstu_sm90/21.md).
        const bool upper = (t & 1) != 0;
        const int i = row0 + warp * 16 + g + (upper ? 8 : 0);
        float* row = p.dq_accum + ((seq.begin + i) * p.num_heads + head) * static_cast<int64_t>(D) +
                     dq_col_base + 2 * (t & ~1);
#pragma unroll
        for (int n8 = 0; n8 < Tiles::kDqDim / 8; ++n8) {
          const float* own = dq + 4 * n8;
          const float give0 = upper ? own[0] : own[2];
          const float give1 = upper ? own[1] : own[3];
          const float got0 = __shfl_xor_sync(0xffffffffu, give0, 1);
          const float got1 = __shfl_xor_sync(0xffffffffu, give1, 1);
          const float4 sum = upper ? make_float4(got0, got1, own[2], own[3])
                                   : make_float4(own[0], own[1], got0, got1);
          if (i < seq.len) atomicAdd(reinterpret_cast<float4*>(row + n8 * 8), sum);
        }
      }
    } else if constexpr (kDqBeforeDk) {
      wgmma_fence();
      issue_dk();
      wgmma_commit();
    }
    if constexpr (kDqBeforeDk) {
      wgmma_wait<0>();
      release_stage();
    }
  }

  // The block's shared memory must outlive the bulk reductions that read it.
  if (kBulkDq && lane == 0) bulk_wait_read();

  if (add_ts) {
    // The last run of each key row: every lane has one, mostly in the same bucket as its
    // neighbours, so the warp sums them per distinct bucket (one shared atomic each) instead of
    // 32 lanes contending on one address.
#pragma unroll
    for (int r = 0; r < 2; ++r) warp_add_by_key(ts_grad, run_bucket[r], run_sum[r], lane);
    named_barrier_sync<128>(1 + wg);  // every step's buckets are in
    for (int b = wg_thread; b <= p.bias.num_ts_buckets; b += 128) {
      if (ts_grad[b] != 0.f)
        atomicAdd(&grad_ts_copy[b * kTsGradLanes + lane % kTsGradLanes], ts_grad[b] * inv_norm);
    }
  }

  const float k_scale = p.alpha * inv_norm;
#pragma unroll
  for (int half = 0; half < 2; ++half) {
    const int j = half == 0 ? j0 : j1;
    if (j >= seq.len) continue;
    const int64_t offset =
        ((seq.begin + j) * p.num_heads + head) * static_cast<int64_t>(D) + col_base;
    T* dk_row = static_cast<T*>(p.grad_k) + offset;
    T* dv_row = static_cast<T*>(p.grad_v) + offset;
#pragma unroll
    for (int n8 = 0; n8 < kOut / 8; ++n8) {
      const int e = 4 * n8 + 2 * half;
      *reinterpret_cast<uint32_t*>(dk_row + n8 * 8 + 2 * t) =
          mma::pack<T>(dk[e] * k_scale, dk[e + 1] * k_scale);
      *reinterpret_cast<uint32_t*>(dv_row + n8 * 8 + 2 * t) =
          mma::pack<T>(dv[e] * inv_norm, dv[e + 1] * inv_norm);
    }
  }
#else
  __trap();  // built without sm_90a code; the host never launches this
#endif
}

struct Sm90BackwardMaps {
  CUtensorMap q, k, v, grad_out;
  CUtensorMap dq_accum;  // encoded for bulk dQ only
};

// The instantiation for p's bias: none, with time buckets, or positions only (its own kernel
// where BwdTiles::kPositionsOnlyKernel, else the time buckets' kernel, which checks ts_weight).
template <typename T, int D, bool kBulkDq>
auto backward_kernel_for(const HstuParams& p) {
  if (p.bias.ts_weight != nullptr) return hstu_backward_sm90_kernel<T, D, true, true, kBulkDq>;
  if (p.bias.pos_weight == nullptr) return hstu_backward_sm90_kernel<T, D, false, false, kBulkDq>;
  return hstu_backward_sm90_kernel<T, D, true, !BwdTiles<D>::kPositionsOnlyKernel, kBulkDq>;
}

template <typename T, int D>
cudaError_t launch_backward_sm90(const HstuParams& p, const Sm90BackwardMaps& maps,
                                 cudaStream_t stream) {
  using Tiles = BwdTiles<D>;
  const bool bias = p.bias.pos_weight != nullptr || p.bias.ts_weight != nullptr;
  const bool bulk_dq = Tiles::runs_bulk_dq(p);
  auto kernel = backward_kernel_for<T, D, false>(p);
  if constexpr (Tiles::kBulkWithBias) {
    if (bulk_dq) kernel = backward_kernel_for<T, D, true>(p);
  } else {
    if (bulk_dq) kernel = hstu_backward_sm90_kernel<T, D, false, false, true>;  // (no bias)
  }
  const int smem_bytes = Tiles::smem_bytes(bulk_dq, bias);
  cudaError_t err =
      cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, smem_bytes);
  if (err != cudaSuccess) return err;
  const int col_blocks = static_cast<int>(max_sequence_tiles(p, Tiles::kBlockN));
  const int64_t items = work_items(p, Tiles::kBlockN);
  if (items <= 0 || items >= kMaxWorkItems) return cudaErrorInvalidValue;
  kernel<<<static_cast<unsigned>(items), Tiles::kThreads, smem_bytes, stream>>>(
      maps.q, maps.k, maps.v, maps.grad_out, maps.dq_accum, p, col_blocks);
  return cudaGetLastError();
}

}  // namespace freescale::attention::hopper
