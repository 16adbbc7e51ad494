// The sm_90a HSTU backward for head dim 256 (one head dim per file keeps builds parallel).
#include "attention/hopper/hstu_bwd_sm90.cuh"

namespace freescale::attention::hopper {

template cudaError_t launch_backward_sm90<__nv_bfloat16, 256>(const HstuParams&,
                                                              const Sm90BackwardMaps&,
                                                              cudaStream_t);
template cudaError_t launch_backward_sm90<__half, 256>(const HstuParams&, const Sm90BackwardMaps&,
                                                       cudaStream_t);

}  // namespace freescale::attention::hopper
