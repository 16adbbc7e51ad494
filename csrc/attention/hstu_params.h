// Torch-free description of one HSTU attention call (forward or backward).
//
// Layout (DESIGN §4): q, k: [T, H, d_qk], v: [T, H, d_v], packed over the batch and addressed
// through seq_offsets [B+1]. Rows may be strided (q/k/v are often views into one fused
// projection), heads and head dims are contiguous. Outputs and gradients are contiguous.
#pragma once

#include <cstdint>

#include "attention/hstu_ts_buckets.h"

namespace freescale::attention {

// Floats per time bucket in each copy of HstuBiasParams::grad_ts where there are several (the
// sm_90a backward): lane l of a warp adds to float l % 8 of the bucket, so that the lanes
// flushing one bucket at once meet on one 32-byte sector, 4 to an address, instead of one address.
constexpr int kTsGradLanes = 8;

enum class ScalarKind : int { kFloat32 = 0, kFloat16 = 1, kBFloat16 = 2 };

// Fused relative attention bias of the research HSTU layer:
//   b_ij = pos_weight[N-1+j-i] + ts_weight[bucket(t_{i+1} - t_j)], shared across heads.
struct HstuBiasParams {
  const float* pos_weight = nullptr;    // [2N-1] or null
  const float* ts_weight = nullptr;     // [num_ts_buckets+1] or null
  const int64_t* timestamps = nullptr;  // [T]; required with ts_weight
  int num_ts_buckets = 0;
  float* grad_pos = nullptr;  // [grad_copies][2N-1] fp32 accumulator, zeroed by the caller
  // [num_ts_buckets+1] fp32, or with grad_copies > 1 [grad_copies][num_ts_buckets+1][kTsGradLanes];
  // zeroed by the caller
  float* grad_ts = nullptr;
  // Copies of the gradient tables (sm_90a backward; the other kernels take 1): block b adds to
  // copy b % grad_copies, and the backward's last pass writes their sums into grad_pos_sum and
  // grad_ts_sum. The blocks of a wave walk the same relative positions in step, so with one copy
  // their fp32 atomics all meet on a few addresses (hstu_sm90_backward_grad_copies says what
  // that cost, measured).
  int grad_copies = 1;
  float* grad_pos_sum = nullptr;  // [2N-1] fp32, written (with grad_pos and grad_copies > 1)
  float* grad_ts_sum = nullptr;   // [num_ts_buckets+1] fp32, written (likewise)
  // With ts_weight: the bucket tables for num_ts_buckets (fill_ts_bucket_tables).
  TsBucketTables ts_tables;
};

struct HstuParams {
  ScalarKind dtype = ScalarKind::kFloat32;
  int batch_size = 0;
  int num_heads = 0;
  int dim_qk = 0;
  int dim_v = 0;
  int64_t total_len = 0;  // T
  int max_seq_len = 0;    // N: the normalizer and the half-width of the position table
  float alpha = 1.0f;
  int contextual_len = 0;
  int max_attn_len = 0;  // 0: unlimited

  const int32_t* seq_offsets = nullptr;  // [B+1]
  const int32_t* num_targets = nullptr;  // [B] or null

  const void* q = nullptr;
  const void* k = nullptr;
  const void* v = nullptr;
  int64_t q_row_stride = 0;  // elements between consecutive tokens
  int64_t k_row_stride = 0;
  int64_t v_row_stride = 0;

  void* out = nullptr;  // forward: [T, H, d_v]

  // Backward.
  const void* grad_out = nullptr;  // [T, H, d_v]
  int64_t grad_out_row_stride = 0;
  void* grad_q = nullptr;  // [T, H, d_qk]
  void* grad_k = nullptr;  // [T, H, d_qk]
  void* grad_v = nullptr;  // [T, H, d_v]
  // sm_90a backward only: fp32 [T, H, d_qk] workspace, zeroed by the caller, that the key
  // blocks add their dQ contributions to before one pass converts it into grad_q.
  float* dq_accum = nullptr;
  // sm_90a only: int32 workspace of hstu_sm90_*_workspace_bytes for the list of the batch's
  // tiles the grid walks; null: a grid over every tile of max_seq_len for every sequence.
  int* tile_list = nullptr;
  // sm_90a forward only: the consumers' loop without the bias, 0 plain, 1 overlapped, 2
  // overlapped and ping-pong (hopper::FwdLoop), -1 picked by shape (forward_loop_for); the bias
  // always runs the plain loop.
  int sm90_forward_loop = -1;
  // sm_90a backward at d = 128 only: dQ goes to dq_accum through shared memory and TMA tensor
  // reductions (one per warp and 32 columns of a step) instead of per-thread fp32 atomics. The
  // op sets it from FREESCALE_HSTU_SM90_DQ (bulk unless it says atomic).
  bool sm90_bulk_dq = false;

  HstuBiasParams bias;
};

}  // namespace freescale::attention
