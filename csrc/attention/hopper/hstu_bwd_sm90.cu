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

// A time bucket's floats are summed by one warp (ts_blocks, the epilogue's shuffles).
static_assert(kTsGradLanes >= 1 && kTsGradLanes <= 32, "a bucket's floats must fit one warp");

// The bias gradient tables' copies (HstuBiasParams::grad_copies) and where their sums go.
struct TableCopySums {
  const float* pos = nullptr;  // [copies][pos_len]
  float* pos_sum = nullptr;
  int pos_len = 0;
  const float* ts = nullptr;  // [copies][ts_len][kTsGradLanes]
  float* ts_sum = nullptr;
  int ts_len = 0;
  int copies = 0;
  // The epilogue's blocks of the sums: one entry per thread for the position table, one per
  // warp for the time-bucket table (lane l < kTsGradLanes sums float l of the entry over the
  // copies, the other lanes add nothing, and the warp's shuffles add the lanes up).
  __host__ __device__ unsigned pos_blocks(int threads) const {
    return (pos_len + threads - 1) / threads;
  }
  __host__ __device__ unsigned ts_blocks(int threads) const {
    return (ts_len * 32 + threads - 1) / threads;
  }
};

// The backward's last pass. Blocks below dq_blocks: grad_q = dq_accum * scale, rounded to T,
// four elements per thread and step (d is a multiple of 64, so rows never split a group of
// four). The blocks past them: one table entry per thread, the sum of its copies, so that no
// reduction per table follows the backward (ML-1M's bias backward 1.06-1.08x on an H100,
// docs/hstu_sm90/15.md).
template <typename T>
__global__ void backward_epilogue_kernel(const float4* __restrict__ acc, T* __restrict__ out,
                                         int64_t groups, float scale, unsigned dq_blocks,
                                         const TableCopySums tables) {
  if (blockIdx.x >= dq_blocks) {
    const unsigned pos_blocks = tables.pos_blocks(blockDim.x);
    if (blockIdx.x < dq_blocks + pos_blocks) {
      const int at = static_cast<int>((blockIdx.x - dq_blocks) * blockDim.x + threadIdx.x);
      if (at >= tables.pos_len) return;
      float sum = 0.f;
      for (int c = 0; c < tables.copies; ++c) {
        sum += tables.pos[static_cast<int64_t>(c) * tables.pos_len + at];
      }
      tables.pos_sum[at] = sum;
      return;
    }
    const int slot =
        static_cast<int>((blockIdx.x - dq_blocks - pos_blocks) * blockDim.x + threadIdx.x);
    const int at = slot / 32;
    const int lane = slot % 32;
    float sum = 0.f;
    if (at < tables.ts_len && lane < kTsGradLanes) {
      for (int c = 0; c < tables.copies; ++c) {
        sum += tables.ts[(static_cast<int64_t>(c) * tables.ts_len + at) * kTsGradLanes + lane];
      }
    }
    for (int offset = 16; offset > 0; offset /= 2) sum += __shfl_xor_sync(0xffffffffu, sum, offset);
    if (lane == 0 && at < tables.ts_len) tables.ts_sum[at] = sum;
    return;
  }
  for (int64_t idx = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; idx < groups;
       idx += static_cast<int64_t>(dq_blocks) * blockDim.x) {
    const float4 a = acc[idx];
    uint2 packed;
    packed.x = mma::pack<T>(a.x * scale, a.y * scale);
    packed.y = mma::pack<T>(a.z * scale, a.w * scale);
    reinterpret_cast<uint2*>(out)[idx] = packed;
  }
}

// The table sums the epilogue writes for `p` (none with one copy: the tables are the sums).
TableCopySums table_copy_sums(const HstuParams& p) {
  TableCopySums tables;
  if (p.bias.grad_copies <= 1) return tables;
  tables.copies = p.bias.grad_copies;
  if (p.bias.grad_pos != nullptr) {
    tables.pos = p.bias.grad_pos;
    tables.pos_sum = p.bias.grad_pos_sum;
    tables.pos_len = 2 * p.max_seq_len - 1;
  }
  if (p.bias.grad_ts != nullptr) {
    tables.ts = p.bias.grad_ts;
    tables.ts_sum = p.bias.grad_ts_sum;
    tables.ts_len = p.bias.num_ts_buckets + 1;
  }
  return tables;
}

