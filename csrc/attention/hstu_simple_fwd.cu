// Simple HSTU attention forward: o_i = sum_j SiLU(alpha q_i.k_j + b_ij) / N * M_ij * v_j.
//
// One block per (sequence, 32-row query tile, head); it walks only the key tiles the mask can
// reach (HstuMask::column_range), so causal and windowed masks skip empty tiles.
#include "attention/hstu_simple.h"
#include "attention/hstu_simple_common.cuh"

namespace freescale::attention {
namespace simple {

template <typename T, int HEAD_DIM>
__global__ void __launch_bounds__(Tile<HEAD_DIM>::kThreads)
    hstu_forward_kernel(const HstuParams p, int num_row_tiles) {
  using TileT = Tile<HEAD_DIM>;
  constexpr int kBlock = TileT::kBlock;
  constexpr int kTpr = TileT::kThreadsPerRow;
  extern __shared__ float smem[];
  float* q_s = smem;
  float* k_s = q_s + TileT::kTileFloats;
  float* v_s = k_s + TileT::kTileFloats;
  float* p_s = v_s + TileT::kTileFloats;

  const int b = blockIdx.x / num_row_tiles;
  const int row0 = (blockIdx.x % num_row_tiles) * kBlock;
  const int head = blockIdx.y;
  const Sequence seq = load_sequence(p, b);
  if (row0 >= seq.len) return;  // uniform across the block

  load_tile<T, HEAD_DIM>(q_s, p.q, p.q_row_stride, seq, row0, head, p.dim_qk);
  int lo, hi;
  seq.mask.column_range(row0, imin(row0 + kBlock, seq.len), &lo, &hi);

  const int r = threadIdx.x / kTpr;
  const int lane = threadIdx.x % kTpr;
  const int i = row0 + r;
  const float inv_norm = 1.f / static_cast<float>(p.max_seq_len);
  float acc[TileT::kDimsPerThread];
#pragma unroll
  for (int e = 0; e < TileT::kDimsPerThread; ++e) acc[e] = 0.f;

  for (int col0 = (lo / kBlock) * kBlock; col0 < hi; col0 += kBlock) {
    __syncthreads();  // the previous tile's k_s, v_s, p_s are consumed
    load_tile<T, HEAD_DIM>(k_s, p.k, p.k_row_stride, seq, col0, head, p.dim_qk);
    load_tile<T, HEAD_DIM>(v_s, p.v, p.v_row_stride, seq, col0, head, p.dim_v);
    __syncthreads();
#pragma unroll
    for (int c = 0; c < TileT::kColsPerThread; ++c) {
      const int jl = lane + c * kTpr;
      const int j = col0 + jl;
      float prob = 0.f;
      if (i < seq.len && j < seq.len && seq.mask.valid(i, j)) {
        const float s =
            p.alpha * dot_rows<HEAD_DIM>(q_s + r * TileT::kStride, k_s + jl * TileT::kStride) +
            relative_bias(p, seq, i, j);
        prob = s * sigmoidf(s) * inv_norm;
      }
      p_s[r * TileT::kScoreStride + jl] = prob;
    }
    __syncthreads();
#pragma unroll
    for (int e = 0; e < TileT::kDimsPerThread; ++e) {
      const int d = lane + e * kTpr;
      float sum = 0.f;
#pragma unroll 8
      for (int jl = 0; jl < kBlock; ++jl) {
        sum += p_s[r * TileT::kScoreStride + jl] * v_s[jl * TileT::kStride + d];
      }
      acc[e] += sum;
    }
  }

  if (i < seq.len) {
    T* out = static_cast<T*>(p.out) + ((seq.begin + i) * p.num_heads + head) * p.dim_v;
#pragma unroll
    for (int e = 0; e < TileT::kDimsPerThread; ++e) {
      const int d = lane + e * kTpr;
      if (d < p.dim_v) Convert<T>::store(out + d, acc[e]);
    }
  }
}

template <typename T, int HEAD_DIM>
cudaError_t launch_forward(const HstuParams& p, cudaStream_t stream) {
  using TileT = Tile<HEAD_DIM>;
  const int num_row_tiles = (p.max_seq_len + TileT::kBlock - 1) / TileT::kBlock;
  const size_t smem = (3 * TileT::kTileFloats + TileT::kScoreFloats) * sizeof(float);
  auto kernel = hstu_forward_kernel<T, HEAD_DIM>;
  cudaError_t err = cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, smem);
  if (err != cudaSuccess) return err;
  const dim3 grid(static_cast<unsigned>(p.batch_size) * num_row_tiles, p.num_heads);
  kernel<<<grid, TileT::kThreads, smem, stream>>>(p, num_row_tiles);
  return cudaGetLastError();
}

template <typename T>
cudaError_t dispatch_head_dim(const HstuParams& p, cudaStream_t stream) {
  const int dim = p.dim_qk > p.dim_v ? p.dim_qk : p.dim_v;
  if (dim <= 32) return launch_forward<T, 32>(p, stream);
  if (dim <= 64) return launch_forward<T, 64>(p, stream);
  if (dim <= 128) return launch_forward<T, 128>(p, stream);
  if (dim <= 256) return launch_forward<T, 256>(p, stream);
  return cudaErrorInvalidValue;
}

}  // namespace simple

cudaError_t hstu_simple_forward(const HstuParams& p, cudaStream_t stream) {
  if (p.batch_size == 0 || p.total_len == 0 || p.num_heads == 0) return cudaSuccess;
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
