// Helpers compiled for both the host and the device (torch-free).
#pragma once

#if defined(__CUDACC__)
#define FS_HOST_DEVICE __host__ __device__ __forceinline__
#else
#define FS_HOST_DEVICE inline
#endif

namespace freescale::attention {

FS_HOST_DEVICE int imin(int a, int b) { return a < b ? a : b; }
FS_HOST_DEVICE int imax(int a, int b) { return a > b ? a : b; }

}  // namespace freescale::attention
