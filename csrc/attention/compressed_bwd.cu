// Backward launcher of the compressed attention: the workspace, then dQ and dK/dV (two
// kernels on one stream; neither accumulates atomically, so gradients are deterministic).
#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include "attention/compressed.h"
#include "attention/compressed_bwd.cuh"
#include "attention/compressed_workspace.cuh"

namespace freescale::attention {

size_t compressed_backward_shared_bytes(int head_dim) {
  const int dim = compressed_padded_head_dim(head_dim);
  const size_t grad_q = compressed::grad_q_shared_bytes(dim);
  const size_t grad_kv = compressed::grad_kv_shared_bytes(dim);
  return grad_q > grad_kv ? grad_q : grad_kv;
}

cudaError_t compressed_backward(const CompressedParams& p, cudaStream_t stream) {
  if (p.total_len == 0 || p.batch_size == 0 || p.num_heads == 0) return cudaSuccess;
  if (p.dim_qk > kCompressedMaxHeadDim || p.dim_v > kCompressedMaxHeadDim) {
    return cudaErrorInvalidValue;
  }
  cudaError_t err = compressed::build_workspace(p, stream);
  if (err != cudaSuccess) return err;
  const int dim = compressed::padded_head_dim(p);
  if (p.dtype == ScalarKind::kBFloat16) {
    err = compressed::launch_grad_q<__nv_bfloat16>(p, dim, stream);
    if (err == cudaSuccess) err = compressed::launch_grad_kv<__nv_bfloat16>(p, dim, stream);
    return err;
  }
  if (p.dtype == ScalarKind::kFloat16) {
    err = compressed::launch_grad_q<__half>(p, dim, stream);
    if (err == cudaSuccess) err = compressed::launch_grad_kv<__half>(p, dim, stream);
    return err;
  }
  return cudaErrorInvalidValue;
}

}  // namespace freescale::attention
