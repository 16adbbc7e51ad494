// Shared machinery of the block-sparse compressed-attention kernels: the sequence view, the
// slot lists that describe a tile's rows or a key block's columns, and the global -> shared
// loaders (row-major and transposed, gathered by slot, zero-filled past the head dim).
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <climits>
#include <cstdint>

#include "attention/compressed_params.h"
#include "attention/mma_m16n8k16.cuh"

namespace freescale::attention::compressed {

constexpr int kTile = kCompressedTile;  // 64 rows / columns
constexpr int kWarps = 4;               // 16 rows of a tile each
constexpr int kThreads = 32 * kWarps;
constexpr int kPad = 8;  // halves of padding per shared row: conflict-free fragment loads
constexpr int kLdT = kTile + kPad;  // leading dim of a transposed [D][64] tile
// Slot position of an empty or excluded row/column: fails every j <= i test.
constexpr int kNever = INT_MAX;

template <int D>
struct Dims {
  static constexpr int kLd = D + kPad;          // leading dim of a row-major [64][D] tile
  static constexpr int kRowTile = kTile * kLd;  // halves
  static constexpr int kColTile = D * kLdT;     // halves
};

struct SeqView {
  int64_t begin;
  int len;
  int tiles;
  int token_count;
};

// Offsets are clamped (and a sequence cut to N rows) so that malformed input cannot read or
// write out of bounds; the ops layer validates them on request.
__device__ __forceinline__ SeqView load_seq(const CompressedParams& p, int b, bool with_tokens) {
  int64_t begin = p.seq_offsets[b];
  int64_t end = p.seq_offsets[b + 1];
  begin = begin < 0 ? 0 : (begin > p.total_len ? p.total_len : begin);
  end = end < begin ? begin : (end > p.total_len ? p.total_len : end);
  SeqView s;
  s.begin = begin;
  s.len = static_cast<int>(end - begin < p.max_seq_len ? end - begin : p.max_seq_len);
  s.tiles = (s.len + kTile - 1) / kTile;
  s.token_count = with_tokens ? p.ws.token_count[b] : 0;
  return s;
}

// Tile ranges written by the workspace kernel: x, y = min/max region of the non-token rows,
// z, w = min/max region of all rows.
__device__ __forceinline__ int4 tile_range(const CompressedParams& p, int b, int tile) {
  return reinterpret_cast<const int4*>(p.ws.tile_ranges)[b * p.tiles_per_seq + tile];
}

// Can a non-token key of `keys` share a region with a query of `queries`?
__device__ __forceinline__ bool regions_overlap(int4 keys, int4 queries) {
  return keys.x <= queries.w && queries.z <= keys.y;
}

// Which tiles of [first, first + kThreads) before `end` a block walk visits, one tile per thread
// into shared flags: the walk then tests a shared flag per tile instead of waiting on a global
// read of its range (a serial latency that dominated short sparse walks).
template <typename Wanted>
__device__ __forceinline__ void mark_tiles(int* visit, int first, int end, Wanted wanted) {
  const int tile = first + static_cast<int>(threadIdx.x);
  visit[threadIdx.x] = tile < end && wanted(tile);
}

// Slots of one 64-wide block: the in-sequence position (kNever: empty/excluded), the region
// and whether the slot matches every region (a token, when tokens are not gathered apart).
struct Slots {
  int pos[kTile];
  int region[kTile];
  int any[kTile];
};

// Slots of the contiguous block starting at `row0`. With `exclude_tokens` (the block-sparse
// schedule, which visits tokens in gathered blocks) token rows are empty slots.
__device__ __forceinline__ void fill_contiguous_slots(Slots& s, const CompressedParams& p,
                                                      const SeqView& seq, int row0,
                                                      bool exclude_tokens) {
  for (int c = threadIdx.x; c < kTile; c += kThreads) {
    const int pos = row0 + c;
    int slot = kNever, region = 0, any = 0;
    if (pos < seq.len) {
      const bool token = p.is_token[seq.begin + pos];
      region = p.region[seq.begin + pos];
      any = token;
      slot = (token && exclude_tokens) ? kNever : pos;
    }
    s.pos[c] = slot;
    s.region[c] = region;
    s.any[c] = any;
  }
}

// Slots of the sequence's tokens number [first, first + 64): every token matches every region.
__device__ __forceinline__ void fill_token_slots(Slots& s, const CompressedParams& p,
                                                 const SeqView& seq, int first) {
  for (int c = threadIdx.x; c < kTile; c += kThreads) {
    const int idx = first + c;
    int slot = kNever;
    if (idx < seq.token_count) {
      const int pos = p.ws.token_pos[seq.begin + idx];
      slot = (pos >= 0 && pos < seq.len) ? pos : kNever;
    }
    s.pos[c] = slot;
    s.region[c] = 0;
    s.any[c] = 1;
  }
}

__device__ __forceinline__ bool slot_loaded(int pos, int len) { return pos != kNever && pos < len; }

// dst[c][0..D) = src row of slot c (zeros for empty slots and past `dim`), row-major.
template <typename T, int D>
__device__ __forceinline__ void load_rows(T* dst, const int* slot_pos, const SeqView& seq,
                                          const void* src_v, int64_t row_stride, int head, int dim,
                                          bool vector_loads) {
  constexpr int kLd = Dims<D>::kLd;
  constexpr int kChunks = D / 8;
  const T* src = static_cast<const T*>(src_v);
  const T zero = T(0.f);
  if (vector_loads) {
    for (int idx = threadIdx.x; idx < kTile * kChunks; idx += kThreads) {
      const int c = idx / kChunks;
      const int d0 = (idx % kChunks) * 8;
      const int pos = slot_pos[c];
      uint4 value = make_uint4(0, 0, 0, 0);
      if (slot_loaded(pos, seq.len) && d0 < dim) {
        value = *reinterpret_cast<const uint4*>(src + (seq.begin + pos) * row_stride +
                                                static_cast<int64_t>(head) * dim + d0);
      }
      *reinterpret_cast<uint4*>(dst + c * kLd + d0) = value;
    }
  } else {
    for (int idx = threadIdx.x; idx < kTile * D; idx += kThreads) {
      const int c = idx / D;
      const int d = idx % D;
      const int pos = slot_pos[c];
      T value = zero;
      if (slot_loaded(pos, seq.len) && d < dim) {
        value = src[(seq.begin + pos) * row_stride + static_cast<int64_t>(head) * dim + d];
      }
      dst[c * kLd + d] = value;
    }
  }
}

// dst[d][c] = src row of slot c, dim d: the transposed tile, for products that contract over
// the slots (P V, dS K, P^T dO, dS^T Q). Consecutive threads take consecutive slots, so the
// shared stores of a warp hit consecutive halves.
template <typename T, int D>
__device__ __forceinline__ void load_rows_transposed(T* dst, const int* slot_pos,
                                                     const SeqView& seq, const void* src_v,
                                                     int64_t row_stride, int head, int dim,
                                                     bool vector_loads) {
  constexpr int kChunks = D / 8;
  const T* src = static_cast<const T*>(src_v);
  for (int idx = threadIdx.x; idx < kTile * kChunks; idx += kThreads) {
    const int c = idx % kTile;
    const int d0 = (idx / kTile) * 8;
    const int pos = slot_pos[c];
    T value[8];
#pragma unroll
    for (int e = 0; e < 8; ++e) value[e] = T(0.f);
    if (slot_loaded(pos, seq.len) && d0 < dim) {
      const T* row = src + (seq.begin + pos) * row_stride + static_cast<int64_t>(head) * dim;
      if (vector_loads) {
        const uint4 packed = *reinterpret_cast<const uint4*>(row + d0);
        memcpy(value, &packed, sizeof(packed));
      } else {
#pragma unroll
        for (int e = 0; e < 8; ++e) value[e] = d0 + e < dim ? row[d0 + e] : T(0.f);
      }
    }
#pragma unroll
    for (int e = 0; e < 8; ++e) dst[(d0 + e) * kLdT + c] = value[e];
  }
}

// SiLU(x) and its derivative, with x = alpha q.k.
__device__ __forceinline__ float sigmoid(float x) { return 1.f / (1.f + __expf(-x)); }

// Writes a warp's 16 x D fp32 accumulator rows (C fragments) to a [T, H, dim] output; rows with
// an empty slot or past the sequence are skipped.
template <typename T, int D>
__device__ __forceinline__ void store_rows(void* dst_v, const float (&acc)[D / 8][4],
                                           const SeqView& seq, int pos0, int pos1, int head,
                                           int num_heads, int dim, int t) {
  T* dst = static_cast<T*>(dst_v);
  const int64_t row_elems = static_cast<int64_t>(num_heads) * dim;
#pragma unroll
  for (int half = 0; half < 2; ++half) {
    const int pos = half == 0 ? pos0 : pos1;
    if (!slot_loaded(pos, seq.len)) continue;
    T* row = dst + (seq.begin + pos) * row_elems + static_cast<int64_t>(head) * dim;
#pragma unroll
    for (int nt = 0; nt < D / 8; ++nt) {
#pragma unroll
      for (int e = 0; e < 2; ++e) {
        const int d = nt * 8 + 2 * t + e;
        if (d < dim) row[d] = T(acc[nt][2 * half + e]);
      }
    }
  }
}

}  // namespace freescale::attention::compressed
