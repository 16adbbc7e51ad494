// Launchers for the block-sparse token-compressed (PerSRec) attention kernels (sm_80+ tensor
// cores, mma.sync m16n8k16; float16/bfloat16 with fp32 accumulation; head dims up to 128,
// padded to 32/64/128). Launch errors come back as cudaError_t; the ops layer turns them into
// exceptions.
//
// Schedule (DESIGN §5): a query tile visits (1) its sequence's tokens, gathered 64 at a time
// (tokens are seen by every later row, wherever they sit), and (2) the contiguous key tiles
// whose non-token regions can match its own; everything else (the recent x history block,
// cross-segment history) is skipped. With skip_empty_tiles = false the same kernels visit
// every causal tile instead: the dense masked computation.
#pragma once

#include <cuda_runtime_api.h>

#include <cstddef>

#include "attention/compressed_params.h"

namespace freescale::attention {

// Fills params.ws, then writes params.out.
cudaError_t compressed_forward(const CompressedParams& params, cudaStream_t stream);

// Fills params.ws, then writes grad_q (one kernel) and grad_k, grad_v (another).
cudaError_t compressed_backward(const CompressedParams& params, cudaStream_t stream);

// Dynamic shared memory per block that the forward's kernel, and the larger of the backward's
// two, take at this head dim (max(dim_qk, dim_v), up to kCompressedMaxHeadDim). GPUs of sm_86,
// sm_89 and sm_120 offer a block 99 KB, less than the backward takes at head dims over 64.
size_t compressed_forward_shared_bytes(int head_dim);
size_t compressed_backward_shared_bytes(int head_dim);

}  // namespace freescale::attention
