// Copies between [T, H, d] token rows of 16-bit values with different head widths d, several
// tensors in one launch, torch-free.
//
// The sm_90a kernels take head dims 64, 128 and 256; the ops layer runs other head dims (ML-1M's
// 25 and 50) on copies padded with zero columns and cuts the outputs back. As torch ops that was
// a zero fill and a strided copy per input and a copy per output: 7 kernels around the d = 25
// forward and 11 around its backward, which took 27.6 and 48.7 us beside kernels of 19.1 and
// 48.0 us on an H200 (hstu_kernel_times.py, docs/hstu_sm90/14.md). One launch each way made
// those calls 1.29-1.45x faster forward and 1.12-1.33x backward on an H100
// (docs/hstu_sm90/15.md), mostly by the launches and gaps it removes.
#pragma once

#include <cuda_runtime_api.h>

#include <cstdint>

namespace freescale::attention {

struct HeadWidthCopy {
  const void* src = nullptr;   // [T, H, src_dim], heads dense, tokens src_row_stride apart;
                               // nullptr: dst is zero-filled
  int64_t src_row_stride = 0;  // in elements
  int src_dim = 0;
  void* dst = nullptr;  // [T, H, dst_dim], dense
  int dst_dim = 0;
};

// Tensors one launch takes: q, k, v, dO and the backward's fp32 dQ accumulator (zeroed as a
// 16-bit tensor twice as wide).
constexpr int kMaxHeadWidthCopies = 5;

struct HeadWidthCopies {
  HeadWidthCopy copy[kMaxHeadWidthCopies];
  int count = 0;
  int64_t tokens = 0;
  int heads = 0;
};

// For each copy, dst[t, h, c] = src[t, h, c] where c < src_dim, else 0 (c < dst_dim). Nothing
// runs for zero tokens, heads or copies. cudaErrorInvalidValue for a count past
// kMaxHeadWidthCopies, a negative size or a missing dst where there is something to write.
cudaError_t copy_head_widths(const HeadWidthCopies& copies, cudaStream_t stream);

}  // namespace freescale::attention
