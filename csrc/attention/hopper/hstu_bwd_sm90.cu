// Host side of the sm_90a HSTU backward: which inputs it takes, the TMA descriptors, the
// dispatch over dtype and head dim (kernels instantiated in hstu_bwd_sm90_d*.cu) and the pass
// that turns the fp32 dQ workspace into grad_q.
#include <algorithm>

#include "attention/hopper/dispatch.h"
#include "attention/hopper/hstu_bwd_sm90.cuh"
#include "attention/hopper/tensor_maps.h"
#include "attention/hopper/tile_list.h"
#include "attention/hstu_sm90.h"

namespace freescale::attention {
namespace hopper {

#define FREESCALE_DECLARE_BWD(T, D)                                         \
  extern template cudaError_t launch_backward_sm90<T, D>(const HstuParams&, \
                                                         const Sm90BackwardMaps&, cudaStream_t);
FREESCALE_DECLARE_BWD(__nv_bfloat16, 64)
FREESCALE_DECLARE_BWD(__nv_bfloat16, 128)
FREESCALE_DECLARE_BWD(__nv_bfloat16, 256)
FREESCALE_DECLARE_BWD(__half, 64)
FREESCALE_DECLARE_BWD(__half, 128)
FREESCALE_DECLARE_BWD(__half, 256)
#undef FREESCALE_DECLARE_BWD

namespace {

// grad_q = dq_accum * scale, rounded to T; four elements per thread and step (d is a multiple
// of 64, so rows never split a group of four).
template <typename T>
__global__ void dq_from_workspace_kernel(const float4* __restrict__ acc, T* __restrict__ out,
                                         int64_t groups, float scale) {
  for (int64_t idx = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; idx < groups;
       idx += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const float4 a = acc[idx];
    uint2 packed;
    packed.x = mma::pack<T>(a.x * scale, a.y * scale);
    packed.y = mma::pack<T>(a.z * scale, a.w * scale);
    reinterpret_cast<uint2*>(out)[idx] = packed;
  }
}

template <typename T, int D>
cudaError_t run(const HstuParams& p, cudaStream_t stream) {
  using Tiles = BwdTiles<D>;
  Sm90BackwardMaps maps;
  const bool encoded =
      encode_token_rows(&maps.q, p.q, p, D, p.q_row_stride, Tiles::kBlockM) &&
      encode_token_rows(&maps.k, p.k, p, D, p.k_row_stride, Tiles::kBlockN) &&
      encode_token_rows(&maps.v, p.v, p, D, p.v_row_stride, Tiles::kBlockN) &&
      encode_token_rows(&maps.grad_out, p.grad_out, p, D, p.grad_out_row_stride, Tiles::kBlockM);
  if (!encoded) return cudaErrorInvalidValue;
  if (p.tile_list != nullptr) {
    const cudaError_t err = build_tile_list(p, Tiles::kBlockN, /*rows=*/false, stream);
    if (err != cudaSuccess) return err;
  }
  cudaError_t err = launch_backward_sm90<T, D>(p, maps, stream);
  if (err != cudaSuccess) return err;
  const int64_t groups = p.total_len * p.num_heads * D / 4;
  const int threads = 256;
  const int64_t blocks = (groups + threads - 1) / threads;
  const unsigned grid = static_cast<unsigned>(blocks < 65536 ? blocks : 65536);
  dq_from_workspace_kernel<T><<<grid, threads, 0, stream>>>(
      reinterpret_cast<const float4*>(p.dq_accum), static_cast<T*>(p.grad_q), groups,
      p.alpha / static_cast<float>(p.max_seq_len));
  return cudaGetLastError();
}

}  // namespace
}  // namespace hopper

int64_t hstu_sm90_backward_workspace_bytes(const HstuParams& p) {
  const int tile =
      p.dim_qk == 256 ? hopper::BwdTiles<256>::kBlockN : hopper::BwdTiles<128>::kBlockN;
  return hopper::tile_list_applies(p, tile) && hopper::tile_list_pays(p, tile)
             ? hopper::tile_list_bytes(p, tile)
             : 0;
}

int hstu_sm90_backward_grad_copies(const HstuParams& p) {
  // The blocks of a wave start on their diagonals together and walk the same offsets j - i
  // step by step: each step every block adds 256 position sums to the same 128 floats. 32
  // copies put a few blocks on each (a wave is one block per SM); the sum over them is one
  // small pass. At most 32 MiB of copies, for very long max_seq_len. (Measured on an H100,
  // docs/benchmarks.md, twelfth measurement: such adds alone ran 1.18x faster onto 32 copies,
  // but they cost about 0.09 us per step against the position table's 1.8 us in the kernel, whose
  // cost the copies did not move: the atomics are not where that time goes.)
  constexpr int64_t kCopies = 32;
  constexpr int64_t kMaxBytes = int64_t{32} << 20;
  const int64_t floats = (p.bias.pos_weight != nullptr ? 2 * int64_t{p.max_seq_len} - 1 : 0) +
                         (p.bias.ts_weight != nullptr ? p.bias.num_ts_buckets + 1 : 0);
  if (floats == 0) return 1;
  return static_cast<int>(std::clamp<int64_t>(kMaxBytes / (4 * floats), 1, kCopies));
}

const char* hstu_sm90_backward_unsupported(const HstuParams& p) {
  // (Includes the time-bias table's limit, which the backward shares.)
  static_assert(hopper::BwdTiles<64>::kMaxTsBuckets == hopper::FwdTiles<64>::kMaxTsBuckets);
  if (const char* forward = hstu_sm90_forward_unsupported(p)) return forward;
  if (!hopper::work_items_fit(p, hopper::BwdTiles<256>::kBlockN)) {  // (the smaller key tile)
    return "it takes fewer than 2^30 (sequence, head, key tile) work items";
  }
  if (!hopper::tma_compatible(p.grad_out, p.grad_out_row_stride)) {
    return "TMA needs a 16-byte aligned grad_out with a row stride that is a multiple of 8";
  }
  return nullptr;
}

cudaError_t hstu_sm90_backward(const HstuParams& p, cudaStream_t stream) {
  if (p.batch_size == 0 || p.total_len == 0 || p.num_heads == 0) return cudaSuccess;
  if (hstu_sm90_backward_unsupported(p) != nullptr || p.dq_accum == nullptr ||
      p.bias.grad_copies < 1) {
    return cudaErrorInvalidValue;
  }
  return hopper::dispatch_dtype_and_head_dim(p, [&](auto type, auto dim) {
    return hopper::run<typename decltype(type)::type, decltype(dim)::value>(p, stream);
  });
}

}  // namespace freescale::attention
