// The two backward kernels of the compressed attention, instantiated per dtype in their own
// translation units; `head_dim` is the padded dim (32, 64 or 128).
#pragma once

#include <cuda_runtime_api.h>

#include "attention/compressed_params.h"

namespace freescale::attention::compressed {

template <typename T>
cudaError_t launch_grad_q(const CompressedParams& p, int head_dim, cudaStream_t stream);

template <typename T>
cudaError_t launch_grad_kv(const CompressedParams& p, int head_dim, cudaStream_t stream);

inline int padded_head_dim(const CompressedParams& p) {
  const int dim = p.dim_qk > p.dim_v ? p.dim_qk : p.dim_v;
  return dim <= 32 ? 32 : (dim <= 64 ? 64 : 128);
}

}  // namespace freescale::attention::compressed
