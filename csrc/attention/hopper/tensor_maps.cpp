#include "attention/hopper/tensor_maps.h"

#include <cuda_runtime_api.h>

#include <string_view>

namespace freescale::attention::hopper {
namespace {

using EncodeTiled = CUresult (*)(CUtensorMap*, CUtensorMapDataType, cuuint32_t, void*,
                                 const cuuint64_t*, const cuuint64_t*, const cuuint32_t*,
                                 const cuuint32_t*, CUtensorMapInterleave, CUtensorMapSwizzle,
                                 CUtensorMapL2promotion, CUtensorMapFloatOOBfill);

// cuTensorMapEncodeTiled through the runtime's driver entry point, so that the extension does
// not link libcuda itself.
EncodeTiled encode_tiled() {
  static const EncodeTiled fn = []() -> EncodeTiled {
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

// A 3-D map of a [total_len, num_heads, dim] tensor of `element_bytes` elements whose rows lie
// `row_stride` elements apart, in boxes of `box_cols` x 1 head x `box_rows` tokens, 128-byte
// swizzled (box_cols * element_bytes = 128, the swizzle span).
bool encode_rows(CUtensorMap* map, CUtensorMapDataType type, int element_bytes, const void* data,
                 const HstuParams& p, int dim, int64_t row_stride, int box_cols, int box_rows) {
  const EncodeTiled encode = encode_tiled();
  if (encode == nullptr) return false;
  const cuuint64_t dims[3] = {static_cast<cuuint64_t>(dim), static_cast<cuuint64_t>(p.num_heads),
                              static_cast<cuuint64_t>(p.total_len)};
  const cuuint64_t strides[2] = {static_cast<cuuint64_t>(dim) * element_bytes,
                                 static_cast<cuuint64_t>(row_stride) * element_bytes};
  const cuuint32_t box[3] = {static_cast<cuuint32_t>(box_cols), 1,
                             static_cast<cuuint32_t>(box_rows)};
  const cuuint32_t element_strides[3] = {1, 1, 1};
  return encode(map, type, 3, const_cast<void*>(data), dims, strides, box, element_strides,
                CU_TENSOR_MAP_INTERLEAVE_NONE, CU_TENSOR_MAP_SWIZZLE_128B,
                CU_TENSOR_MAP_L2_PROMOTION_L2_256B,
                CU_TENSOR_MAP_FLOAT_OOB_FILL_NONE) == CUDA_SUCCESS;
}

}  // namespace

const char* sm90_device_unsupported() {
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
  if (encode_tiled() == nullptr) return "the driver has no cuTensorMapEncodeTiled";
  return nullptr;
}

bool tma_compatible(const void* data, int64_t row_stride_elements) {
  return reinterpret_cast<uintptr_t>(data) % 16 == 0 && row_stride_elements % 8 == 0;
}

bool encode_token_rows(CUtensorMap* map, const void* data, const HstuParams& p, int dim,
                       int64_t row_stride, int box_rows) {
  const CUtensorMapDataType type = p.dtype == ScalarKind::kBFloat16
                                       ? CU_TENSOR_MAP_DATA_TYPE_BFLOAT16
                                       : CU_TENSOR_MAP_DATA_TYPE_FLOAT16;
  return encode_rows(map, type, 2, data, p, dim, row_stride, 64, box_rows);
}

bool encode_dq_accum(CUtensorMap* map, const HstuParams& p, int dim, int box_rows) {
  return encode_rows(map, CU_TENSOR_MAP_DATA_TYPE_FLOAT32, 4, p.dq_accum, p, dim,
                     static_cast<int64_t>(dim) * p.num_heads, 32, box_rows);
}

}  // namespace freescale::attention::hopper
