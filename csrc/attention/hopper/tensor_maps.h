// Host helpers of the sm_90a kernels: whether this build and device can run them, and TMA
// descriptors of the [T, H, dim] token-major tensors of an HSTU call.
#pragma once

#include <cuda.h>

#include <cstdint>

#include "attention/hstu_params.h"

namespace freescale::attention::hopper {

// Why sm_90a kernels cannot run on the current device (build without sm_90a code, another GPU,
// a driver without cuTensorMapEncodeTiled), or nullptr if they can.
const char* sm90_device_unsupported();

// TMA reads 16-byte aligned tensors whose row strides are multiples of 16 bytes.
bool tma_compatible(const void* data, int64_t row_stride_elements);

// A 3-D map of a 16-bit [total_len, num_heads, dim] tensor with strided rows, read in boxes of
// 64 head-dim elements x 1 head x `box_rows` tokens (128 bytes wide, the 128-byte swizzle span).
// Tokens past total_len read as zeros.
bool encode_token_rows(CUtensorMap* map, const void* data, const HstuParams& p, int dim,
                       int64_t row_stride, int box_rows);

// A 3-D map of the fp32 [total_len, num_heads, dim] dQ accumulator (contiguous), in boxes of 32
// floats x 1 head x `box_rows` tokens, 128-byte swizzled: the target of the backward's bulk dQ
// reductions.
bool encode_dq_accum(CUtensorMap* map, const HstuParams& p, int dim, int box_rows);

}  // namespace freescale::attention::hopper
