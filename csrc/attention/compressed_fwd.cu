// Block-sparse compressed-attention forward, one block per (64-row query tile, head, sequence),
// 4 warps of 16 query rows each. Per visited key block: S = Q K^T and O += P V on tensor cores,
// P = SiLU(alpha S) / N under the mask, kept in registers between the two products.
#include "attention/compressed.h"
#include "attention/compressed_common.cuh"
#include "attention/compressed_workspace.cuh"

namespace freescale::attention {
namespace compressed {
namespace {

template <int D>
struct FwdSmem {
  static constexpr int kHalves = 2 * Dims<D>::kRowTile + Dims<D>::kColTile;  // Q, K, V^T
  static constexpr size_t kBytes = kHalves * 2 + 2 * sizeof(Slots);
};

template <typename T, int D>
__global__ void __launch_bounds__(kThreads) forward_kernel(const CompressedParams p) {
  extern __shared__ __align__(16) unsigned char smem[];
  constexpr int kLd = Dims<D>::kLd;
  T* q_s = reinterpret_cast<T*>(smem);
  T* k_s = q_s + Dims<D>::kRowTile;
  T* vt_s = k_s + Dims<D>::kRowTile;
  Slots& rows = *reinterpret_cast<Slots*>(vt_s + Dims<D>::kColTile);
  Slots& cols = *(&rows + 1);

  const int b = blockIdx.z;
  const int head = blockIdx.y;
  const SeqView seq = load_seq(p, b, p.skip_empty_tiles);
  const int qt = p.tiles_per_seq - 1 - static_cast<int>(blockIdx.x);  // long rows first
  if (qt >= seq.tiles) return;                                        // uniform across the block
  const int q0 = qt * kTile;

  fill_contiguous_slots(rows, p, seq, q0, /*exclude_tokens=*/false);
  __syncthreads();
  load_rows<T, D>(q_s, rows.pos, seq, p.q, p.q_row_stride, head, p.dim_qk, p.vector_loads);
  __syncthreads();

  const int warp = threadIdx.x / 32;
  const int lane = threadIdx.x % 32;
  const int g = lane / 4;
  const int t = lane % 4;
  const int r0 = warp * 16 + g;  // this thread's two query rows: r0 and r0 + 8
  const int i0 = q0 + r0;
  const int i1 = i0 + 8;
  const int region0 = rows.region[r0];
  const int region1 = rows.region[r0 + 8];
  uint32_t qa[D / 16][4];
#pragma unroll
  for (int ks = 0; ks < D / 16; ++ks) mma::load_a(qa[ks], q_s, kLd, warp * 16, ks * 16, g, t);

  float o[D / 8][4];
#pragma unroll
  for (int nt = 0; nt < D / 8; ++nt) o[nt][0] = o[nt][1] = o[nt][2] = o[nt][3] = 0.f;
  const float alpha = p.alpha;
  const float inv_norm = 1.f / static_cast<float>(p.max_seq_len);

  // O += P V for the key block described by `cols`, already in k_s / vt_s.
  auto attend = [&]() {
    float s[kTile / 8][4];
#pragma unroll
    for (int nt = 0; nt < kTile / 8; ++nt) {
      s[nt][0] = s[nt][1] = s[nt][2] = s[nt][3] = 0.f;
#pragma unroll
      for (int ks = 0; ks < D / 16; ++ks) {
        uint32_t b0, b1;
        mma::load_b(b0, b1, k_s, kLd, nt * 8, ks * 16, g, t);
        mma::m16n8k16<T>(s[nt], qa[ks], b0, b1);
      }
    }
#pragma unroll
    for (int nt = 0; nt < kTile / 8; ++nt) {
#pragma unroll
      for (int e = 0; e < 4; ++e) {
        const int c = nt * 8 + 2 * t + (e & 1);
        const int i = e < 2 ? i0 : i1;
        const int region = e < 2 ? region0 : region1;
        const bool keep = cols.pos[c] <= i && (cols.any[c] || cols.region[c] == region);
        const float x = alpha * s[nt][e];
        s[nt][e] = keep ? x * sigmoid(x) * inv_norm : 0.f;
      }
    }
#pragma unroll
    for (int kk = 0; kk < kTile / 16; ++kk) {
      uint32_t pa[4];
      mma::c_to_a<T>(pa, s[2 * kk], s[2 * kk + 1]);
#pragma unroll
      for (int nt = 0; nt < D / 8; ++nt) {
        uint32_t b0, b1;
        mma::load_b(b0, b1, vt_s, kLdT, nt * 8, kk * 16, g, t);
        mma::m16n8k16<T>(o[nt], pa, b0, b1);
      }
    }
  };
  auto load_block = [&]() {
    __syncthreads();  // slots written
    load_rows<T, D>(k_s, cols.pos, seq, p.k, p.k_row_stride, head, p.dim_qk, p.vector_loads);
    load_rows_transposed<T, D>(vt_s, cols.pos, seq, p.v, p.v_row_stride, head, p.dim_v,
                               p.vector_loads);
    __syncthreads();
  };

  const int last_row = min(q0 + kTile, seq.len) - 1;
  if (p.skip_empty_tiles) {
    // Tokens, gathered: every earlier token is visible to every row.
    for (int first = 0; first < seq.token_count; first += kTile) {
      if (p.ws.token_pos[seq.begin + first] > last_row) break;
      __syncthreads();  // the previous block is consumed
      fill_token_slots(cols, p, seq, first);
      load_block();
      attend();
    }
  }
  const int4 queries = tile_range(p, b, qt);
  __shared__ int visit[kThreads];
  for (int first = 0; first <= qt; first += kThreads) {
    __syncthreads();  // the previous flags are consumed
    mark_tiles(visit, first, qt + 1, [&](int kt) {
      return !p.skip_empty_tiles || regions_overlap(tile_range(p, b, kt), queries);
    });
    __syncthreads();
    for (int kt = first; kt <= qt && kt < first + kThreads; ++kt) {
      if (!visit[kt - first]) continue;
      __syncthreads();
      fill_contiguous_slots(cols, p, seq, kt * kTile, /*exclude_tokens=*/p.skip_empty_tiles);
      load_block();
      attend();
    }
  }
  store_rows<T, D>(p.out, o, seq, rows.pos[r0], rows.pos[r0 + 8], head, p.num_heads, p.dim_v, t);
}

template <typename T, int D>
cudaError_t launch_forward(const CompressedParams& p, cudaStream_t stream) {
  constexpr size_t bytes = FwdSmem<D>::kBytes;
  cudaError_t err = cudaFuncSetAttribute(forward_kernel<T, D>,
                                         cudaFuncAttributeMaxDynamicSharedMemorySize, bytes);
  if (err != cudaSuccess) return err;
  const dim3 grid(p.tiles_per_seq, p.num_heads, p.batch_size);
  forward_kernel<T, D><<<grid, kThreads, bytes, stream>>>(p);
  return cudaGetLastError();
}

template <typename T>
cudaError_t dispatch_dim(const CompressedParams& p, cudaStream_t stream) {
  const int dim = compressed_padded_head_dim(p.dim_qk > p.dim_v ? p.dim_qk : p.dim_v);
  if (dim == 32) return launch_forward<T, 32>(p, stream);
  if (dim == 64) return launch_forward<T, 64>(p, stream);
  return launch_forward<T, 128>(p, stream);
}

}  // namespace
}  // namespace compressed

size_t compressed_forward_shared_bytes(int head_dim) {
  const int dim = compressed_padded_head_dim(head_dim);  // as dispatch_dim launches
  if (dim == 32) return compressed::FwdSmem<32>::kBytes;
  if (dim == 64) return compressed::FwdSmem<64>::kBytes;
  return compressed::FwdSmem<128>::kBytes;
}

cudaError_t compressed_forward(const CompressedParams& p, cudaStream_t stream) {
  if (p.total_len == 0 || p.batch_size == 0 || p.num_heads == 0) return cudaSuccess;
  if (p.dim_qk > kCompressedMaxHeadDim || p.dim_v > kCompressedMaxHeadDim) {
    return cudaErrorInvalidValue;
  }
  cudaError_t err = compressed::build_workspace(p, stream);
  if (err != cudaSuccess) return err;
  if (p.dtype == ScalarKind::kBFloat16) return compressed::dispatch_dim<__nv_bfloat16>(p, stream);
  if (p.dtype == ScalarKind::kFloat16) return compressed::dispatch_dim<__half>(p, stream);
  return cudaErrorInvalidValue;
}

}  // namespace freescale::attention
