// The sm_90a HSTU forward for head dim 64 (one head dim per file keeps builds parallel).
#include "attention/hopper/hstu_fwd_sm90.cuh"

namespace freescale::attention::hopper {

template cudaError_t launch_forward_sm90<__nv_bfloat16, 64>(const HstuParams&,
                                                            const Sm90TensorMaps&, cudaStream_t);
template cudaError_t launch_forward_sm90<__half, 64>(const HstuParams&, const Sm90TensorMaps&,
                                                     cudaStream_t);

}  // namespace freescale::attention::hopper
