// Dispatch of an sm_90a launch over the 16-bit dtype and the head dim the kernels are
// instantiated for.
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime_api.h>

#include <type_traits>

#include "attention/hstu_params.h"

namespace freescale::attention::hopper {

template <typename T>
struct TypeTag {
  using type = T;
};

// run(TypeTag<T>{}, std::integral_constant<int, D>{}) for p's dtype (bf16, fp16) and head dim
// (64, 128, 256); cudaErrorInvalidValue for anything else.
template <typename Run>
cudaError_t dispatch_dtype_and_head_dim(const HstuParams& p, Run&& run) {
  const auto by_head_dim = [&](auto type) -> cudaError_t {
    switch (p.dim_qk) {
      case 64:
        return run(type, std::integral_constant<int, 64>{});
      case 128:
        return run(type, std::integral_constant<int, 128>{});
      case 256:
        return run(type, std::integral_constant<int, 256>{});
    }
    return cudaErrorInvalidValue;
  };
  switch (p.dtype) {
    case ScalarKind::kBFloat16:
      return by_head_dim(TypeTag<__nv_bfloat16>{});
    case ScalarKind::kFloat16:
      return by_head_dim(TypeTag<__half>{});
    default:
      return cudaErrorInvalidValue;
  }
}

}  // namespace freescale::attention::hopper
