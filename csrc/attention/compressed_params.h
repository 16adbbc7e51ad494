// Torch-free description of one token-compressed (PerSRec) attention call, DESIGN §5:
//   o_i = sum_j SiLU(alpha q_i.k_j) / N * M_ij * v_j,
//   M_ij = (j <= i) and valid_j and (is_token_j or region_j == region_i), per sequence.
//
// Layout as for HSTU attention: q, k: [T, H, d_qk], v: [T, H, d_v], packed over the batch and
// addressed through seq_offsets [B+1]; rows may be strided, heads and head dims are contiguous.
// Outputs and gradients are contiguous. The workspace (token lists, tile ranges) is allocated
// by the caller and filled by the launchers' first kernel.
#pragma once

#include <cstdint>

#include "attention/hstu_params.h"  // ScalarKind

namespace freescale::attention {

// Rows of a query tile and columns of a key block in the compressed-attention kernels.
constexpr int kCompressedTile = 64;
constexpr int kCompressedMaxHeadDim = 128;

// The head dim a call's kernels are instantiated for: max(d_qk, d_v) padded to 32, 64 or 128.
constexpr int compressed_padded_head_dim(int dim) {
  return dim <= 32 ? 32 : (dim <= 64 ? 64 : 128);
}

struct CompressedWorkspace {
  // token_pos[begin_b + k] = in-sequence position of sequence b's k-th token (ascending).
  int32_t* token_pos = nullptr;    // [T]
  int32_t* token_count = nullptr;  // [B]
  // Per (sequence, 64-row tile): min/max region of its non-token rows, min/max of all rows;
  // [B * tiles_per_seq * 4]. An empty range is (INT_MAX, INT_MIN).
  int32_t* tile_ranges = nullptr;
};

struct CompressedParams {
  ScalarKind dtype = ScalarKind::kBFloat16;  // float16 or bfloat16 (tensor-core kernels)
  int batch_size = 0;
  int num_heads = 0;
  int dim_qk = 0;
  int dim_v = 0;
  int64_t total_len = 0;  // T
  int max_seq_len = 0;    // N: the normalizer; longer sequences are cut to N rows
  int tiles_per_seq = 0;  // ceil(N / kCompressedTile)
  float alpha = 1.0f;
  // false: visit every causal tile and mask pair by pair (the dense masked computation, the
  // baseline the block-sparse schedule is measured against).
  bool skip_empty_tiles = true;

  const int32_t* seq_offsets = nullptr;  // [B+1]
  const int32_t* region = nullptr;       // [T]
  const bool* is_token = nullptr;        // [T]

  const void* q = nullptr;
  const void* k = nullptr;
  const void* v = nullptr;
  int64_t q_row_stride = 0;  // elements between consecutive tokens
  int64_t k_row_stride = 0;
  int64_t v_row_stride = 0;
  // 16-byte vector loads are legal (aligned base, row stride and head dim multiples of 8).
  bool vector_loads = false;

  void* out = nullptr;  // forward: [T, H, d_v], zero-filled by the caller

  // Backward; gradients zero-filled by the caller.
  const void* grad_out = nullptr;  // [T, H, d_v]
  int64_t grad_out_row_stride = 0;
  void* grad_q = nullptr;  // [T, H, d_qk]
  void* grad_k = nullptr;  // [T, H, d_qk]
  void* grad_v = nullptr;  // [T, H, d_v]

  CompressedWorkspace ws;
};

}  // namespace freescale::attention
