// HSTU attention forward for sm_90a: TMA loads, warpgroup MMAs, a producer warpgroup and two
// consumer warpgroups (DESIGN §4):
//   o_i = sum_j SiLU(alpha q_i.k_j + b_ij) / N * M_ij * v_j
//
// A block owns 128 query rows of one (sequence, head); each consumer warpgroup owns 64 of them.
// The producer streams K and V tiles of the columns the mask can reach into a ring of stages
// (TMA, 128-byte swizzle); consumers compute S = Q K^T with both operands in shared memory,
// turn S into N P in registers (no softmax, so no running max or rescale: P of a tile is
// final), and accumulate N O += (N P) V with N P as the register A operand. Tiles strictly below
// the diagonal of a plain causal mask skip the per-element mask. Blocks are ordered so that the
// last row tiles, which see the most columns, start first.
//
// Instantiated per head dim in hstu_fwd_sm90_d*.cu; host entry points in hstu_sm90.h.
#pragma once

#include <cuda.h>
#include <cuda_runtime.h>

#include "attention/hopper/sm90_primitives.cuh"
#include "attention/hopper/tile_list.h"
#include "attention/hopper/wgmma.cuh"
#include "attention/hstu_params.h"
#include "attention/hstu_sequence.cuh"
#include "attention/mma_m16n8k16.cuh"

