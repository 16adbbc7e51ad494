// Host side of the sm_90a HSTU forward: which inputs it takes, the TMA descriptors of q, k and v,
// and the dispatch over dtype and head dim (the kernels are instantiated in hstu_fwd_sm90_d*.cu).
#include "attention/hopper/dispatch.h"
#include "attention/hopper/hstu_fwd_sm90.cuh"
#include "attention/hopper/tensor_maps.h"
#include "attention/hopper/tile_list.h"
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

template <typename T, int D>
cudaError_t run(const HstuParams& p, cudaStream_t stream) {
  using Tiles = FwdTiles<D>;
  Sm90TensorMaps maps;
  const bool encoded = encode_token_rows(&maps.q, p.q, p, D, p.q_row_stride, Tiles::kBlockM) &&
                       encode_token_rows(&maps.k, p.k, p, D, p.k_row_stride, Tiles::kBlockN) &&
                       encode_token_rows(&maps.v, p.v, p, D, p.v_row_stride, Tiles::kBlockN);
  if (!encoded) return cudaErrorInvalidValue;
  if (p.tile_list != nullptr) {
    const cudaError_t err = build_tile_list(p, Tiles::kBlockM, /*rows=*/true, stream);
    if (err != cudaSuccess) return err;
  }
  return launch_forward_sm90<T, D>(p, maps, stream);
}

}  // namespace
}  // namespace hopper

const char* hstu_sm90_device_unsupported() { return hopper::sm90_device_unsupported(); }

int64_t hstu_sm90_forward_workspace_bytes(const HstuParams& p) {
  constexpr int kTile = hopper::FwdTiles<64>::kBlockM;  // the same for every head dim
  static_assert(kTile == hopper::FwdTiles<128>::kBlockM && kTile == hopper::FwdTiles<256>::kBlockM);
  return hopper::tile_list_workspace_bytes(p, kTile);
}

const char* hstu_sm90_forward_unsupported(const HstuParams& p) {
  if (const char* device = hopper::sm90_device_unsupported()) return device;
  if (p.dtype != ScalarKind::kBFloat16 && p.dtype != ScalarKind::kFloat16) {
    return "it takes float16 or bfloat16";
  }
  if (p.dim_qk != p.dim_v || (p.dim_qk != 64 && p.dim_qk != 128 && p.dim_qk != 256)) {
    return "it takes d_qk == d_v in {64, 128, 256}";
  }
  if (!hopper::tma_compatible(p.q, p.q_row_stride) ||
      !hopper::tma_compatible(p.k, p.k_row_stride) ||
      !hopper::tma_compatible(p.v, p.v_row_stride)) {
    return "TMA needs 16-byte aligned q, k, v with row strides that are multiples of 8 elements";
  }
  if (p.total_len >= (int64_t{1} << 31)) return "it takes fewer than 2^31 tokens";
  if (!hopper::work_items_fit(p, hopper::FwdTiles<64>::kBlockM)) {
    return "it takes fewer than 2^30 (sequence, head, 128-row tile) work items";
  }
  if (p.bias.ts_weight != nullptr &&
      p.bias.num_ts_buckets + 1 > hopper::FwdTiles<64>::kMaxTsBuckets) {
    return "it takes time-bias tables of at most 1024 entries";
  }
  if (p.sm90_forward_loop < -1 || p.sm90_forward_loop > 2) {
    return "sm90_forward_loop must be -1 (by shape), 0 (plain), 1 (overlap) or 2 (ping-pong)";
  }
  return nullptr;
}

cudaError_t hstu_sm90_forward(const HstuParams& p, cudaStream_t stream) {
  if (p.batch_size == 0 || p.total_len == 0 || p.num_heads == 0) return cudaSuccess;
  if (hstu_sm90_forward_unsupported(p) != nullptr) return cudaErrorInvalidValue;
  return hopper::dispatch_dtype_and_head_dim(p, [&](auto type, auto dim) {
    return hopper::run<typename decltype(type)::type, decltype(dim)::value>(p, stream);
  });
}

}  // namespace freescale::attention