template <typename T, int D>
cudaError_t run(const HstuParams& p, cudaStream_t stream) {
  using Tiles = BwdTiles<D>;
  Sm90BackwardMaps maps{};
  const bool encoded =
      encode_token_rows(&maps.q, p.q, p, D, p.q_row_stride, Tiles::kBlockM) &&
      encode_token_rows(&maps.k, p.k, p, D, p.k_row_stride, Tiles::kBlockN) &&
      encode_token_rows(&maps.v, p.v, p, D, p.v_row_stride, Tiles::kBlockN) &&
      encode_token_rows(&maps.grad_out, p.grad_out, p, D, p.grad_out_row_stride, Tiles::kBlockM) &&
      (!Tiles::runs_bulk_dq(p) || encode_dq_accum(&maps.dq_accum, p, D, Tiles::kDqBoxRows));
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
  const unsigned dq_blocks = static_cast<unsigned>(blocks < 65536 ? blocks : 65536);
  const TableCopySums tables = table_copy_sums(p);
  const unsigned table_blocks = tables.pos_blocks(threads) + tables.ts_blocks(threads);
  backward_epilogue_kernel<T><<<dq_blocks + table_blocks, threads, 0, stream>>>(
      reinterpret_cast<const float4*>(p.dq_accum), static_cast<T*>(p.grad_q), groups,
      p.alpha / static_cast<float>(p.max_seq_len), dq_blocks, tables);
  return cudaGetLastError();
}

}  // namespace
}  // namespace hopper

int64_t hstu_sm90_backward_workspace_bytes(const HstuParams& p) {
  const int tile =
      p.dim_qk == 256 ? hopper::BwdTiles<256>::kBlockN : hopper::BwdTiles<128>::kBlockN;
  return hopper::tile_list_workspace_bytes(p, tile);
}

int hstu_sm90_backward_grad_copies(const HstuParams& p) {
  // The blocks of a wave (one per SM) start on their diagonals together and walk the same
  // offsets j - i step by step: each step every block adds 256 position sums to the same 128
  // floats, and near the diagonal, where a key row's queries span many time buckets, each
  // warp flushes a run of buckets at almost every pair (global reductions, add_to_run in
  // hstu_bwd_sm90.cuh) into the same few buckets. 256 copies, about two per block in flight
  // on an H100 (132 SMs), spread them; the sum over them is one small pass. At most 32 MiB of
  // copies, for very long max_seq_len. (Measured on an H100: the position adds alone ran 1.18x
  // faster onto 32 copies than onto one, docs/hstu_sm90/12.md; the run flushes lost 23% at
  // n = 1024 on 32 copies and won 6-16% at every n on 256, docs/hstu_sm90/19.md.)
  constexpr int64_t kCopies = 256;
  constexpr int64_t kMaxBytes = int64_t{32} << 20;
  const int64_t floats =
      (p.bias.pos_weight != nullptr ? 2 * int64_t{p.max_seq_len} - 1 : 0) +
      (p.bias.ts_weight != nullptr ? int64_t{kTsGradLanes} * (p.bias.num_ts_buckets + 1) : 0);
  if (floats == 0) return 1;
  // (Two at least with the time-bucket table: its lanes are summed where the copies are.)
  const int64_t fewest = p.bias.ts_weight != nullptr ? 2 : 1;
  return static_cast<int>(std::clamp<int64_t>(kMaxBytes / (4 * floats), fewest, kCopies));
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
  if (p.batch_size == 0 || p.total_len == 0 || p.num_heads == 0) {
    // No kernel runs, so the tables' sums are written here: zeros.
    const hopper::TableCopySums tables = hopper::table_copy_sums(p);
    if (tables.pos_sum != nullptr) {
      const cudaError_t err = cudaMemsetAsync(tables.pos_sum, 0, 4 * tables.pos_len, stream);
      if (err != cudaSuccess) return err;
    }
    if (tables.ts_sum != nullptr)
      return cudaMemsetAsync(tables.ts_sum, 0, 4 * tables.ts_len, stream);
    return cudaSuccess;
  }
  if (hstu_sm90_backward_unsupported(p) != nullptr || p.dq_accum == nullptr ||
      p.bias.grad_copies < 1) {
    return cudaErrorInvalidValue;
  }
  if (p.bias.grad_copies > 1 && ((p.bias.grad_pos != nullptr && p.bias.grad_pos_sum == nullptr) ||
                                 (p.bias.grad_ts != nullptr && p.bias.grad_ts_sum == nullptr))) {
    return cudaErrorInvalidValue;  // (the copies' sums need somewhere to go)
  }
  if (p.bias.grad_ts != nullptr && p.bias.grad_copies < 2) {
    return cudaErrorInvalidValue;  // (a bucket's kTsGradLanes floats are summed with the copies)
  }
  return hopper::dispatch_dtype_and_head_dim(p, [&](auto type, auto dim) {
    return hopper::run<typename decltype(type)::type, decltype(dim)::value>(p, stream);
  });
}

}  // namespace freescale::attention
