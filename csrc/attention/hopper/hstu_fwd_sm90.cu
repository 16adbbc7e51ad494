// Host side of the sm_90a HSTU forward: which inputs it takes, the TMA descriptors of q, k and v,
// and the dispatch over dtype and head dim (the kernels are instantiated in hstu_fwd_sm90_d*.cu).
#include <cuda.h>

#include <cstdint>
#include <string_view>

#include "attention/hopper/hstu_fwd_sm90.cuh"
#include "attention/hstu_sm90.h"

namespace freescale::attention {
namespace hopper {

#define FREESCALE_DECLARE_FWD(T, D)                                                               \
  extern template cudaError_t launch_forward_sm90<T, D>(const HstuParams&, const Sm90TensorMaps&, \
                                                        cudaStream_t);
FREESCALE_DECLARE_FWD(__nv_bfloat16, 64)
FREESCALE_DECLARE_FWD(__nv_bfloat16, 128)
FREESCALE_DECLARE_FWD(__nv_bfloat16, 256)
FREESCALE_DECLARE_FWD(__half, 64)
FREESCALE_DECLARE_FWD(__half, 128)
FREESCALE_DECLARE_FWD(__half, 256)
#undef FREESCALE_DECLARE_FWD

namespace {

using EncodeTiled = CUresult (*)(CUtensorMap*, CUtensorMapDataType, cuuint32_t, void*,
                                 const cuuint64_t*, const cuuint64_t*, const cuuint32_t*,
                                 const cuuint32_t*, CUtensorMapInterleave, CUtensorMapSwizzle,
                                 CUtensorMapL2promotion, CUtensorMapFloatOOBfill);

// cuTensorMapEncodeTiled through the runtime's driver entry point, so that the extension does
// not link libcuda itself.
EncodeTiled encode_tiled() {
  static EncodeTiled fn = []() -> EncodeTiled {
    void* ptr = nullptr;
    cudaDriverEntryPointQueryResult found = cudaDriverEntryPointSymbolNotFound;
    if (cudaGetDriverEntryPointByVersion("cuTensorMapEncodeTiled", &ptr, 12000, cudaEnableDefault,
                                         &found) != cudaSuccess ||
        found != cudaDriverEntryPointSuccess) {
      return nullptr;
    }
    return reinterpret_cast<EncodeTiled>(ptr);
  }();
  return fn;
}

// [T, H, dim] with strided rows, read in boxes of 64 head-dim elements x 1 head x `rows` tokens
// (128 bytes wide, the 128-byte swizzle span). Rows past T read as zeros.
bool encode_rows(CUtensorMap* map, const void* data, const HstuParams& p, int dim,
                 int64_t row_stride, int rows) {
  const EncodeTiled encode = encode_tiled();
  if (encode == nullptr) return false;
  const CUtensorMapDataType type = p.dtype == ScalarKind::kBFloat16
                                       ? CU_TENSOR_MAP_DATA_TYPE_BFLOAT16
                                       : CU_TENSOR_MAP_DATA_TYPE_FLOAT16;
  const cuuint64_t dims[3] = {static_cast<cuuint64_t>(dim), static_cast<cuuint64_t>(p.num_heads),
                              static_cast<cuuint64_t>(p.total_len)};
  const cuuint64_t strides[2] = {static_cast<cuuint64_t>(dim) * 2,
                                 static_cast<cuuint64_t>(row_stride) * 2};
  const cuuint32_t box[3] = {64, 1, static_cast<cuuint32_t>(rows)};
  const cuuint32_t element_strides[3] = {1, 1, 1};
  return encode(map, type, 3, const_cast<void*>(data), dims, strides, box, element_strides,
                CU_TENSOR_MAP_INTERLEAVE_NONE, CU_TENSOR_MAP_SWIZZLE_128B,
                CU_TENSOR_MAP_L2_PROMOTION_L2_256B,
                CU_TENSOR_MAP_FLOAT_OOB_FILL_NONE) == CUDA_SUCCESS;
}

template <int D>
cudaError_t encode_maps(const HstuParams& p, Sm90TensorMaps* maps) {
  using Tiles = FwdTiles<D>;
  const bool ok = encode_rows(&maps->q, p.q, p, D, p.q_row_stride, Tiles::kBlockM) &&
                  encode_rows(&maps->k, p.k, p, D, p.k_row_stride, Tiles::kBlockN) &&
                  encode_rows(&maps->v, p.v, p, D, p.v_row_stride, Tiles::kBlockN);
  return ok ? cudaSuccess : cudaErrorInvalidValue;
}

template <typename T, int D>
cudaError_t run(const HstuParams& p, cudaStream_t stream) {
  Sm90TensorMaps maps;
  const cudaError_t err = encode_maps<D>(p, &maps);
  if (err != cudaSuccess) return err;
  return launch_forward_sm90<T, D>(p, maps, stream);
}

template <typename T>
cudaError_t dispatch_head_dim(const HstuParams& p, cudaStream_t stream) {
  switch (p.dim_qk) {
    case 64:
      return run<T, 64>(p, stream);
    case 128:
      return run<T, 128>(p, stream);
    case 256:
      return run<T, 256>(p, stream);
  }
  return cudaErrorInvalidValue;
}

bool aligned16(const void* ptr) { return reinterpret_cast<uintptr_t>(ptr) % 16 == 0; }

}  // namespace
}  // namespace hopper

const char* hstu_sm90_forward_unsupported(const HstuParams& p) {
  if (std::string_view(FREESCALE_CUDA_ARCHS).find("90a") == std::string_view::npos) {
    return "the extension was built without sm_90a code (FREESCALE_CUDA_ARCHS)";
  }
  int device = 0;
  int major = 0;
  if (cudaGetDevice(&device) != cudaSuccess ||
      cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, device) != cudaSuccess ||
      major != 9) {
    return "it needs an sm_90 GPU (H100/H200)";
  }
  if (p.dtype != ScalarKind::kBFloat16 && p.dtype != ScalarKind::kFloat16) {
    return "it takes float16 or bfloat16";
  }
  if (p.dim_qk != p.dim_v || (p.dim_qk != 64 && p.dim_qk != 128 && p.dim_qk != 256)) {
    return "it takes d_qk == d_v in {64, 128, 256}";
  }
  if (!hopper::aligned16(p.q) || !hopper::aligned16(p.k) || !hopper::aligned16(p.v) ||
      p.q_row_stride % 8 != 0 || p.k_row_stride % 8 != 0 || p.v_row_stride % 8 != 0) {
    return "TMA needs 16-byte aligned q, k, v with row strides that are multiples of 8 elements";
  }
  if (p.total_len >= (int64_t{1} << 31)) return "it takes fewer than 2^31 tokens";
  if (hopper::encode_tiled() == nullptr) return "the driver has no cuTensorMapEncodeTiled";
  return nullptr;
}

cudaError_t hstu_sm90_forward(const HstuParams& p, cudaStream_t stream) {
  if (p.batch_size == 0 || p.total_len == 0 || p.num_heads == 0) return cudaSuccess;
  if (hstu_sm90_forward_unsupported(p) != nullptr) return cudaErrorInvalidValue;
  if (p.dtype == ScalarKind::kBFloat16) return hopper::dispatch_head_dim<__nv_bfloat16>(p, stream);
  return hopper::dispatch_head_dim<__half>(p, stream);
}

}  // namespace freescale::attention
