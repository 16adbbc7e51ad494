#include "ops/cuda_check.h"

#include "ops/cuda_archs.h"

namespace freescale::ops {

std::string kernel_image_hint(cudaError_t err) {
  if (err != cudaErrorNoKernelImageForDevice && err != cudaErrorInvalidDeviceFunction) return {};
  int device = 0;
  int major = 0;
  int minor = 0;
  if (cudaGetDevice(&device) != cudaSuccess ||
      cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, device) != cudaSuccess ||
      cudaDeviceGetAttribute(&minor, cudaDevAttrComputeCapabilityMinor, device) != cudaSuccess) {
    return {};
  }
  return missing_code_hint(FREESCALE_CUDA_ARCHS, major, minor);
}

}  // namespace freescale::ops
