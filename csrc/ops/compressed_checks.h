// Input checks shared by the CPU and CUDA compressed (PerSRec) attention ops. Metadata only:
// never reads tensor data, so it costs no device synchronization.
#pragma once

#include <ATen/core/Tensor.h>

#include "ops/hstu_checks.h"

namespace freescale::ops {

HstuShapes check_compressed_args(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                                 const at::Tensor& seq_offsets, const at::Tensor& region,
                                 const at::Tensor& is_token, int64_t max_seq_len);

}  // namespace freescale::ops
