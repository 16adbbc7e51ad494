// Turns CUDA error codes into exceptions (never exit()).
#pragma once

#include <c10/util/Exception.h>
#include <cuda_runtime_api.h>

#define FREESCALE_CUDA_CHECK(expr, what)                             \
  do {                                                               \
    const cudaError_t freescale_err_ = (expr);                       \
    TORCH_CHECK(freescale_err_ == cudaSuccess, what,                 \
                " failed: ", cudaGetErrorName(freescale_err_), ": ", \
                cudaGetErrorString(freescale_err_));                 \
  } while (0)
