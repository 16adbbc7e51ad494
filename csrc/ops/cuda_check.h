// Turns CUDA error codes into exceptions (never exit()).
#pragma once

#include <c10/util/Exception.h>
#include <cuda_runtime_api.h>

#include <string>

namespace freescale::ops {

// For a launch that found no code for the current GPU (cudaErrorNoKernelImageForDevice,
// cudaErrorInvalidDeviceFunction): missing_code_hint (cuda_archs.h) for this build's
// FREESCALE_CUDA_ARCHS and the GPU. Empty for other errors.
std::string kernel_image_hint(cudaError_t err);

}  // namespace freescale::ops

#define FREESCALE_CUDA_CHECK(expr, what)                                                          \
  do {                                                                                            \
    const cudaError_t freescale_err_ = (expr);                                                    \
    TORCH_CHECK(                                                                                  \
        freescale_err_ == cudaSuccess, what, " failed: ", cudaGetErrorName(freescale_err_), ": ", \
        cudaGetErrorString(freescale_err_), ::freescale::ops::kernel_image_hint(freescale_err_)); \
  } while (0)
