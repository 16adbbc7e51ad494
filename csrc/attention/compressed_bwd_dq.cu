// Block-sparse compressed-attention backward, dQ: one block per (64-row query tile, head,
// sequence), the forward's schedule. Per visited key block: S = Q K^T and dP = dO V^T, then
// dS = dP * SiLU'(alpha S) * alpha / N under the mask and dQ += dS K, all on tensor cores.
// dK and dV come from compressed_bwd_dkdv.cu; splitting the two keeps both free of atomics.
#include "attention/compressed_bwd.cuh"
#include "attention/compressed_common.cuh"

namespace freescale::attention::compressed {
namespace {

template <int D>
struct DqSmem {
  // Q, dO, K, V row-major; K^T.
  static constexpr int kHalves = 4 * Dims<D>::kRowTile + Dims<D>::kColTile;
  static constexpr size_t kBytes = kHalves * 2 + 2 * sizeof(Slots);
};

template <typename T, int D>
__global__ void __launch_bounds__(kThreads) grad_q_kernel(const CompressedParams p) {
  extern __shared__ __align__(16) unsigned char smem[];
  constexpr int kLd = Dims<D>::kLd;
  T* q_s = reinterpret_cast<T*>(smem);
  T* do_s = q_s + Dims<D>::kRowTile;
  T* k_s = do_s + Dims<D>::kRowTile;
  T* v_s = k_s + Dims<D>::kRowTile;
  T* kt_s = v_s + Dims<D>::kRowTile;
  Slots& rows = *reinterpret_cast<Slots*>(kt_s + Dims<D>::kColTile);
  Slots& cols = *(&rows + 1);

  const int b = blockIdx.z;
  const int head = blockIdx.y;
  const SeqView seq = load_seq(p, b, p.skip_empty_tiles);
  const int qt = p.tiles_per_seq - 1 - static_cast<int>(blockIdx.x);
  if (qt >= seq.tiles) return;
  const int q0 = qt * kTile;

  fill_contiguous_slots(rows, p, seq, q0, /*exclude_tokens=*/false);
  __syncthreads();
  load_rows<T, D>(q_s, rows.pos, seq, p.q, p.q_row_stride, head, p.dim_qk, p.vector_loads);
  load_rows<T, D>(do_s, rows.pos, seq, p.grad_out, p.grad_out_row_stride, head, p.dim_v,
                  p.vector_loads);
  __syncthreads();

  const int warp = threadIdx.x / 32;
  const int lane = threadIdx.x % 32;
  const int g = lane / 4;
  const int t = lane % 4;
  const int r0 = warp * 16 + g;
  const int i0 = q0 + r0;
  const int i1 = i0 + 8;
  const int region0 = rows.region[r0];
  const int region1 = rows.region[r0 + 8];

  float dq[D / 8][4];
#pragma unroll
  for (int nt = 0; nt < D / 8; ++nt) dq[nt][0] = dq[nt][1] = dq[nt][2] = dq[nt][3] = 0.f;
  const float alpha = p.alpha;
  const float inv_norm = 1.f / static_cast<float>(p.max_seq_len);

  auto accumulate = [&]() {
    float s[kTile / 8][4];
    float dp[kTile / 8][4];
#pragma unroll
    for (int nt = 0; nt < kTile / 8; ++nt) {
#pragma unroll
      for (int e = 0; e < 4; ++e) s[nt][e] = dp[nt][e] = 0.f;
    }
#pragma unroll
    for (int ks = 0; ks < D / 16; ++ks) {
      uint32_t qa[4], da[4];
      mma::load_a(qa, q_s, kLd, warp * 16, ks * 16, g, t);
      mma::load_a(da, do_s, kLd, warp * 16, ks * 16, g, t);
#pragma unroll
      for (int nt = 0; nt < kTile / 8; ++nt) {
        uint32_t b0, b1;
        mma::load_b(b0, b1, k_s, kLd, nt * 8, ks * 16, g, t);
        mma::m16n8k16<T>(s[nt], qa, b0, b1);
        mma::load_b(b0, b1, v_s, kLd, nt * 8, ks * 16, g, t);
        mma::m16n8k16<T>(dp[nt], da, b0, b1);
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
        const float sig = sigmoid(x);
        s[nt][e] = keep ? dp[nt][e] * sig * (1.f + x * (1.f - sig)) * alpha * inv_norm : 0.f;
      }
    }
#pragma unroll
    for (int kk = 0; kk < kTile / 16; ++kk) {
      uint32_t dsa[4];
      mma::c_to_a<T>(dsa, s[2 * kk], s[2 * kk + 1]);
#pragma unroll
      for (int nt = 0; nt < D / 8; ++nt) {
        uint32_t b0, b1;
        mma::load_b(b0, b1, kt_s, kLdT, nt * 8, kk * 16, g, t);
        mma::m16n8k16<T>(dq[nt], dsa, b0, b1);
      }
    }
  };
  auto load_block = [&]() {
    __syncthreads();
    load_rows<T, D>(k_s, cols.pos, seq, p.k, p.k_row_stride, head, p.dim_qk, p.vector_loads);
    load_rows<T, D>(v_s, cols.pos, seq, p.v, p.v_row_stride, head, p.dim_v, p.vector_loads);
    load_rows_transposed<T, D>(kt_s, cols.pos, seq, p.k, p.k_row_stride, head, p.dim_qk,
                               p.vector_loads);
    __syncthreads();
  };

  const int last_row = min(q0 + kTile, seq.len) - 1;
  if (p.skip_empty_tiles) {
    for (int first = 0; first < seq.token_count; first += kTile) {
      if (p.ws.token_pos[seq.begin + first] > last_row) break;
      __syncthreads();
      fill_token_slots(cols, p, seq, first);
      load_block();
      accumulate();
    }
  }
  const int4 queries = tile_range(p, b, qt);
  __shared__ int visit[kThreads];
  for (int first = 0; first <= qt; first += kThreads) {
    __syncthreads();
    mark_tiles(visit, first, qt + 1, [&](int kt) {
      return !p.skip_empty_tiles || regions_overlap(tile_range(p, b, kt), queries);
    });
    __syncthreads();
    for (int kt = first; kt <= qt && kt < first + kThreads; ++kt) {
      if (!visit[kt - first]) continue;
      __syncthreads();
      fill_contiguous_slots(cols, p, seq, kt * kTile, /*exclude_tokens=*/p.skip_empty_tiles);
      load_block();
      accumulate();
    }
  }
  store_rows<T, D>(p.grad_q, dq, seq, rows.pos[r0], rows.pos[r0 + 8], head, p.num_heads, p.dim_qk,
                   t);
}

template <typename T, int D>
cudaError_t launch(const CompressedParams& p, cudaStream_t stream) {
  constexpr size_t bytes = DqSmem<D>::kBytes;
  cudaError_t err =
      cudaFuncSetAttribute(grad_q_kernel<T, D>, cudaFuncAttributeMaxDynamicSharedMemorySize, bytes);
  if (err != cudaSuccess) return err;
  const dim3 grid(p.tiles_per_seq, p.num_heads, p.batch_size);
  grad_q_kernel<T, D><<<grid, kThreads, bytes, stream>>>(p);
  return cudaGetLastError();
}

}  // namespace

template <typename T>
cudaError_t launch_grad_q(const CompressedParams& p, int head_dim, cudaStream_t stream) {
  if (head_dim == 32) return launch<T, 32>(p, stream);
  if (head_dim == 64) return launch<T, 64>(p, stream);
  return launch<T, 128>(p, stream);
}

template cudaError_t launch_grad_q<__nv_bfloat16>(const CompressedParams&, int, cudaStream_t);
template cudaError_t launch_grad_q<__half>(const CompressedParams&, int, cudaStream_t);

size_t grad_q_shared_bytes(int head_dim) {
  if (head_dim == 32) return DqSmem<32>::kBytes;
  if (head_dim == 64) return DqSmem<64>::kBytes;
  return DqSmem<128>::kBytes;
}

}  // namespace freescale::attention::compressed
