// Simple HSTU attention backward (DESIGN §4), with sigma = sigmoid(s), P = SiLU(s)/N * M:
//   dV = P^T dO,  dP = dO V^T,  dS = dP * sigma (1 + s (1 - sigma)) / N * M,
//   dQ = alpha dS K,  dK = alpha dS^T Q,  d pos_weight / d ts_weight = dS summed per table slot.
//
// Two kernels, both deterministic for dQ/dK/dV (no atomics on them): one per key tile
// accumulates dK, dV and the bias-table gradients; one per query tile accumulates dQ. Both
// recompute S and dP. Bias gradients are reduced in shared memory before one atomic per slot.
#include "attention/hstu_simple.h"
#include "attention/hstu_simple_common.cuh"

namespace freescale::attention {
namespace simple {

struct ScoreGrad {
  float prob;    // P_ij
  float dscore;  // dS_ij
};

__device__ __forceinline__ ScoreGrad score_grad(float s, float dp, float inv_norm) {
  const float sig = sigmoidf(s);
  return {s * sig * inv_norm, dp * sig * (1.f + s * (1.f - sig)) * inv_norm};
}

template <typename T, int HEAD_DIM>
__global__ void __launch_bounds__(Tile<HEAD_DIM>::kThreads)
    hstu_backward_dkdv_kernel(const HstuParams p, int num_col_tiles) {
  using TileT = Tile<HEAD_DIM>;
  constexpr int kBlock = TileT::kBlock;
  constexpr int kTpr = TileT::kThreadsPerRow;
  constexpr int kPosBins = 2 * kBlock - 1;
  extern __shared__ float smem[];
  float* k_s = smem;
  float* v_s = k_s + TileT::kTileFloats;
  float* q_s = v_s + TileT::kTileFloats;
  float* do_s = q_s + TileT::kTileFloats;
  float* p_s = do_s + TileT::kTileFloats;
  float* ds_s = p_s + TileT::kScoreFloats;
  float* pos_bins = ds_s + TileT::kScoreFloats;
  float* ts_bins = pos_bins + kPosBins;

  const int b = blockIdx.x / num_col_tiles;
  const int col0 = (blockIdx.x % num_col_tiles) * kBlock;
  const int head = blockIdx.y;
  const Sequence seq = load_sequence(p, b);
  if (col0 >= seq.len) return;

  const bool has_pos = p.bias.pos_weight != nullptr;
  const bool has_ts = p.bias.ts_weight != nullptr;
  load_tile<T, HEAD_DIM>(k_s, p.k, p.k_row_stride, seq, col0, head, p.dim_qk);
  load_tile<T, HEAD_DIM>(v_s, p.v, p.v_row_stride, seq, col0, head, p.dim_v);
  if (has_ts) {
    for (int x = threadIdx.x; x <= p.bias.num_ts_buckets; x += TileT::kThreads) ts_bins[x] = 0.f;
  }

  const int r = threadIdx.x / kTpr;
  const int lane = threadIdx.x % kTpr;
  const float inv_norm = 1.f / static_cast<float>(p.max_seq_len);
  float dk[TileT::kDimsPerThread];
  float dv[TileT::kDimsPerThread];
#pragma unroll
  for (int e = 0; e < TileT::kDimsPerThread; ++e) dk[e] = dv[e] = 0.f;

  // Rows before col0 see these columns only if they are contextual rows.
  const int first_row = p.contextual_len > 0 ? 0 : col0;
  for (int row0 = (first_row / kBlock) * kBlock; row0 < seq.len; row0 += kBlock) {
    int lo, hi;
    seq.mask.column_range(row0, imin(row0 + kBlock, seq.len), &lo, &hi);
    if (hi <= col0 || lo >= col0 + kBlock) continue;  // uniform across the block
    __syncthreads();                                  // the previous row tile is consumed
    load_tile<T, HEAD_DIM>(q_s, p.q, p.q_row_stride, seq, row0, head, p.dim_qk);
    load_tile<T, HEAD_DIM>(do_s, p.grad_out, p.grad_out_row_stride, seq, row0, head, p.dim_v);
    if (has_pos) {
      for (int x = threadIdx.x; x < kPosBins; x += TileT::kThreads) pos_bins[x] = 0.f;
    }
    __syncthreads();
    const int i = row0 + r;
#pragma unroll
    for (int c = 0; c < TileT::kColsPerThread; ++c) {
      const int jl = lane + c * kTpr;
      const int j = col0 + jl;
      ScoreGrad g{0.f, 0.f};
      if (i < seq.len && j < seq.len && seq.mask.valid(i, j)) {
        const float s =
            p.alpha * dot_rows<HEAD_DIM>(q_s + r * TileT::kStride, k_s + jl * TileT::kStride) +
            relative_bias(p, seq, i, j);
        const float dp = dot_rows<HEAD_DIM>(do_s + r * TileT::kStride, v_s + jl * TileT::kStride);
        g = score_grad(s, dp, inv_norm);
        if (has_pos) atomicAdd(&pos_bins[jl - r + kBlock - 1], g.dscore);
        if (has_ts) {
          const int next = i + 1 < seq.len ? i + 1 : seq.len - 1;
          const int64_t delta =
              p.bias.timestamps[seq.begin + next] - p.bias.timestamps[seq.begin + j];
          atomicAdd(&ts_bins[hstu_ts_bucket(delta, p.bias.num_ts_buckets)], g.dscore);
        }
      }
      p_s[r * TileT::kScoreStride + jl] = g.prob;
      ds_s[r * TileT::kScoreStride + jl] = g.dscore;
    }
    __syncthreads();
    // Now thread (r, lane) owns key row col0 + r.
#pragma unroll
    for (int e = 0; e < TileT::kDimsPerThread; ++e) {
      const int d = lane + e * kTpr;
      float sum_v = 0.f;
      float sum_k = 0.f;
#pragma unroll 8
      for (int il = 0; il < kBlock; ++il) {
        sum_v += p_s[il * TileT::kScoreStride + r] * do_s[il * TileT::kStride + d];
        sum_k += ds_s[il * TileT::kScoreStride + r] * q_s[il * TileT::kStride + d];
      }
      dv[e] += sum_v;
      dk[e] += sum_k;
    }
    if (has_pos) {
      for (int x = threadIdx.x; x < kPosBins; x += TileT::kThreads) {
        // bin x holds pairs with j - i = (col0 - row0) + x - (kBlock - 1)
        const int idx = p.max_seq_len - 1 + (col0 - row0) + x - (kBlock - 1);
        if (pos_bins[x] != 0.f && idx >= 0 && idx <= 2 * p.max_seq_len - 2) {
          atomicAdd(&p.bias.grad_pos[idx], pos_bins[x]);
        }
      }
    }
  }

  const int j = col0 + r;
  if (j < seq.len) {
    T* grad_k = static_cast<T*>(p.grad_k) + ((seq.begin + j) * p.num_heads + head) * p.dim_qk;
    T* grad_v = static_cast<T*>(p.grad_v) + ((seq.begin + j) * p.num_heads + head) * p.dim_v;
#pragma unroll
    for (int e = 0; e < TileT::kDimsPerThread; ++e) {
      const int d = lane + e * kTpr;
      if (d < p.dim_qk) Convert<T>::store(grad_k + d, p.alpha * dk[e]);
      if (d < p.dim_v) Convert<T>::store(grad_v + d, dv[e]);
    }
  }
  if (has_ts) {
    __syncthreads();
    for (int x = threadIdx.x; x <= p.bias.num_ts_buckets; x += TileT::kThreads) {
      if (ts_bins[x] != 0.f) atomicAdd(&p.bias.grad_ts[x], ts_bins[x]);
    }
  }
}

template <typename T, int HEAD_DIM>
__global__ void __launch_bounds__(Tile<HEAD_DIM>::kThreads)
    hstu_backward_dq_kernel(const HstuParams p, int num_row_tiles) {
  using TileT = Tile<HEAD_DIM>;
  constexpr int kBlock = TileT::kBlock;
  constexpr int kTpr = TileT::kThreadsPerRow;
  extern __shared__ float smem[];
  float* q_s = smem;
  float* do_s = q_s + TileT::kTileFloats;
  float* k_s = do_s + TileT::kTileFloats;
  float* v_s = k_s + TileT::kTileFloats;
  float* ds_s = v_s + TileT::kTileFloats;

  const int b = blockIdx.x / num_row_tiles;
  const int row0 = (blockIdx.x % num_row_tiles) * kBlock;
  const int head = blockIdx.y;
  const Sequence seq = load_sequence(p, b);
  if (row0 >= seq.len) return;

  load_tile<T, HEAD_DIM>(q_s, p.q, p.q_row_stride, seq, row0, head, p.dim_qk);
  load_tile<T, HEAD_DIM>(do_s, p.grad_out, p.grad_out_row_stride, seq, row0, head, p.dim_v);
  int lo, hi;
  seq.mask.column_range(row0, imin(row0 + kBlock, seq.len), &lo, &hi);

  const int r = threadIdx.x / kTpr;
  const int lane = threadIdx.x % kTpr;
  const int i = row0 + r;
  const float inv_norm = 1.f / static_cast<float>(p.max_seq_len);
  float dq[TileT::kDimsPerThread];
#pragma unroll
  for (int e = 0; e < TileT::kDimsPerThread; ++e) dq[e] = 0.f;

  for (int col0 = (lo / kBlock) * kBlock; col0 < hi; col0 += kBlock) {
    __syncthreads();
    load_tile<T, HEAD_DIM>(k_s, p.k, p.k_row_stride, seq, col0, head, p.dim_qk);
    load_tile<T, HEAD_DIM>(v_s, p.v, p.v_row_stride, seq, col0, head, p.dim_v);
    __syncthreads();
#pragma unroll
    for (int c = 0; c < TileT::kColsPerThread; ++c) {
      const int jl = lane + c * kTpr;
      const int j = col0 + jl;
      float dscore = 0.f;
      if (i < seq.len && j < seq.len && seq.mask.valid(i, j)) {
        const float s =
            p.alpha * dot_rows<HEAD_DIM>(q_s + r * TileT::kStride, k_s + jl * TileT::kStride) +
            relative_bias(p, seq, i, j);
        const float dp = dot_rows<HEAD_DIM>(do_s + r * TileT::kStride, v_s + jl * TileT::kStride);
        dscore = score_grad(s, dp, inv_norm).dscore;
      }
      ds_s[r * TileT::kScoreStride + jl] = dscore;
    }
    __syncthreads();
#pragma unroll
    for (int e = 0; e < TileT::kDimsPerThread; ++e) {
      const int d = lane + e * kTpr;
      float sum = 0.f;
#pragma unroll 8
      for (int jl = 0; jl < kBlock; ++jl) {
        sum += ds_s[r * TileT::kScoreStride + jl] * k_s[jl * TileT::kStride + d];
      }
      dq[e] += sum;
    }
  }

  if (i < seq.len) {
    T* grad_q = static_cast<T*>(p.grad_q) + ((seq.begin + i) * p.num_heads + head) * p.dim_qk;
#pragma unroll
    for (int e = 0; e < TileT::kDimsPerThread; ++e) {
      const int d = lane + e * kTpr;
      if (d < p.dim_qk) Convert<T>::store(grad_q + d, p.alpha * dq[e]);
    }
  }
}

template <typename T, int HEAD_DIM>
cudaError_t launch_backward(const HstuParams& p, cudaStream_t stream) {
  using TileT = Tile<HEAD_DIM>;
  const int num_tiles = (p.max_seq_len + TileT::kBlock - 1) / TileT::kBlock;
  const dim3 grid(static_cast<unsigned>(p.batch_size) * num_tiles, p.num_heads);

  const size_t dkdv_smem = (4 * TileT::kTileFloats + 2 * TileT::kScoreFloats +
                            (2 * TileT::kBlock - 1) + (p.bias.num_ts_buckets + 1)) *
                           sizeof(float);
  auto dkdv = hstu_backward_dkdv_kernel<T, HEAD_DIM>;
  cudaError_t err =
      cudaFuncSetAttribute(dkdv, cudaFuncAttributeMaxDynamicSharedMemorySize, dkdv_smem);
  if (err != cudaSuccess) return err;
  dkdv<<<grid, TileT::kThreads, dkdv_smem, stream>>>(p, num_tiles);
  err = cudaGetLastError();
  if (err != cudaSuccess) return err;

  const size_t dq_smem = (4 * TileT::kTileFloats + TileT::kScoreFloats) * sizeof(float);
  auto dq = hstu_backward_dq_kernel<T, HEAD_DIM>;
  err = cudaFuncSetAttribute(dq, cudaFuncAttributeMaxDynamicSharedMemorySize, dq_smem);
  if (err != cudaSuccess) return err;
  dq<<<grid, TileT::kThreads, dq_smem, stream>>>(p, num_tiles);
  return cudaGetLastError();
}

template <typename T>
cudaError_t dispatch_head_dim(const HstuParams& p, cudaStream_t stream) {
  const int dim = p.dim_qk > p.dim_v ? p.dim_qk : p.dim_v;
  if (dim <= 32) return launch_backward<T, 32>(p, stream);
  if (dim <= 64) return launch_backward<T, 64>(p, stream);
  if (dim <= 128) return launch_backward<T, 128>(p, stream);
  if (dim <= 256) return launch_backward<T, 256>(p, stream);
  return cudaErrorInvalidValue;
}

}  // namespace simple

cudaError_t hstu_simple_backward(const HstuParams& p, cudaStream_t stream) {
  if (p.batch_size == 0 || p.total_len == 0 || p.num_heads == 0) return cudaSuccess;
  if (p.bias.grad_copies != 1) return cudaErrorInvalidValue;  // (one table each)
  switch (p.dtype) {
    case ScalarKind::kFloat32:
      return simple::dispatch_head_dim<float>(p, stream);
    case ScalarKind::kFloat16:
      return simple::dispatch_head_dim<__half>(p, stream);
    case ScalarKind::kBFloat16:
      return simple::dispatch_head_dim<__nv_bfloat16>(p, stream);
  }
  return cudaErrorInvalidValue;
}

}  // namespace freescale::attention
