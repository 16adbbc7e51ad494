// Launchers for the sm_90a (Hopper) HSTU attention kernels.
//
// The fast path of torch.ops.freescale.hstu_attention on H100/H200: float16/bfloat16, head dims
// 64, 128 and 256 (d_qk == d_v), TMA-compatible layouts. Every mask feature and the fused
// relative bias are supported. Other inputs take the simple kernels (hstu_simple.h); the ops
// layer asks `hstu_sm90_forward_unsupported` first.
#pragma once

#include <cuda_runtime_api.h>

#include "attention/hstu_params.h"

namespace freescale::attention {

// Why the sm_90a forward cannot run these inputs on the current device, or nullptr if it can.
const char* hstu_sm90_forward_unsupported(const HstuParams& params);

cudaError_t hstu_sm90_forward(const HstuParams& params, cudaStream_t stream);

}  // namespace freescale::attention
