// The two backward kernels of the compressed attention, instantiated per dtype in their own
// translation units; `head_dim` is the padded dim (32, 64 or 128).
#pragma once

#include <cuda_runtime_api.h>

#include <cstddef>

#include "attention/compressed_params.h"

namespace freescale::attention::compressed {

template <typename T>
cudaError_t launch_grad_q(const CompressedParams& p, int head_dim, cudaStream_t stream);

template <typename T>
cudaError_t launch_grad_kv(const CompressedParams& p, int head_dim, cudaStream_t stream);

// Their dynamic shared memory per block at a padded head dim.
size_t grad_q_shared_bytes(int head_dim);
size_t grad_kv_shared_bytes(int head_dim);

inline int padded_head_dim(const CompressedParams& p) {
  return compressed_padded_head_dim(p.dim_qk > p.dim_v ? p.dim_qk : p.dim_v);
}

}  // namespace freescale::attention::compressed
