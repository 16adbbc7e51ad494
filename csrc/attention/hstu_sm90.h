// Launchers for the sm_90a (Hopper) HSTU attention kernels.
//
// The fast path of torch.ops.freescale.hstu_attention on H100/H200: float16/bfloat16, head dims
// 64, 128 and 256 (d_qk == d_v), TMA-compatible layouts, every mask feature and the fused
// relative bias. Other inputs take the simple kernels (hstu_simple.h); the
// ops layer asks the `*_unsupported` functions first.
#pragma once

#include <cuda_runtime_api.h>

#include "attention/hstu_params.h"

namespace freescale::attention {

// Why no sm_90a kernel can run on the current device (build, GPU, driver), or nullptr.
const char* hstu_sm90_device_unsupported();

// Why the sm_90a forward cannot run these inputs on the current device, or nullptr if it can.
const char* hstu_sm90_forward_unsupported(const HstuParams& params);

// Workspace bytes (params.tile_list) the sm_90a forward / backward can use for these inputs;
// 0: none (they then launch a block for every possible tile).
int64_t hstu_sm90_forward_workspace_bytes(const HstuParams& params);
int64_t hstu_sm90_backward_workspace_bytes(const HstuParams& params);

cudaError_t hstu_sm90_forward(const HstuParams& params, cudaStream_t stream);

// Why the sm_90a backward cannot run these inputs (it takes time tables of up to 1024
// entries), or nullptr if it can.
const char* hstu_sm90_backward_unsupported(const HstuParams& params);

// How many copies of the bias gradient tables the sm_90a backward wants for these inputs
// (HstuBiasParams::grad_copies; 1 without the bias).
int hstu_sm90_backward_grad_copies(const HstuParams& params);

// Writes grad_q, grad_k, grad_v and, with several bias gradient copies, their sums
// (grad_pos_sum, grad_ts_sum); needs params.dq_accum (fp32 [T, H, d], zeroed). dQ sums fp32
// partials over key blocks in any order (TMA reductions or atomics), so it is not bitwise
// reproducible run to run (dK, dV are).
cudaError_t hstu_sm90_backward(const HstuParams& params, cudaStream_t stream);

}  // namespace freescale::attention
