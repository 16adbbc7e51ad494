// Launchers for the simple (portable, CUDA-core) HSTU attention kernels.
//
// These are the correctness-first kernels: any GPU, any head dim up to 256 (smaller dims are
// padded to 32/64/128/256 inside the kernel), fp32/fp16/bf16 with fp32 accumulation, every
// mask feature and the fused relative bias. Launch errors come back as cudaError_t; the ops
// layer turns them into exceptions.
#pragma once

#include <cuda_runtime_api.h>

#include "attention/hstu_params.h"

namespace freescale::attention {

constexpr int kSimpleMaxHeadDim = 256;

cudaError_t hstu_simple_forward(const HstuParams& params, cudaStream_t stream);

// Writes grad_q, grad_k, grad_v and accumulates into bias.grad_pos / bias.grad_ts.
cudaError_t hstu_simple_backward(const HstuParams& params, cudaStream_t stream);

}  // namespace freescale::attention
