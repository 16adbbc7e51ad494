// HSTU attention forward for sm_90a: TMA loads, warpgroup MMAs, a producer warpgroup and two
// consumer warpgroups (DESIGN §4):
//   o_i = sum_j SiLU(alpha q_i.k_j + b_ij) / N * M_ij * v_j
//
// A block owns 128 query rows of one (sequence, head); each consumer warpgroup owns 64 of them.
// The producer streams K and V tiles of the columns the mask can reach into a ring of stages
// (TMA, 128-byte swizzle); consumers compute S = Q K^T with both operands in shared memory,
// turn S into N P in registers (no softmax, so no running max or rescale: P of a tile is
// final), and accumulate N O += (N P) V with N P as the register A operand. Tiles strictly below
// the diagonal of a plain causal mask skip the per-element mask. The grid is persistent, one
// block per SM walking the work items of tile_list.h.
//
// Instantiated per head dim in hstu_fwd_sm90_d*.cu; host entry points in hstu_sm90.h.
#pragma once

#include <cuda.h>
#include <cuda_runtime.h>

#include <type_traits>

#include "attention/hopper/sm90_primitives.cuh"
#include "attention/hopper/tile_list.h"
#include "attention/hopper/wgmma.cuh"
#include "attention/hstu_params.h"
#include "attention/hstu_sequence.cuh"
#include "attention/mma_m16n8k16.cuh"

namespace freescale::attention::hopper {

// The relative bias of one step, in shared memory, as the bias stagers (warps 1-3 of a producer
// warpgroup) write it for the consumers: kTimes timestamps (the forward's columns of the step,
// the backward's t_{i+1} of its query rows; int64, and int32 offsets from a reference time ts_ref),
// the position weights of kWindow - 1 consecutive offsets j - i, the smallest first (one spare
// keeps the slots aligned), and one word per stager warp whose bit w says that consumer warpgroup w
// buckets the step by the threshold table (a time lies kSmallTsSpan or more from ts_ref, or the
// times do not ascend).
template <int kTimes, int kWindow>
struct BiasSlot {
  static constexpr int kBytes = 12 * kTimes + 4 * kWindow + 16;
  static_assert(kBytes % 16 == 0, "slots keep their int64 timestamps aligned");
  int64_t* ts;
  int32_t* ts_off;
  float* pos_w;
  int* by_thresholds;  // [3]

  __device__ __forceinline__ BiasSlot(uint8_t* slots, int index) {
    ts = reinterpret_cast<int64_t*>(slots + index * kBytes);
    ts_off = reinterpret_cast<int32_t*>(ts + kTimes);
    pos_w = reinterpret_cast<float*>(ts_off + kTimes);
    by_thresholds = reinterpret_cast<int*>(pos_w + kWindow);
  }
  // Warpgroup `wg`'s bit of the stager warps' words.
  __device__ __forceinline__ bool warpgroup_by_thresholds(int wg) const {
    return ((by_thresholds[0] | by_thresholds[1] | by_thresholds[2]) >> wg) & 1;
  }

