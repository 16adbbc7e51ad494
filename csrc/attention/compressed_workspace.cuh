// The per-call workspace of the compressed-attention kernels (token lists, tile region ranges),
// built on the device by one small kernel so that scheduling needs no host round trip.
#pragma once

#include <cuda_runtime_api.h>

#include "attention/compressed_params.h"

namespace freescale::attention::compressed {

cudaError_t build_workspace(const CompressedParams& p, cudaStream_t stream);

}  // namespace freescale::attention::compressed
