#include <cstdint>

#include "attention/head_widths.h"

namespace freescale::attention {
namespace {

constexpr int kThreads = 256;
constexpr int kChunk = 8;  // elements per thread: one 16-byte store

// One thread per 8-column chunk of a dst row, copy blockIdx.y. `Index` is int where every
// copy's chunk count (plus the grid) fits one: the divisions below are the kernel's cost.
template <typename Index>
__global__ void __launch_bounds__(kThreads) copy_head_widths_kernel(const HeadWidthCopies copies) {
  const HeadWidthCopy& c = copies.copy[blockIdx.y];
  const Index heads = copies.heads;
  const Index chunks = (c.dst_dim + kChunk - 1) / kChunk;
  const Index items = static_cast<Index>(copies.tokens) * heads * chunks;
  const auto* src = static_cast<const uint16_t*>(c.src);
  auto* dst = static_cast<uint16_t*>(c.dst);
  // 16-byte accesses where every chunk is aligned (the padded side of every call).
  const bool vector_dst = c.dst_dim % kChunk == 0 && reinterpret_cast<uintptr_t>(dst) % 16 == 0;
  const bool vector_src = src != nullptr && c.src_dim % kChunk == 0 &&
                          c.src_row_stride % kChunk == 0 &&
                          reinterpret_cast<uintptr_t>(src) % 16 == 0;
  const Index step = static_cast<Index>(gridDim.x) * kThreads;
  for (Index i = static_cast<Index>(blockIdx.x) * kThreads + threadIdx.x; i < items; i += step) {
    const Index row = i / chunks;  // token * heads + head
    const int col0 = static_cast<int>(i - row * chunks) * kChunk;
    alignas(16) uint16_t values[kChunk];
    if (vector_src && col0 + kChunk <= c.src_dim) {
      const Index token = row / heads;
      const int64_t at = static_cast<int64_t>(token) * c.src_row_stride +
                         static_cast<int64_t>(row - token * heads) * c.src_dim + col0;
      *reinterpret_cast<uint4*>(values) = *reinterpret_cast<const uint4*>(src + at);
    } else if (src != nullptr && col0 < c.src_dim) {
      const Index token = row / heads;
      const uint16_t* from = src + static_cast<int64_t>(token) * c.src_row_stride +
                             static_cast<int64_t>(row - token * heads) * c.src_dim;
#pragma unroll
      for (int k = 0; k < kChunk; ++k) values[k] = col0 + k < c.src_dim ? from[col0 + k] : 0;
    } else {
#pragma unroll
      for (int k = 0; k < kChunk; ++k) values[k] = 0;
    }
    uint16_t* to = dst + static_cast<int64_t>(row) * c.dst_dim + col0;
    if (vector_dst) {
      *reinterpret_cast<uint4*>(to) = *reinterpret_cast<const uint4*>(values);
    } else {
#pragma unroll
      for (int k = 0; k < kChunk; ++k) {
        if (col0 + k < c.dst_dim) to[k] = values[k];
      }
    }
  }
}

}  // namespace

cudaError_t copy_head_widths(const HeadWidthCopies& copies, cudaStream_t stream) {
  if (copies.count < 0 || copies.count > kMaxHeadWidthCopies || copies.tokens < 0 ||
      copies.heads < 0) {
    return cudaErrorInvalidValue;
  }
  int64_t most_items = 0;
  for (int j = 0; j < copies.count; ++j) {
    const HeadWidthCopy& c = copies.copy[j];
    if (c.dst_dim < 0 || c.src_dim < 0) return cudaErrorInvalidValue;
    const int64_t items = copies.tokens * copies.heads * ((c.dst_dim + kChunk - 1) / kChunk);
    // (An empty tensor's data pointer may be null.)
    if (items > 0 && c.dst == nullptr) return cudaErrorInvalidValue;
    most_items = items > most_items ? items : most_items;
  }
  if (most_items == 0) return cudaSuccess;
  const int64_t blocks = (most_items + kThreads - 1) / kThreads;
  const unsigned grid_x = static_cast<unsigned>(blocks < 8192 ? blocks : 8192);
  const dim3 grid(grid_x, static_cast<unsigned>(copies.count));
  // int indices where the last index plus one grid-stride step still fits.
  if (most_items + int64_t{grid_x} * kThreads < (int64_t{1} << 31)) {
    copy_head_widths_kernel<int><<<grid, kThreads, 0, stream>>>(copies);
  } else {
    copy_head_widths_kernel<int64_t><<<grid, kThreads, 0, stream>>>(copies);
  }
  return cudaGetLastError();
}

}  // namespace freescale::attention
