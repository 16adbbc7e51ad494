// Tile machinery shared by the simple forward and backward kernels.
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include "attention/hstu_mask.h"
#include "attention/hstu_params.h"
#include "attention/hstu_sequence.cuh"

namespace freescale::attention::simple {

template <typename T>
struct Convert;
template <>
struct Convert<float> {
  static __device__ __forceinline__ float load(const float* p) { return *p; }
  static __device__ __forceinline__ void store(float* p, float v) { *p = v; }
};
template <>
struct Convert<__half> {
  static __device__ __forceinline__ float load(const __half* p) { return __half2float(*p); }
  static __device__ __forceinline__ void store(__half* p, float v) { *p = __float2half_rn(v); }
};
template <>
struct Convert<__nv_bfloat16> {
  static __device__ __forceinline__ float load(const __nv_bfloat16* p) {
    return __bfloat162float(*p);
  }
  static __device__ __forceinline__ void store(__nv_bfloat16* p, float v) {
    *p = __float2bfloat16_rn(v);
  }
};

// A square tile of kBlock tokens; 128 threads, kThreadsPerRow threads share one tile row.
template <int HEAD_DIM>
struct Tile {
  static constexpr int kThreads = 128;
  static constexpr int kBlock = HEAD_DIM <= 128 ? 32 : 16;
  static constexpr int kThreadsPerRow = kThreads / kBlock;
  static constexpr int kColsPerThread = kBlock / kThreadsPerRow;    // of a score tile row
  static constexpr int kDimsPerThread = HEAD_DIM / kThreadsPerRow;  // of an output row
  static constexpr int kStride = HEAD_DIM + 1;  // floats per smem row, +1 against bank conflicts
  static constexpr int kScoreStride = kBlock + 1;
  static constexpr int kTileFloats = kBlock * kStride;
  static constexpr int kScoreFloats = kBlock * kScoreStride;
};

// Loads rows [row0, row0 + kBlock) of one head into smem as fp32, zero-filling rows past the
// sequence end and dims past `dim` (the padding that makes odd head dims work).
template <typename T, int HEAD_DIM>
__device__ __forceinline__ void load_tile(float* dst, const void* src_v, int64_t row_stride,
                                          const Sequence& seq, int row0, int head, int dim) {
  using TileT = Tile<HEAD_DIM>;
  const T* src = static_cast<const T*>(src_v);
  for (int idx = threadIdx.x; idx < TileT::kBlock * HEAD_DIM; idx += TileT::kThreads) {
    const int r = idx / HEAD_DIM;
    const int c = idx % HEAD_DIM;
    const int row = row0 + r;
    float value = 0.f;
    if (row < seq.len && c < dim) {
      value = Convert<T>::load(src + (seq.begin + row) * row_stride +
                               static_cast<int64_t>(head) * dim + c);
    }
    dst[r * TileT::kStride + c] = value;
  }
}

template <int HEAD_DIM>
__device__ __forceinline__ float dot_rows(const float* a, const float* b) {
  float acc = 0.f;
#pragma unroll 16
  for (int d = 0; d < HEAD_DIM; ++d) acc += a[d] * b[d];
  return acc;
}

__device__ __forceinline__ float sigmoidf(float x) { return 1.f / (1.f + expf(-x)); }

}  // namespace freescale::attention::simple
