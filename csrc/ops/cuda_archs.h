// Which GPUs the code of a build runs on, from its FREESCALE_CUDA_ARCHS list ("90a;80+PTX"; the
// build's own definition of it separates by ',', which these functions take too).
// Torch-free and CUDA-free, so that CPU-only builds and their tests have it too.
#pragma once

#include <string>
#include <string_view>

namespace freescale::ops {

// True when `archs` holds code that a GPU of compute capability major.minor runs (CUDA C++
// Programming Guide, "Binary Compatibility"): SASS for sm_XY runs on X.Z for Z >= Y, SASS for an
// arch-specific target (sm_90a, sm_100a) only on X.Y itself; "+PTX" adds compute_XY PTX, which
// the driver compiles for any GPU of X.Y or newer (arch-specific PTX: X.Y only). Throws
// std::invalid_argument on an entry that is not of that form.
bool cuda_archs_run_on(std::string_view archs, int major, int minor);

// What an error for a launch that found no code for a GPU of major.minor adds, where `archs`
// (the build's) holds none that runs there: the GPU's arch and the rebuild that fixes it, or
// that it is older than the kernels' sm_80. Empty where `archs` does run there.
std::string missing_code_hint(std::string_view archs, int major, int minor);

}  // namespace freescale::ops
