// Block-sparse compressed-attention backward, dK and dV: one block per (64-key block, head,
// sequence), 4 warps of 16 keys each, walking the query tiles that can see the block. Key
// blocks are either a sequence's tokens, gathered (seen by every later query), or a contiguous
// tile of its non-token rows (seen by the query tiles whose regions overlap); in dense mode,
// every contiguous tile and every causal query tile. Per query tile, in two halves of 32
// queries: S^T = K Q^T, dP^T = V dO^T, then dV += P^T dO and dK += dS^T Q.
#include "attention/compressed_bwd.cuh"
#include "attention/compressed_common.cuh"

namespace freescale::attention::compressed {
namespace {

constexpr int kHalfTile = kTile / 2;

template <int D>
struct DkvSmem {
  // K, V, Q, dO row-major; Q^T, dO^T.
  static constexpr int kHalves = 4 * Dims<D>::kRowTile + 2 * Dims<D>::kColTile;
  static constexpr size_t kBytes = kHalves * 2 + 2 * sizeof(Slots);
};

template <typename T, int D>
__global__ void __launch_bounds__(kThreads) grad_kv_kernel(const CompressedParams p) {
  extern __shared__ __align__(16) unsigned char smem[];
  constexpr int kLd = Dims<D>::kLd;
  T* k_s = reinterpret_cast<T*>(smem);
  T* v_s = k_s + Dims<D>::kRowTile;
  T* q_s = v_s + Dims<D>::kRowTile;
  T* do_s = q_s + Dims<D>::kRowTile;
  T* qt_s = do_s + Dims<D>::kRowTile;
  T* dot_s = qt_s + Dims<D>::kColTile;
  Slots& keys = *reinterpret_cast<Slots*>(dot_s + Dims<D>::kColTile);
  Slots& queries = *(&keys + 1);

  const int b = blockIdx.z;
  const int head = blockIdx.y;
  const SeqView seq = load_seq(p, b, p.skip_empty_tiles);
  // Block-sparse: x < tiles_per_seq are token blocks (the longest walks, so scheduled first),
  // the rest contiguous tiles. Dense: contiguous tiles only.
  const bool token_block = p.skip_empty_tiles && blockIdx.x < p.tiles_per_seq;
  const int block = static_cast<int>(blockIdx.x) - (p.skip_empty_tiles ? p.tiles_per_seq : 0);
  int first_query_tile;
  int4 key_range = make_int4(INT_MIN, INT_MAX, INT_MIN, INT_MAX);
  if (token_block) {
    const int first = static_cast<int>(blockIdx.x) * kTile;
    if (first >= seq.token_count) return;  // uniform across the block
    fill_token_slots(keys, p, seq, first);
    first_query_tile = p.ws.token_pos[seq.begin + first] / kTile;
  } else {
    if (block >= seq.tiles) return;
    fill_contiguous_slots(keys, p, seq, block * kTile, /*exclude_tokens=*/p.skip_empty_tiles);
    first_query_tile = block;
    key_range = tile_range(p, b, block);
  }
  __syncthreads();
  load_rows<T, D>(k_s, keys.pos, seq, p.k, p.k_row_stride, head, p.dim_qk, p.vector_loads);
  load_rows<T, D>(v_s, keys.pos, seq, p.v, p.v_row_stride, head, p.dim_v, p.vector_loads);

  const int warp = threadIdx.x / 32;
  const int lane = threadIdx.x % 32;
  const int g = lane / 4;
  const int t = lane % 4;
  const int r0 = warp * 16 + g;  // this thread's two keys: r0 and r0 + 8
  const int j0 = keys.pos[r0];
  const int j1 = keys.pos[r0 + 8];
  const int region0 = keys.region[r0];
  const int region1 = keys.region[r0 + 8];
  const bool any0 = keys.any[r0];
  const bool any1 = keys.any[r0 + 8];

  float dk[D / 8][4], dv[D / 8][4];
#pragma unroll
  for (int nt = 0; nt < D / 8; ++nt) {
#pragma unroll
    for (int e = 0; e < 4; ++e) dk[nt][e] = dv[nt][e] = 0.f;
  }
  const float alpha = p.alpha;
  const float inv_norm = 1.f / static_cast<float>(p.max_seq_len);

  __shared__ int visit[kThreads];
  for (int first = first_query_tile; first < seq.tiles; first += kThreads) {
    __syncthreads();  // the previous flags are consumed (and k_s/v_s/keys are complete)
    mark_tiles(visit, first, seq.tiles, [&](int qt) {
      return !p.skip_empty_tiles || token_block || regions_overlap(key_range, tile_range(p, b, qt));
    });
    __syncthreads();
    for (int qt = first; qt < seq.tiles && qt < first + kThreads; ++qt) {
      if (!visit[qt - first]) continue;
      __syncthreads();  // the previous query tile is consumed
      fill_contiguous_slots(queries, p, seq, qt * kTile, /*exclude_tokens=*/false);
      __syncthreads();
      load_rows<T, D>(q_s, queries.pos, seq, p.q, p.q_row_stride, head, p.dim_qk, p.vector_loads);
      load_rows<T, D>(do_s, queries.pos, seq, p.grad_out, p.grad_out_row_stride, head, p.dim_v,
                      p.vector_loads);
      load_rows_transposed<T, D>(qt_s, queries.pos, seq, p.q, p.q_row_stride, head, p.dim_qk,
                                 p.vector_loads);
      load_rows_transposed<T, D>(dot_s, queries.pos, seq, p.grad_out, p.grad_out_row_stride, head,
                                 p.dim_v, p.vector_loads);
      __syncthreads();
#pragma unroll
      for (int half = 0; half < 2; ++half) {
        const int c0 = half * kHalfTile;
        float s[kHalfTile / 8][4], dp[kHalfTile / 8][4];
#pragma unroll
        for (int nt = 0; nt < kHalfTile / 8; ++nt) {
#pragma unroll
          for (int e = 0; e < 4; ++e) s[nt][e] = dp[nt][e] = 0.f;
        }
#pragma unroll
        for (int ks = 0; ks < D / 16; ++ks) {
          uint32_t ka[4], va[4];
          mma::load_a(ka, k_s, kLd, warp * 16, ks * 16, g, t);
          mma::load_a(va, v_s, kLd, warp * 16, ks * 16, g, t);
#pragma unroll
          for (int nt = 0; nt < kHalfTile / 8; ++nt) {
            uint32_t b0, b1;
            mma::load_b(b0, b1, q_s, kLd, c0 + nt * 8, ks * 16, g, t);
            mma::m16n8k16<T>(s[nt], ka, b0, b1);
            mma::load_b(b0, b1, do_s, kLd, c0 + nt * 8, ks * 16, g, t);
            mma::m16n8k16<T>(dp[nt], va, b0, b1);
          }
        }
#pragma unroll
        for (int nt = 0; nt < kHalfTile / 8; ++nt) {
#pragma unroll
          for (int e = 0; e < 4; ++e) {
            const int c = c0 + nt * 8 + 2 * t + (e & 1);
            const int i = queries.pos[c];
            const int j = e < 2 ? j0 : j1;
            const bool any = e < 2 ? any0 : any1;
            const int region = e < 2 ? region0 : region1;
            const bool keep = i != kNever && j <= i && (any || region == queries.region[c]);
            const float x = alpha * s[nt][e];
            const float sig = sigmoid(x);
            s[nt][e] = keep ? x * sig * inv_norm : 0.f;
            dp[nt][e] = keep ? dp[nt][e] * sig * (1.f + x * (1.f - sig)) * alpha * inv_norm : 0.f;
          }
        }
#pragma unroll
        for (int kk = 0; kk < kHalfTile / 16; ++kk) {
          uint32_t pa[4], dsa[4];
          mma::c_to_a<T>(pa, s[2 * kk], s[2 * kk + 1]);
          mma::c_to_a<T>(dsa, dp[2 * kk], dp[2 * kk + 1]);
#pragma unroll
          for (int nt = 0; nt < D / 8; ++nt) {
            uint32_t b0, b1;
            mma::load_b(b0, b1, dot_s, kLdT, nt * 8, c0 + kk * 16, g, t);
            mma::m16n8k16<T>(dv[nt], pa, b0, b1);
            mma::load_b(b0, b1, qt_s, kLdT, nt * 8, c0 + kk * 16, g, t);
            mma::m16n8k16<T>(dk[nt], dsa, b0, b1);
          }
        }
      }
    }
  }
  store_rows<T, D>(p.grad_k, dk, seq, j0, j1, head, p.num_heads, p.dim_qk, t);
  store_rows<T, D>(p.grad_v, dv, seq, j0, j1, head, p.num_heads, p.dim_v, t);
}

template <typename T, int D>
cudaError_t launch(const CompressedParams& p, cudaStream_t stream) {
  constexpr size_t bytes = DkvSmem<D>::kBytes;
  cudaError_t err = cudaFuncSetAttribute(grad_kv_kernel<T, D>,
                                         cudaFuncAttributeMaxDynamicSharedMemorySize, bytes);
  if (err != cudaSuccess) return err;
  const dim3 grid(p.tiles_per_seq * (p.skip_empty_tiles ? 2 : 1), p.num_heads, p.batch_size);
  grad_kv_kernel<T, D><<<grid, kThreads, bytes, stream>>>(p);
  return cudaGetLastError();
}

}  // namespace

template <typename T>
cudaError_t launch_grad_kv(const CompressedParams& p, int head_dim, cudaStream_t stream) {
  if (head_dim == 32) return launch<T, 32>(p, stream);
  if (head_dim == 64) return launch<T, 64>(p, stream);
  return launch<T, 128>(p, stream);
}

template cudaError_t launch_grad_kv<__nv_bfloat16>(const CompressedParams&, int, cudaStream_t);
template cudaError_t launch_grad_kv<__half>(const CompressedParams&, int, cudaStream_t);

size_t grad_kv_shared_bytes(int head_dim) {
  if (head_dim == 32) return DkvSmem<32>::kBytes;
  if (head_dim == 64) return DkvSmem<64>::kBytes;
  return DkvSmem<128>::kBytes;
}

}  // namespace freescale::attention::compressed