namespace freescale::attention::hopper {

template <int D>
struct FwdTiles {
  static constexpr int kBlockM = 128;  // 64 query rows per consumer warpgroup
  static constexpr int kBlockN = D <= 128 ? 128 : 64;
  static constexpr int kStages = D <= 64 ? 4 : 2;
  static constexpr int kChunks = D / 64;  // 128-byte swizzle blocks per row of 16-bit values
  static constexpr int kConsumers = 2;
  static constexpr int kThreads = 128 * (1 + kConsumers);
  static constexpr int kQBytes = kBlockM * D * 2;
  static constexpr int kKVBytes = kBlockN * D * 2;  // one K (or V) tile
  static constexpr int kBarrierBytes = 8 * (1 + 2 * kStages);
  static constexpr int kThresholdBytes = 8 * kTsBucketThresholds;  // time-bucket table
  // + 1024: the tiles are aligned to 1024 bytes inside the dynamic allocation.
  static constexpr int kSmemBytes =
      kQBytes + 2 * kStages * kKVBytes + kBarrierBytes + kThresholdBytes + 1024;
  static_assert(D % 64 == 0, "the sm_90a path takes head dims 64, 128, 256");
  static_assert(kSmemBytes <= 227 * 1024, "shared memory of one sm_90 block");
};

// SiLU(x) = (x / 2) (1 + tanh(x / 2)). The 1/N normalizer is applied to O in fp32 instead of
// to P, which would push 16-bit P towards float16's subnormals for long sequences.
__device__ __forceinline__ float silu(float x) {
  const float half_x = 0.5f * x;
  return fmaf(half_x, tanh_approx(half_x), half_x);
}

// The consumers' loop over column tiles (FREESCALE_HSTU_SM90_LOOP, without the bias, until
// measured against each other):
//   kPlain    Q K^T, SiLU, P V one after the other;
//   kOverlap  the next step's Q K^T issued beside this step's P V, its SiLU while P V runs
//             (FlashAttention-3's intra-warpgroup overlap);
//   kPingPong kOverlap, and the two consumer warpgroups take turns to issue their products
//             (named barriers), so one's SiLU runs while the other's products keep the tensor
//             cores busy (FlashAttention-3's inter-warpgroup schedule).
enum class FwdLoop { kPlain, kOverlap, kPingPong };
static_assert(static_cast<int>(FwdLoop::kOverlap) == 1 && static_cast<int>(FwdLoop::kPingPong) == 2,
              "HstuParams::sm90_forward_loop numbers the loops so");

// kBias: the relative bias is on (a separate instantiation keeps its per-element table reads
// out of the plain kernel's code); it runs the plain loop.
template <typename T, int D, bool kBias, FwdLoop kLoop>
__global__ void __launch_bounds__(FwdTiles<D>::kThreads, 1)
    hstu_forward_sm90_kernel(const __grid_constant__ CUtensorMap q_map,
                             const __grid_constant__ CUtensorMap k_map,
                             const __grid_constant__ CUtensorMap v_map, const HstuParams p,
                             int row_blocks) {
#if FREESCALE_SM90A
  using Tiles = FwdTiles<D>;
  constexpr int kBM = Tiles::kBlockM;
  constexpr int kBN = Tiles::kBlockN;
  constexpr int kStages = Tiles::kStages;
  constexpr int kChunks = Tiles::kChunks;
  // The overlapped loops wait for step it + 1's stage before releasing step it's.
  static_assert(kLoop == FwdLoop::kPlain || kStages >= 2, "overlapped loops need two stages");

  extern __shared__ uint8_t smem_raw[];
  uint8_t* base = align_1024(smem_raw);
  T* q_s = reinterpret_cast<T*>(base);                   // [chunk][kBM][64]
  T* k_s = reinterpret_cast<T*>(base + Tiles::kQBytes);  // [stage][chunk][kBN][64]
  T* v_s = k_s + kStages * kChunks * kBN * 64;           // [stage][chunk][kBN][64]
  uint64_t* q_full = reinterpret_cast<uint64_t*>(v_s + kStages * kChunks * kBN * 64);
  uint64_t* kv_full = q_full + 1;
  uint64_t* kv_empty = kv_full + kStages;
  int64_t* ts_thresholds = reinterpret_cast<int64_t*>(kv_empty + kStages);

  // The block's (sequence, row tile): entry blockIdx.x of the tile list (heaviest first), or
  // without one, row tiles from the last (most columns under a causal mask) to the first.
  int batch, row_block;
  int head = blockIdx.y;
  if (p.tile_list != nullptr) {
    if (!listed_tile(p, &batch, &row_block, &head)) return;  // uniform across the block
  } else {
    batch = static_cast<int>(blockIdx.x % static_cast<unsigned>(p.batch_size));
    row_block = row_blocks - 1 - static_cast<int>(blockIdx.x / p.batch_size);
  }
  const Sequence seq = load_sequence(p, batch);
  const int row0 = row_block * kBM;
  if (row0 >= seq.len) return;  // uniform across the block
  int lo, hi;
  seq.mask.column_range(row0, imin(row0 + kBM, seq.len), &lo, &hi);
  const int n_first = lo / kBN;
  const int n_count = (hi + kBN - 1) / kBN - n_first;

  init_pipeline_barriers(q_full, kv_full, kv_empty, kStages, Tiles::kConsumers * 4);
  if (kBias && p.bias.ts_weight != nullptr) fill_ts_thresholds(ts_thresholds);
  __syncthreads();

  const int warpgroup = threadIdx.x / 128;
  if (warpgroup == 0) {
    // Producer: one thread issues every TMA load.
    registers_decrease<24>();
    if (threadIdx.x != 0) return;
    tma_prefetch_descriptor(&q_map);
    tma_prefetch_descriptor(&k_map);
    tma_prefetch_descriptor(&v_map);
    const int q_row = static_cast<int>(seq.begin) + row0;
    barrier_arrive_expect_bytes(q_full, Tiles::kQBytes);
    for (int c = 0; c < kChunks; ++c) {
      tma_load_3d(q_s + c * kBM * 64, &q_map, q_full, c * 64, head, q_row);
    }
    for (int it = 0; it < n_count; ++it) {
      const int s = it % kStages;
      if (it >= kStages) barrier_wait(&kv_empty[s], ((it / kStages) & 1) ^ 1);
      barrier_arrive_expect_bytes(&kv_full[s], 2 * Tiles::kKVBytes);
      const int kv_row = static_cast<int>(seq.begin) + (n_first + it) * kBN;
      for (int c = 0; c < kChunks; ++c) {
        const int tile = (s * kChunks + c) * kBN * 64;
        tma_load_3d(k_s + tile, &k_map, &kv_full[s], c * 64, head, kv_row);
        tma_load_3d(v_s + tile, &v_map, &kv_full[s], c * 64, head, kv_row);
      }
    }
    return;
  }

  // Consumers: warpgroup 1 takes rows 0..63 of the tile, warpgroup 2 rows 64..127.
  registers_increase<240>();
  using MmaS = Wgmma<T, kBN>;
  using MmaO = Wgmma<T, D>;
  const int wg = warpgroup - 1;
  const int warp = (threadIdx.x / 32) % 4;
  const int lane = threadIdx.x % 32;
  const int g = lane / 4;
  const int t = lane % 4;
  const int i0 = row0 + wg * 64 + warp * 16 + g;  // rows of accumulator elements 0,1 and 2,3
  const int i1 = i0 + 8;
  const float inv_norm = 1.f / static_cast<float>(p.max_seq_len);
  constexpr bool has_bias = kBias;

  float o[D / 2];
#pragma unroll
  for (int e = 0; e < D / 2; ++e) o[e] = 0.f;
  float s_acc[kBN / 2];
  uint32_t pa[kBN / 16][4];

  barrier_wait(q_full, 0);
  const uint32_t q_addr = smem_u32(q_s) + wg * 64 * 128;

  // S = Q K^T of step `it` over D in steps of 16 (32 bytes inside a 128-byte swizzled row),
  // issued and committed.
  const auto issue_scores = [&](int it) {
    const int s = it % kStages;
    barrier_wait(&kv_full[s], (it / kStages) & 1);
    const uint32_t k_addr = smem_u32(k_s + s * kChunks * kBN * 64);
    wgmma_fence();
#pragma unroll
    for (int kk = 0; kk < D / 16; ++kk) {
      const uint32_t q_off = (kk / 4) * kBM * 128 + (kk % 4) * 32;
      const uint32_t k_off = (kk / 4) * kBN * 128 + (kk % 4) * 32;
      MmaS::ss(s_acc, swizzle128_descriptor(q_addr + q_off, 16, 1024),
               swizzle128_descriptor(k_addr + k_off, 16, 1024), kk > 0 ? 1 : 0);
    }
    wgmma_commit();
  };

  // P N = SiLU(alpha S + b) of step `it` on the visible pairs, 0 elsewhere, in place.
  const auto activate = [&](int it) {
    const int col0 = (n_first + it) * kBN;
    const bool full = seq.mask.tile_fully_visible(row0 + wg * 64, 64, col0, kBN);
    if (full && !has_bias) {
#pragma unroll
      for (int e = 0; e < kBN / 2; ++e) s_acc[e] = silu(p.alpha * s_acc[e]);
    } else {
#pragma unroll
      for (int e = 0; e < kBN / 2; ++e) {
        const int i = (e & 2) ? i1 : i0;
        const int j = col0 + (e / 4) * 8 + 2 * t + (e & 1);
        float prob = 0.f;
        if (full || (i < seq.len && j < seq.len && seq.mask.valid(i, j))) {
          float x = p.alpha * s_acc[e];
          if (has_bias) x += relative_bias(p, seq, i, j, ts_thresholds);
          prob = silu(x);
        }
        s_acc[e] = prob;
      }
    }
  };

  // N P rounded into the A fragments of the P V product.
  const auto pack_probabilities = [&] {
#pragma unroll
    for (int kk = 0; kk < kBN / 16; ++kk) {
      pa[kk][0] = mma::pack<T>(s_acc[8 * kk + 0], s_acc[8 * kk + 1]);
      pa[kk][1] = mma::pack<T>(s_acc[8 * kk + 2], s_acc[8 * kk + 3]);
      pa[kk][2] = mma::pack<T>(s_acc[8 * kk + 4], s_acc[8 * kk + 5]);
      pa[kk][3] = mma::pack<T>(s_acc[8 * kk + 6], s_acc[8 * kk + 7]);
    }
  };

  // N O += (N P) V of step `it` in steps of 16 rows of V (2048 bytes), issued and committed.
  const auto issue_values = [&](int it) {
    const uint32_t v_addr = smem_u32(v_s + (it % kStages) * kChunks * kBN * 64);
    wgmma_fence();
#pragma unroll
    for (int kk = 0; kk < kBN / 16; ++kk) {
      MmaO::rs_mn(o, pa[kk], swizzle128_descriptor(v_addr + kk * 16 * 128, kBN * 128, 1024), 1);
    }
    wgmma_commit();
  };

  // After the P V product of step `it` retired: its stage goes back to the producer.
  const auto retire_values = [&](int it) {
    wgmma_wait<0>();
    fence_registers(o);
    keep_registers(pa);
    __syncwarp();
    if (lane == 0) barrier_arrive(&kv_empty[it % kStages]);
  };

  // Ping-pong turns: warpgroup wg issues its products between waiting on barrier 1 + wg and
  // arriving on the other's; warpgroup 1 first arrives on warpgroup 0's, so 0 goes first. Both
  // take n_count + 1 turns (n_count is the block's), so every arrival meets a wait.
  constexpr bool kPingPong = kLoop == FwdLoop::kPingPong;
  const auto take_turn = [&] {
    if constexpr (kPingPong) named_barrier_sync<256>(1 + wg);
  };
  const auto pass_turn = [&] {
    if constexpr (kPingPong) named_barrier_arrive<256>(2 - wg);
  };

  if constexpr (kLoop == FwdLoop::kPlain) {
    for (int it = 0; it < n_count; ++it) {
      issue_scores(it);
      wgmma_wait<0>();
      fence_registers(s_acc);
      activate(it);
      pack_probabilities();
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
    activate(0);
    pack_probabilities();
    // The last step is peeled: a loop-carried `if` around the overlap makes ptxas serialize
    // every wgmma (warning C7514).
    for (int it = 0; it + 1 < n_count; ++it) {
      take_turn();
      issue_scores(it + 1);  // s_acc is free: packed into pa
      issue_values(it);
      pass_turn();
      wgmma_wait<1>();  // the older group, Q K^T of it + 1, is done; P V may still run
      fence_registers(s_acc);
      activate(it + 1);
      retire_values(it);
      pack_probabilities();  // pa is free: P V of it retired
    }
    take_turn();
    issue_values(n_count - 1);
    if (wg == 0) pass_turn();  // warpgroup 1 takes no turn after this one
    retire_values(n_count - 1);
  }

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
#else
  __trap();  // built without sm_90a code; the host never launches this
#endif
}

struct Sm90TensorMaps {
  CUtensorMap q, k, v;
};

template <typename T, int D>
cudaError_t launch_forward_sm90(const HstuParams& p, const Sm90TensorMaps& maps,
                                cudaStream_t stream) {
  using Tiles = FwdTiles<D>;
  const bool bias = p.bias.pos_weight != nullptr || p.bias.ts_weight != nullptr;
  // The overlapped loops with the bias spill (two inlined copies of its per-pair table reads):
  // the bias runs the plain loop.
  const FwdLoop loop = bias ? FwdLoop::kPlain : static_cast<FwdLoop>(p.sm90_forward_loop);
  auto kernel = hstu_forward_sm90_kernel<T, D, false, FwdLoop::kPlain>;
  if (bias) kernel = hstu_forward_sm90_kernel<T, D, true, FwdLoop::kPlain>;
  if (loop == FwdLoop::kOverlap) kernel = hstu_forward_sm90_kernel<T, D, false, FwdLoop::kOverlap>;
  if (loop == FwdLoop::kPingPong) {
    kernel = hstu_forward_sm90_kernel<T, D, false, FwdLoop::kPingPong>;
  }
  cudaError_t err =
      cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, Tiles::kSmemBytes);
  if (err != cudaSuccess) return err;
  const int row_blocks = (p.max_seq_len + Tiles::kBlockM - 1) / Tiles::kBlockM;
  const dim3 grid =
      p.tile_list != nullptr
          ? dim3(tile_list_grid(p, Tiles::kBlockM))
          : dim3(static_cast<unsigned>(row_blocks) * static_cast<unsigned>(p.batch_size),
                 static_cast<unsigned>(p.num_heads));
  kernel<<<grid, Tiles::kThreads, Tiles::kSmemBytes, stream>>>(maps.q, maps.k, maps.v, p,
                                                               row_blocks);
  return cudaGetLastError();
}

}  // namespace freescale::attention::hopper