  // The position weight scale * w[j - i] a slot holds for offset `delta` = j - i: zero without
  // the position table, so the consumers add it per pair without a test.
  static __device__ __forceinline__ float pos_weight_of(const HstuParams& p, int delta,
                                                        float scale = 1.f) {
    return p.bias.pos_weight != nullptr
               ? scale * p.bias.pos_weight[hstu_pos_index(0, delta, p.max_seq_len)]
               : 0.f;
  }
  // The stagers' part of filling the slot that both passes share, stager `stager` of `stagers`:
  // the position weights scale * w[j - i] of the offsets j - i = first + x, ...
  __device__ __forceinline__ void stage_pos_weights(const HstuParams& p, int first, float scale,
                                                    int stager, int stagers) const {
#pragma unroll 1
    for (int x = stager; x < kWindow - 1; x += stagers) {
      pos_w[x] = pos_weight_of(p, first + x, scale);
    }
  }
  // ... and its stager warp's word of threshold flags (its lanes' `wide` bits together), after
  // which each stager arrives on the stage's K full barrier.
  __device__ __forceinline__ void publish_flags(int wide, int stager) const {
    wide = static_cast<int>(__reduce_or_sync(0xffffffffu, static_cast<unsigned>(wide)));
    if (stager % 32 == 0) by_thresholds[stager / 32] = wide;
  }
};

// Whether setmaxnreg's split, `producer` registers per thread of the producer warpgroup and
// `consumer` per thread of each of `consumers` warpgroups, fits one block's allocation of 168
// per thread (one block of 128 (1 + consumers) threads per SM).
constexpr bool register_split_fits(int producer, int consumer, int consumers) {
  return producer * 128 + consumer * 128 * consumers <= 168 * 128 * (1 + consumers);
}

template <int D>
struct FwdTiles {
  static constexpr int kBlockM = 128;  // 64 query rows per consumer warpgroup
  static constexpr int kBlockN = D <= 128 ? 128 : 64;
  static constexpr int kStages = D <= 64 ? 4 : 2;
  // Q buffers: with two, the next work item's Q loads while this one's last steps run.
  static constexpr int kQStages = D <= 128 ? 2 : 1;
  static constexpr int kChunks = D / 64;  // 128-byte swizzle blocks per row of 16-bit values
  static constexpr int kConsumers = 2;
  static constexpr int kThreads = 128 * (1 + kConsumers);
  // setmaxnreg moves registers inside the block's allocation, 168 per thread at one block of
  // 384 threads per SM: asking for more than it holds hangs the warps that ask. The consumers
  // need 240 (at 232 the plain d = 128 loops spill); the producer keeps 24.
  static constexpr int kProducerRegisters = 24;
  static constexpr int kConsumerRegisters = 240;
  // With the bias, warps 1-3 of the producer warpgroup are its stagers, which spilled 36-44
  // bytes in 24 registers (1.6M local requests at n = 2048, docs/hstu_sm90/23.md); the bias
  // kernel's consumers fit 232 without a spill, which leaves the producer 40 and no spill
  // (the bias forward 1.03x at n = 2048 on an H100, within 1% at n = 1024 and 8192, 24.md).
  static constexpr int kBiasProducerRegisters = 40;
  static constexpr int kBiasConsumerRegisters = 232;
  static_assert(register_split_fits(kProducerRegisters, kConsumerRegisters, kConsumers) &&
                    register_split_fits(kBiasProducerRegisters, kBiasConsumerRegisters, kConsumers),
                "register reallocation past the block's allocation");
  static constexpr int kQBytes = kBlockM * D * 2;
  static constexpr int kKVBytes = kBlockN * D * 2;  // one K (or V) tile
  // The pipeline's barriers (Q's full and empty, and K's and V's apart: K goes back to the
  // producer once Q K^T retired, V once P V did), then the work item of each Q buffer (16 bytes)
  // and its span for the bias stagers (StagedWork; the tables after them stay 16-byte aligned).
  static constexpr int kBarrierBytes = 8 * (2 * kQStages + 4 * kStages) + 16 + 32 * kQStages;
  static_assert(kQStages <= 4, "a work item slot per Q buffer in 16 bytes");
  static_assert(kBarrierBytes % 16 == 0, "the tables after them stay 16-byte aligned");
  // The time-bucket tables: the cells with their weights (TsWeightedCell, 16-byte loads), then
  // TsBucketTables' (the cells, 8-byte loads, then the thresholds).
  static constexpr int kThresholdBytes =
      sizeof(TsWeightedCell) * kTsCells + 8 * kTsCells + 8 * kTsBucketThresholds;
  // The relative bias, staged in shared memory: the time-bucket weights (once per block), and a
  // slot per K/V stage (BiasSlot) that the producer warpgroup's bias stagers fill for the
  // stage's step.
  static constexpr int kMaxTsBuckets = 1024;
  using BiasSlotOf = BiasSlot<kBlockN, kBlockM + kBlockN>;  // the block's rows, the step's columns
  static constexpr int kBiasSlotBytes = BiasSlotOf::kBytes;
  static constexpr int kBiasBytes = 4 * kMaxTsBuckets + kStages * kBiasSlotBytes;
  // Warps 1-3 of the producer warpgroup stage the bias (warp 0 issues the TMA loads).
  static constexpr int kBiasStagers = 96;
  // + 1024: the tiles are aligned to 1024 bytes inside the dynamic allocation.
  static constexpr int kSmemBytes = kQStages * kQBytes + 2 * kStages * kKVBytes + kBarrierBytes +
                                    kThresholdBytes + kBiasBytes + 1024;
  static_assert(D % 64 == 0, "the sm_90a path takes head dims 64, 128, 256");
  static_assert(kSmemBytes <= 227 * 1024, "shared memory of one sm_90 block");
};

// SiLU(x) = (x / 2) (1 + tanh(x / 2)), from h = x / 2: the kernel scales alpha and the bias
// weights by 1/2 instead of each score (exact: a power of two), so a pair's score and bias meet
// in one FMA. The 1/N normalizer is applied to O in fp32 instead of to P, which would push
// 16-bit P towards float16's subnormals for long sequences.
// (th = tanh h, where the caller keeps it: the backward's gradient takes it too)
__device__ __forceinline__ float silu_of_half(float h, float th) { return fmaf(h, th, h); }
__device__ __forceinline__ float silu_of_half(float h) { return silu_of_half(h, tanh_approx(h)); }

// The consumers' loop over column tiles without the bias (FREESCALE_HSTU_SM90_LOOP; by default
// forward_loop_for's pick):
//   kPlain    Q K^T, SiLU, P V one after the other;
//   kOverlap  the next step's Q K^T issued beside this step's P V, its SiLU while P V runs
//             (FlashAttention-3's intra-warpgroup overlap);
//   kPingPong kOverlap, and the two consumer warpgroups take turns to issue their products
//             (named barriers), so one's SiLU runs while the other's products keep the tensor
//             cores busy (FlashAttention-3's inter-warpgroup schedule).
enum class FwdLoop { kPlain, kOverlap, kPingPong };
static_assert(static_cast<int>(FwdLoop::kOverlap) == 1 && static_cast<int>(FwdLoop::kPingPong) == 2,
              "HstuParams::sm90_forward_loop numbers the loops so");

// What the bias stagers need of a work item, written by the producer beside the item's number:
// decoding the item themselves (a 64-bit division without the tile list) spilled their 24
// registers.
struct StagedWork {
  int64_t begin;
  int len;
  int row0;
  int n_first;
  int n_count;
  int unused[2];
};
static_assert(sizeof(StagedWork) == 32, "FwdTiles::kBarrierBytes counts 32 bytes per Q buffer");

// One work item of the forward: 128 query rows of one (sequence, head) and the column tiles
// its mask reaches. n_count = 0: the item lies past its sequence's end (full grid only).
struct FwdWork {
  Sequence seq;
  int head;
  int row0;
  int n_first;
  int n_count;
};

// Work item `item` (tile_list.h's order); false past the last one.
template <int kBM, int kBN>
__device__ __forceinline__ bool forward_work(const HstuParams& p, int64_t item, int row_blocks,
                                             FwdWork* w) {
  int batch, row_block;
  if (!work_item(p, item, row_blocks, /*rows=*/true, &batch, &row_block, &w->head)) return false;
  w->seq = load_sequence(p, batch);
  w->row0 = row_block * kBM;
  w->n_first = w->n_count = 0;
  if (w->row0 >= w->seq.len) return true;
  int lo, hi;
  w->seq.mask.column_range(w->row0, imin(w->row0 + kBM, w->seq.len), &lo, &hi);
  w->n_first = lo / kBN;
  w->n_count = (hi + kBN - 1) / kBN - w->n_first;
  return true;
}

// The work item a persistent block takes after `item`. With the tile list, the next unclaimed
// one (its header's claim counter, zeroed by build_tile_list): blocks that drew light items take
// more, and the items in flight stay a contiguous stretch of the list (their K/V shared in L2).
// A fixed stride gave block b the same mix of tile counts every round, up to 1.3x the mean work
// at n = 1024 (the slowest block sets the kernel's time). The full grid keeps the stride.
__device__ __forceinline__ int next_forward_item(const HstuParams& p, int item) {
  if (p.tile_list == nullptr) return item + static_cast<int>(gridDim.x);
  return static_cast<int>(gridDim.x) + atomicAdd(&p.tile_list[kTileListClaim], 1);
}

// The bias stagers (warps 1-3 of the producer warpgroup, thread `stager` of them): for every
// step of the block's work items, in the consumers' order, they fill the step's slot (BiasSlot)
// and each arrives on the stage's K barrier, so the consumers find the bias staged with K, with
// no global reads and no barrier of their own in the loop. They learn each work item from its Q
// buffer, as the consumers do, and take a slot back once the consumers gave the stage's V back
// (after the step's activation, the slot's last reader).
template <typename Tiles>
__device__ __forceinline__ void stage_forward_bias(const HstuParams& p, const int* item_s,
                                                   const StagedWork* work_s, uint64_t* q_full,
                                                   uint64_t* k_full, uint64_t* v_empty,
                                                   uint8_t* slots) {
  // (lean on registers: the producer warpgroup keeps 24 per thread, and ptxas still spills about
  // 40 bytes here; the consumers' code is spill-free)
  constexpr int kBM = Tiles::kBlockM;
  constexpr int kBN = Tiles::kBlockN;
  constexpr int kStages = Tiles::kStages;
  constexpr int kQStages = Tiles::kQStages;
  constexpr int kStagers = Tiles::kBiasStagers;
  const int stager = static_cast<int>(threadIdx.x) - 32;
  int kv_it = 0;
  for (int q_it = 0;; ++q_it) {
    const int qs = q_it % kQStages;
    barrier_wait(&q_full[qs], (q_it / kQStages) & 1);
    // (each stager that reads the slots arrives on the item's stages, which the consumers' q_empty
    // arrivals follow: the producer's next write of the slots waits for them)
    if (item_s[qs] < 0) break;
    const StagedWork w = work_s[qs];
    const int last = w.len - 1;
    const int row0 = w.row0;
    const int64_t* ts = p.bias.timestamps == nullptr ? nullptr : p.bias.timestamps + w.begin;
    const int64_t ts_ref = ts == nullptr ? 0 : ts[imin(row0 + 1, last)];
    // Per consumer warpgroup g (bit g): its rows' t_{i+1} lie far from ts_ref or do not ascend.
    int rows_wide = 0;
    if (ts != nullptr) {
#pragma unroll 1
      for (int r = stager; r < kBM && row0 + r <= last; r += kStagers) {
        bool wide = false;
        const int64_t next = ts[imin(row0 + r + 1, last)];
        small_ts_offset(next, ts_ref, &wide);
        if (r % 64 > 0 && next < ts[row0 + r]) wide = true;
        if (wide) rows_wide |= 1 << (r / 64);
      }
    }
    const int col_end = (w.n_first + w.n_count) * kBN;
    for (int col0 = w.n_first * kBN; col0 < col_end; col0 += kBN, ++kv_it) {
      const int s = kv_it % kStages;
      if (kv_it >= kStages) barrier_wait(&v_empty[s], ((kv_it / kStages) & 1) ^ 1);
      const typename Tiles::BiasSlotOf slot(slots, s);
      int wide = rows_wide;
      if (ts != nullptr) {
#pragma unroll 1
        for (int c = stager; c < kBN; c += kStagers) {
          const int64_t t = ts[imin(col0 + c, last)];
          bool far = false;
          slot.ts[c] = t;
          slot.ts_off[c] = small_ts_offset(t, ts_ref, &far);
          if (c > 0 && t < ts[imin(col0 + c - 1, last)]) far = true;
          if (far) wide = 3;
        }
        // From the last column to a warpgroup's first t_{i+1}, where none of its rows is among
        // the columns (with ascending times every visible gap is then >= 0).
        if (stager < 2) {
          const int col_last = imin(col0 + kBN - 1, last);
          const int first_next = imin(row0 + stager * 64 + 1, last);
          if (col_last < first_next && ts[first_next] < ts[col_last]) wide |= 1 << stager;
        }
      }
      // (halved: the consumers add them to alpha S / 2)
      slot.stage_pos_weights(p, col0 - (row0 + kBM - 1), 0.5f, stager, kStagers);
      slot.publish_flags(wide, stager);
      barrier_arrive(&k_full[s]);  // (every stager: an arrival releases its own writes only)
    }
  }
}

// kBias: the relative bias is on (a separate instantiation keeps its per-element table reads
// out of the plain kernel's code); it runs the plain loop, and warps 1-3 of the producer
// warpgroup stage each step's bias (stage_forward_bias).
//
// The grid is persistent: block b takes work item b, then the next unclaimed one
// (next_forward_item; heaviest first within each (sequence, head)), and the producer runs ahead
// across items, so the next item's Q and first K, V tiles load while this one's last steps and
// its output stores run. The producer passes each item to the consumers with its Q buffer.
template <typename T, int D, bool kBias, FwdLoop kLoop>
__global__ void __launch_bounds__(FwdTiles<D>::kThreads, 1)
    hstu_forward_sm90_kernel(const __grid_constant__ CUtensorMap q_map,
                             const __grid_constant__ CUtensorMap k_map,
                             const __grid_constant__ CUtensorMap v_map,
                             const __grid_constant__ HstuParams p, int row_blocks) {
#if FREESCALE_SM90A
  using Tiles = FwdTiles<D>;
  constexpr int kBM = Tiles::kBlockM;
  constexpr int kBN = Tiles::kBlockN;
  constexpr int kStages = Tiles::kStages;
  constexpr int kQStages = Tiles::kQStages;
  constexpr int kChunks = Tiles::kChunks;
  // The overlapped loops wait for step it + 1's stage before releasing step it's.
  static_assert(kLoop == FwdLoop::kPlain || kStages >= 2, "overlapped loops need two stages");

  extern __shared__ uint8_t smem_raw[];
  uint8_t* base = align_1024(smem_raw);
  T* q_s = reinterpret_cast<T*>(base);                              // [qstage][chunk][kBM][64]
  T* k_s = reinterpret_cast<T*>(base + kQStages * Tiles::kQBytes);  // [stage][chunk][kBN][64]
  T* v_s = k_s + kStages * kChunks * kBN * 64;                      // [stage][chunk][kBN][64]
  uint64_t* q_full = reinterpret_cast<uint64_t*>(v_s + kStages * kChunks * kBN * 64);
  uint64_t* q_empty = q_full + kQStages;
  uint64_t* k_full = q_empty + kQStages;
  uint64_t* k_empty = k_full + kStages;
  uint64_t* v_full = k_empty + kStages;
  uint64_t* v_empty = v_full + kStages;
  int* item_s = reinterpret_cast<int*>(v_empty + kStages);   // [kQStages]
  auto* work_s = reinterpret_cast<StagedWork*>(item_s + 4);  // [kQStages]
  auto* ts_cell_weights =  // [kTsCells] (16-byte aligned: kBarrierBytes)
      reinterpret_cast<TsWeightedCell*>(work_s + kQStages);
  auto* ts_cells = reinterpret_cast<uint32_t (*)[2]>(ts_cell_weights + kTsCells);  // [kTsCells]
  int64_t* ts_thresholds = reinterpret_cast<int64_t*>(ts_cells + kTsCells);
  float* ts_weight_s = reinterpret_cast<float*>(ts_thresholds + kTsBucketThresholds);
  uint8_t* bias_slots = reinterpret_cast<uint8_t*>(ts_weight_s + Tiles::kMaxTsBuckets);

  if (threadIdx.x == 0) {
    for (int s = 0; s < kQStages; ++s) {
      barrier_init(&q_full[s], 1);
      barrier_init(&q_empty[s], Tiles::kConsumers * 4);
    }
    // With the bias, the stagers arrive on a stage's K barrier beside the producer, and every
    // consumer thread (not one per warp) on its V empty one: it read the stage's bias slot.
    for (int s = 0; s < kStages; ++s) {
      barrier_init(&k_full[s], 1 + (kBias ? Tiles::kBiasStagers : 0));
      barrier_init(&k_empty[s], Tiles::kConsumers * 4);
      barrier_init(&v_full[s], 1);
      barrier_init(&v_empty[s], Tiles::kConsumers * (kBias ? 128 : 4));
    }
    barrier_init_fence();
  }
  if (kBias && p.bias.ts_weight != nullptr) {
    stage_ts_tables(p.bias, ts_cells, ts_thresholds, ts_weight_s);
    stage_ts_cell_weights(p.bias, ts_cell_weights);
  }
  __syncthreads();

  const int warpgroup = threadIdx.x / 128;
  if (warpgroup == 0) {
    // Producer: one thread issues every TMA load, for every work item of the block.
    registers_decrease<kBias ? Tiles::kBiasProducerRegisters : Tiles::kProducerRegisters>();
    if constexpr (kBias) {
      static_assert(Tiles::kBiasStagers == 128 - 32, "warps 1-3 of the producer warpgroup");
      if (threadIdx.x >= 32) {
        stage_forward_bias<Tiles>(p, item_s, work_s, q_full, k_full, v_empty, bias_slots);
        return;
      }
    }
    if (threadIdx.x != 0) return;
    tma_prefetch_descriptor(&q_map);
    tma_prefetch_descriptor(&k_map);
    tma_prefetch_descriptor(&v_map);
    int q_it = 0;   // Q loads so far (work items with columns)
    int kv_it = 0;  // K, V tile loads so far
    FwdWork w;
    for (int item = blockIdx.x;; item = next_forward_item(p, item)) {
      const bool more = forward_work<kBM, kBN>(p, item, row_blocks, &w);
      if (more && w.n_count == 0) continue;
      // The item goes to the consumers with its Q buffer (the barrier's arrival releases the
      // slot's write to them); past the last one, -1 and a bare arrival end their loop.
      const int qs = q_it % kQStages;
      if (q_it >= kQStages) barrier_wait(&q_empty[qs], ((q_it / kQStages) & 1) ^ 1);
      item_s[qs] = more ? item : -1;
      if (kBias && more) {
        work_s[qs] = StagedWork{w.seq.begin, w.seq.len, w.row0, w.n_first, w.n_count, {0, 0}};
      }
      if (!more) {
        barrier_arrive(&q_full[qs]);
        break;
      }
      barrier_arrive_expect_bytes(&q_full[qs], Tiles::kQBytes);
      const int q_row = static_cast<int>(w.seq.begin) + w.row0;
      for (int c = 0; c < kChunks; ++c) {
        tma_load_3d(q_s + (qs * kChunks + c) * kBM * 64, &q_map, &q_full[qs], c * 64, w.head,
                    q_row);
      }
      ++q_it;
      // K and V of a stage load apart, each once the consumers gave its buffer back: K's as
      // soon as the products that read it retired, so the overlapped loops, which hold step
      // it + 1's K beside step it's V, still find the next K loaded a step ahead.
      for (int it = 0; it < w.n_count; ++it, ++kv_it) {
        const int s = kv_it % kStages;
        const uint32_t empty_parity = ((kv_it / kStages) & 1) ^ 1;
        const int kv_row = static_cast<int>(w.seq.begin) + (w.n_first + it) * kBN;
        if (kv_it >= kStages) barrier_wait(&k_empty[s], empty_parity);
        barrier_arrive_expect_bytes(&k_full[s], Tiles::kKVBytes);
        for (int c = 0; c < kChunks; ++c) {
          tma_load_3d(k_s + (s * kChunks + c) * kBN * 64, &k_map, &k_full[s], c * 64, w.head,
                      kv_row);
        }
        if (kv_it >= kStages) barrier_wait(&v_empty[s], empty_parity);
        barrier_arrive_expect_bytes(&v_full[s], Tiles::kKVBytes);
        for (int c = 0; c < kChunks; ++c) {
          tma_load_3d(v_s + (s * kChunks + c) * kBN * 64, &v_map, &v_full[s], c * 64, w.head,
                      kv_row);
        }
      }
    }
    return;
  }

  // Consumers: warpgroup 1 takes rows 0..63 of each item, warpgroup 2 rows 64..127.
  registers_increase<kBias ? Tiles::kBiasConsumerRegisters : Tiles::kConsumerRegisters>();
  using MmaS = Wgmma<T, kBN>;
  using MmaO = Wgmma<T, D>;
  const int wg = warpgroup - 1;
  const int warp = (threadIdx.x / 32) % 4;
  const int lane = threadIdx.x % 32;
  const int g = lane / 4;
  const int t = lane % 4;
  const float inv_norm = 1.f / static_cast<float>(p.max_seq_len);
  constexpr bool has_bias = kBias;

  int kv_base = 0;  // K, V tiles of the block's earlier items
  FwdWork w;
  for (int q_it = 0;; ++q_it) {  // as the producer's
    const int qs = q_it % kQStages;
    barrier_wait(&q_full[qs], (q_it / kQStages) & 1);
    // Lane 0 reads the slot and is the lane that later gives the buffer back (q_empty): an
    // mbarrier arrival releases only its own thread's accesses, so with every lane reading,
    // the producer's next write raced (per racecheck) with the reads of lanes 1-31.
    int item = 0;
    if (lane == 0) item = item_s[qs];
    item = __shfl_sync(0xffffffffu, item, 0);
    if (item < 0) break;
    forward_work<kBM, kBN>(p, item, row_blocks, &w);  // (one with columns: the producer's pick)
    const Sequence& seq = w.seq;
    const int head = w.head;
    const int row0 = w.row0;
    const int n_first = w.n_first;
    const int n_count = w.n_count;
    const int i0 = row0 + wg * 64 + warp * 16 + g;  // rows of accumulator elements 0,1 and 2,3
    const int i1 = i0 + 8;
    // With the time bias: t_{i+1} of rows i0 and i1 (the last row uses its own timestamp), and
    // as int32 offsets from the item's reference time ts_ref (exact while within kSmallTsSpan of
    // it; where not, the stagers sent the step to the threshold table, which takes next_ts).
    int64_t next_ts[2] = {0, 0};
    int32_t next_off[2] = {0, 0};
    if (kBias && p.bias.ts_weight != nullptr) {
      const int64_t ts_ref = p.bias.timestamps[seq.begin + imin(row0 + 1, seq.len - 1)];
#pragma unroll
      for (int r = 0; r < 2; ++r) {
        const int i = r == 0 ? i0 : i1;
        if (i >= seq.len) continue;
        next_ts[r] = p.bias.timestamps[seq.begin + imin(i + 1, seq.len - 1)];
        next_off[r] = static_cast<int32_t>(next_ts[r] - ts_ref);
      }
    }

    float o[D / 2];
#pragma unroll
    for (int e = 0; e < D / 2; ++e) o[e] = 0.f;
    float s_acc[kBN / 2];
    uint32_t pa[kBN / 16][4];

    const uint32_t q_addr = smem_u32(q_s + qs * kChunks * kBM * 64) + wg * 64 * 128;

    // S = Q K^T of step `it` over D in steps of 16 (32 bytes inside a 128-byte swizzled row),
    // issued and committed, into `acc`: the step's first 2 * size(acc) columns (all of them for
    // s_acc).
    const auto issue_scores_into = [&](int it, auto& acc) {
      using Mma = Wgmma<T, 2 * static_cast<int>(sizeof(acc) / sizeof(float))>;
      const int s = (kv_base + it) % kStages;
      barrier_wait(&k_full[s], ((kv_base + it) / kStages) & 1);
      const uint32_t k_addr = smem_u32(k_s + s * kChunks * kBN * 64);
      wgmma_fence();
#pragma unroll
      for (int kk = 0; kk < D / 16; ++kk) {
        const uint32_t q_off = (kk / 4) * kBM * 128 + (kk % 4) * 32;
        const uint32_t k_off = (kk / 4) * kBN * 128 + (kk % 4) * 32;
        Mma::ss(acc, swizzle128_descriptor(q_addr + q_off, 16, 1024),
                swizzle128_descriptor(k_addr + k_off, 16, 1024), kk > 0 ? 1 : 0);
      }
      wgmma_commit();
    };
    const auto issue_scores = [&](int it) { issue_scores_into(it, s_acc); };

    // P N = SiLU(2 scale S) of step `it` on the visible pairs, 0 elsewhere, in place: scale =
    // alpha / 2 on the raw scores; with the bias, add_half_bias has already made S = alpha S / 2
    // + bias / 2, and scale is 1.
    const float alpha_half = 0.5f * p.alpha;
    const auto activate_pairs = [&](int it, bool full, float scale) {
      const int col0 = (n_first + it) * kBN;
      if (full) {
#pragma unroll
        for (int e = 0; e < kBN / 2; ++e) s_acc[e] = silu_of_half(scale * s_acc[e]);
      } else if (seq.mask.plain_causal()) {  // (a compare per pair, not the general mask)
#pragma unroll
        for (int e = 0; e < kBN / 2; ++e) {
          const int i = (e & 2) ? i1 : i0;
          const int jc = (e / 4) * 8 + 2 * t + (e & 1);
          s_acc[e] = i < seq.len && col0 + jc <= i ? silu_of_half(scale * s_acc[e]) : 0.f;
        }
      } else {
#pragma unroll
        for (int e = 0; e < kBN / 2; ++e) {
          const int i = (e & 2) ? i1 : i0;
          const int j = col0 + (e / 4) * 8 + 2 * t + (e & 1);
          const float h = scale * s_acc[e];
          s_acc[e] = i < seq.len && j < seq.len && seq.mask.valid(i, j) ? silu_of_half(h) : 0.f;
        }
      }
    };
    // S = alpha S / 2 + half_bias(e, i, jc), half of pair (i, col0 + jc)'s bias, for every pair
    // (the mask is applied after, by activate_pairs). The costly ways of bucketing the times (the
    // cell and threshold tables), and every way on a tile with masked pairs, are a pass of their
    // own, and the SiLU and mask code one shared pass after them: a warp running one way and a
    // warp running another then share the larger part of their instructions (with a SiLU per
    // way and mask, the instruction cache missed a quarter of the warps' stalls at n = 1024).
    // The cheap ways on fully visible tiles, the bulk of the steps of long sequences, keep the
    // SiLU in their own pass (fused_half_bias), where the bias's reads overlap it.
    const auto add_half_bias = [&](auto half_bias) {
#pragma unroll
      for (int e = 0; e < kBN / 2; ++e) {
        const int jc = (e / 4) * 8 + 2 * t + (e & 1);
        s_acc[e] = alpha_half * s_acc[e] + half_bias(e, (e & 2) ? i1 : i0, jc);
      }
    };
    const auto fused_half_bias = [&](auto half_bias) {
#pragma unroll
      for (int e = 0; e < kBN / 2; ++e) {
        const int jc = (e / 4) * 8 + 2 * t + (e & 1);
        s_acc[e] = silu_of_half(alpha_half * s_acc[e] + half_bias(e, (e & 2) ? i1 : i0, jc));
      }
    };
    const auto activate = [&](int it) {
      const int col0 = (n_first + it) * kBN;
      const bool full = seq.mask.tile_fully_visible(row0 + wg * 64, 64, col0, kBN);
      if constexpr (!has_bias) {
        activate_pairs(it, full, alpha_half);
      } else {
        // (the stage's K full barrier, waited on by issue_scores, released the slot's writes)
        const typename Tiles::BiasSlotOf slot(bias_slots, (kv_base + it) % kStages);
        const int64_t* col_ts = slot.ts;
        const int32_t* col_off = slot.ts_off;
        const float* pos_w = slot.pos_w;
        const bool by_thresholds = slot.warpgroup_by_thresholds(wg);
        // j - i - delta0 = (j - col0) - (i - row0) + kBM - 1
        const auto pos = [&](int i, int jc) { return pos_w[jc - (i - row0) + kBM - 1]; };
        // The cheap ways: fused where the tile is fully visible, else the bias pass.
        bool activated = false;
        const auto cheap_half_bias = [&](auto half_bias) {
          if (full) {
            fused_half_bias(half_bias);
            activated = true;
          } else {
            add_half_bias(half_bias);
          }
        };
        if (p.bias.ts_weight == nullptr) {
          cheap_half_bias([&](int, int i, int jc) { return pos(i, jc); });
        } else if (!by_thresholds) {  // small gaps, ascending times: the cell table
          // Two buckets per row (ts_two_buckets): with ascending times and a causal mask, a row's
          // gaps shrink along its columns, so a thread's 32 columns of the row (2t .. 121 + 2t)
          // lie between its last column's gap and its first's. A warp takes it where every
          // lane's rows span at most two buckets (away from the diagonal), else the table.
          TsTwoBuckets row_buckets[2];
          bool two = seq.mask.plain_causal();
#pragma unroll
          for (int r = 0; r < 2; ++r) {
            row_buckets[r] = ts_two_buckets(next_off[r] - col_off[kBN - 7 + 2 * t],
                                            next_off[r] - col_off[2 * t], ts_cells, ts_thresholds);
            two &= row_buckets[r].two;
          }
          if (__all_sync(0xffffffffu, two)) {
            // Row r's weights held in registers (halved), and its pair with column jc in the
            // upper bucket where gap = next_off[r] - col_off[jc] >= split, i.e. col_off[jc] <=
            // last_upper[r]: a compare and a select per pair, no table read. Where no lane's
            // rows step (far from the diagonal, where buckets are wide), not even those.
            float w_lower[2];
            float w_upper[2];
            int32_t last_upper[2];
            bool one_bucket = true;
#pragma unroll
            for (int r = 0; r < 2; ++r) {
              w_lower[r] = 0.5f * ts_weight_s[row_buckets[r].lower];
              w_upper[r] = 0.5f * ts_weight_s[row_buckets[r].upper];
              last_upper[r] = ts_last_upper_offset(next_off[r], row_buckets[r].split);
              one_bucket &= row_buckets[r].upper == row_buckets[r].lower;
            }
            if (__all_sync(0xffffffffu, one_bucket)) {
              cheap_half_bias(
                  [&](int e, int i, int jc) { return pos(i, jc) + w_lower[(e & 2) ? 1 : 0]; });
            } else {
              cheap_half_bias([&](int e, int i, int jc) {
                const int r = (e & 2) ? 1 : 0;
                return pos(i, jc) + (col_off[jc] <= last_upper[r] ? w_upper[r] : w_lower[r]);
              });
            }
          } else {
            add_half_bias([&](int e, int i, int jc) {
              const int gap = next_off[(e & 2) ? 1 : 0] - col_off[jc];
              const uint32_t a = static_cast<uint32_t>(gap < 0 ? -gap : gap);
              return fmaf(0.5f, ts_bucket_weight_of_small_gap(a, ts_cell_weights).weight,
                          pos(i, jc));
            });
          }
        } else {
          add_half_bias([&](int e, int i, int jc) {
            const int64_t delta = next_ts[(e & 2) ? 1 : 0] - col_ts[jc];
            return fmaf(0.5f,
                        ts_weight_s[hstu_ts_bucket_from_thresholds(delta, p.bias.num_ts_buckets,
                                                                   ts_thresholds)],
                        pos(i, jc));
          });
        }
        if (!activated) activate_pairs(it, full, 1.0f);
      }
    };

    // N P rounded into the A fragments of the P V product.
    // (from `acc`, the step's first 2 * size(acc) columns: the first size(acc) / 8 fragments)
    const auto pack_probabilities_of = [&](const auto& acc) {
#pragma unroll
      for (int kk = 0; kk < static_cast<int>(sizeof(acc) / sizeof(float)) / 8; ++kk) {
        pa[kk][0] = mma::pack<T>(acc[8 * kk + 0], acc[8 * kk + 1]);
        pa[kk][1] = mma::pack<T>(acc[8 * kk + 2], acc[8 * kk + 3]);
        pa[kk][2] = mma::pack<T>(acc[8 * kk + 4], acc[8 * kk + 5]);
        pa[kk][3] = mma::pack<T>(acc[8 * kk + 6], acc[8 * kk + 7]);
      }
    };
    const auto pack_probabilities = [&] { pack_probabilities_of(s_acc); };

    // Step `it`'s V buffer is loaded.
    const auto wait_values = [&](int it) {
      barrier_wait(&v_full[(kv_base + it) % kStages], ((kv_base + it) / kStages) & 1);
    };
    // N O += (N P) V of step `it` over V's first `rows` rows (all kBN, or the left half's 64) in
    // steps of 16 (2048 bytes), issued and committed.
    // (wait_values(it) first, where no product is in flight: a barrier wait between the overlapped
    // loops' products made ptxas serialize every wgmma, C7514)
    const auto issue_values_over = [&](int it, auto rows) {
      const uint32_t v_addr = smem_u32(v_s + ((kv_base + it) % kStages) * kChunks * kBN * 64);
      wgmma_fence();
#pragma unroll
      for (int kk = 0; kk < decltype(rows)::value / 16; ++kk) {
        MmaO::rs_mn(o, pa[kk], swizzle128_descriptor(v_addr + kk * 16 * 128, kBN * 128, 1024), 1);
      }
      wgmma_commit();
    };
    const auto issue_values = [&](int it) {
      issue_values_over(it, std::integral_constant<int, kBN>{});
    };

    // After the Q K^T product of step `it` retired: its K buffer goes back to the producer.
    const auto release_keys = [&](int it) {
      __syncwarp();
      if (lane == 0) barrier_arrive(&k_empty[(kv_base + it) % kStages]);
    };
    // After the P V product of step `it` retired: its V buffer goes back to the producer (and
    // its bias slot to the stagers).
    const auto retire_values = [&](int it) {
      wgmma_wait<0>();
      fence_registers(o);
      keep_registers(pa);
      __syncwarp();
      if (kBias || lane == 0) barrier_arrive(&v_empty[(kv_base + it) % kStages]);
    };

    // Ping-pong turns: warpgroup wg issues its products between waiting on barrier 1 + wg and
    // arriving on the other's; warpgroup 1 first arrives on warpgroup 0's, so 0 goes first. Both
    // take n_count + 1 turns per item (n_count is the item's), so every arrival meets a wait.
    constexpr bool kPingPong = kLoop == FwdLoop::kPingPong;
    const auto take_turn = [&] {
      if constexpr (kPingPong) named_barrier_sync<256>(1 + wg);
    };
    const auto pass_turn = [&] {
      if constexpr (kPingPong) named_barrier_arrive<256>(2 - wg);
    };

    // A step whose columns col0 + 64 on lie past every row of this warpgroup (warpgroup 0 on a
    // plain causal mask's diagonal tile) takes the first 64 columns only: Q K^T with N = 64, the
    // activation of half of S, and P V over V's first 64 rows, a quarter of the diagonal step's
    // work off the tensor cores and the SiLU. Without the bias (its activation variants would
    // double again), in the plain loop, at d = 128 (at d = 64 ptxas serializes the plain loop's
    // wgmma for lack of registers with it: "C7511").
    const auto left_half_only = [&](int it) {
      if constexpr (kBias || kBN != 128 || D < 128) {
        return false;
      } else {
        const int col0 = (n_first + it) * kBN;
        return seq.mask.plain_causal() && imin(row0 + wg * 64 + 63, seq.len - 1) < col0 + 64;
      }
    };
    const auto step_left_half = [&](int it) {
      if constexpr (kBN == 128) {  // (with kBN = 64 there is no left half: no step takes it)
        float (&s_left)[32] = *reinterpret_cast<float (*)[32]>(&s_acc[0]);
        issue_scores_into(it, s_left);
        wgmma_wait<0>();
        fence_registers(s_left);
        release_keys(it);
        const int col0 = (n_first + it) * kBN;
#pragma unroll
        for (int e = 0; e < kBN / 4; ++e) {
          const int i = (e & 2) ? i1 : i0;
          const int jc = (e / 4) * 8 + 2 * t + (e & 1);
          s_left[e] = i < seq.len && col0 + jc <= i ? silu_of_half(alpha_half * s_left[e]) : 0.f;
        }
        pack_probabilities_of(s_left);
        wait_values(it);
        issue_values_over(it, std::integral_constant<int, kBN / 2>{});
        retire_values(it);
      }
    };

    if constexpr (kLoop == FwdLoop::kPlain) {
      for (int it = 0; it < n_count; ++it) {
        if (left_half_only(it)) {
          step_left_half(it);
          continue;
        }
        issue_scores(it);
        wgmma_wait<0>();
        fence_registers(s_acc);
        release_keys(it);
        activate(it);
        pack_probabilities();
        wait_values(it);
        issue_values(it);
        retire_values(it);
      }
    } else if (n_count > 0) {  // (column_range never gives an empty walk; a hang if it did)
      // The next step's Q K^T is issued before this step's P V, and its SiLU runs while P V does
      // (FlashAttention-3's intra-warpgroup overlap; no rescaling here, so nothing else waits).
      if constexpr (kPingPong) {
        if (wg == 1) named_barrier_arrive<256>(1);  // warpgroup 0 takes the first turn
      }
      take_turn();
      issue_scores(0);
      pass_turn();
      wgmma_wait<0>();
      fence_registers(s_acc);
      release_keys(0);
      activate(0);
      pack_probabilities();
      // The last step is peeled: a loop-carried `if` around the overlap makes ptxas serialize
      // every wgmma (warning C7514).
      for (int it = 0; it + 1 < n_count; ++it) {
        take_turn();
        wait_values(it);
        issue_scores(it + 1);  // s_acc is free: packed into pa
        issue_values(it);
        pass_turn();
        wgmma_wait<1>();  // the older group, Q K^T of it + 1, is done; P V may still run
        fence_registers(s_acc);
        release_keys(it + 1);
        activate(it + 1);
        retire_values(it);
        pack_probabilities();  // pa is free: P V of it retired
      }
      take_turn();
      wait_values(n_count - 1);
      issue_values(n_count - 1);
      if (wg == 0) pass_turn();  // warpgroup 1 takes no turn after this one
      retire_values(n_count - 1);
    }

    // Every product that read this Q has retired: its buffer goes back to the producer.
    __syncwarp();
    if (lane == 0) barrier_arrive(&q_empty[qs]);
    kv_base += n_count;

    T* out = static_cast<T*>(p.out);
#pragma unroll
    for (int half = 0; half < 2; ++half) {
      const int i = half == 0 ? i0 : i1;
      if (i >= seq.len) continue;
      T* row = out + ((seq.begin + i) * p.num_heads + head) * static_cast<int64_t>(D);
#pragma unroll
      for (int n8 = 0; n8 < D / 8; ++n8) {
        *reinterpret_cast<uint32_t*>(row + n8 * 8 + 2 * t) =
            mma::pack<T>(o[4 * n8 + 2 * half] * inv_norm, o[4 * n8 + 2 * half + 1] * inv_norm);
      }
    }
  }
#else
  __trap();  // built without sm_90a code; the host never launches this
#endif
}

struct Sm90TensorMaps {
  CUtensorMap q, k, v;
};

// The loop of a forward without the bias where p leaves it to the shape (sm90_forward_loop =
// -1): ping-pong at d = 128 where some sequence may reach 4096, else plain. On an H100 at 1M
// tokens (docs/hstu_sm90/31.md) ping-pong ran 1.04x / 1.06x the plain loop's speed at n = 4096 /
// 8192 and 1.03x on the jagged batch capped at 4096, but 0.85x at n = 1024, where a work item
// has few steps (4.5 on average) and each item's first and last steps do not overlap; n = 2048
// read 1.05x and 0.92x in two calls. Other head dims are not measured with it: plain.
template <int D>
FwdLoop forward_loop_for(const HstuParams& p) {
  if (p.sm90_forward_loop >= 0) return static_cast<FwdLoop>(p.sm90_forward_loop);
  return D == 128 && p.max_seq_len >= 4096 ? FwdLoop::kPingPong : FwdLoop::kPlain;
}

template <typename T, int D>
cudaError_t launch_forward_sm90(const HstuParams& p, const Sm90TensorMaps& maps,
                                cudaStream_t stream) {
  using Tiles = FwdTiles<D>;
  const bool bias = p.bias.pos_weight != nullptr || p.bias.ts_weight != nullptr;
  // The overlapped loops with the bias spill (358-366 bytes at d = 128: step it's packed P stays
  // live through step it + 1's bias activation, docs/hstu_sm90/31.md): the bias runs the plain
  // loop.
  const FwdLoop loop = bias ? FwdLoop::kPlain : forward_loop_for<D>(p);
  auto kernel = hstu_forward_sm90_kernel<T, D, false, FwdLoop::kPlain>;
  if (bias) kernel = hstu_forward_sm90_kernel<T, D, true, FwdLoop::kPlain>;
  if (loop == FwdLoop::kOverlap) kernel = hstu_forward_sm90_kernel<T, D, false, FwdLoop::kOverlap>;
  if (loop == FwdLoop::kPingPong) {
    kernel = hstu_forward_sm90_kernel<T, D, false, FwdLoop::kPingPong>;
  }
  cudaError_t err =
      cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, Tiles::kSmemBytes);
  if (err != cudaSuccess) return err;
  const int row_blocks = static_cast<int>(max_sequence_tiles(p, Tiles::kBlockM));
  const int64_t items = work_items(p, Tiles::kBlockM);
  const unsigned grid = persistent_grid(items);
  if (grid == 0 || items >= kMaxWorkItems) return cudaErrorInvalidValue;
  kernel<<<grid, Tiles::kThreads, Tiles::kSmemBytes, stream>>>(maps.q, maps.k, maps.v, p,
                                                               row_blocks);
  return cudaGetLastError();
}

}  // namespace freescale::attention::hopper
