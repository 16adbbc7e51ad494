// The device-side view of one sequence of an HSTU batch and the fused relative bias, shared by
// every HSTU attention kernel (simple and sm_90a).
#pragma once

#include <cuda_runtime.h>

#include <cstdint>

#include "attention/hstu_mask.h"
#include "attention/hstu_params.h"

namespace freescale::attention {

struct Sequence {
  int64_t begin;
  int len;
  HstuMask mask;
};

// Sequence b's first token and length. Offsets are clamped so that malformed input cannot read
// or write out of bounds; the ops layer validates them on request.
__device__ __forceinline__ void sequence_span(const HstuParams& p, int b, int64_t* begin,
                                              int* len) {
  int64_t first = p.seq_offsets[b];
  int64_t end = p.seq_offsets[b + 1];
  first = first < 0 ? 0 : (first > p.total_len ? p.total_len : first);
  end = end < first ? first : (end > p.total_len ? p.total_len : end);
  *begin = first;
  *len = static_cast<int>(end - first);
}

__device__ __forceinline__ Sequence load_sequence(const HstuParams& p, int b) {
  Sequence s;
  sequence_span(p, b, &s.begin, &s.len);
  int targets = 0;
  if (p.num_targets != nullptr) {
    targets = p.num_targets[b];
    targets = targets < 0 ? 0 : (targets > s.len ? s.len : targets);
  }
  s.mask =
      HstuMask::make(s.len, p.contextual_len, p.max_attn_len, p.num_targets != nullptr, targets);
  return s;
}

// b_ij of HstuParams::bias for positions i, j < len of the sequence (j indexes its timestamps).
__device__ __forceinline__ float relative_bias(const HstuParams& p, const Sequence& seq, int i,
                                               int j) {
  float bias = 0.f;
  if (p.bias.pos_weight != nullptr) bias += p.bias.pos_weight[hstu_pos_index(i, j, p.max_seq_len)];
  if (p.bias.ts_weight != nullptr) {
    const int next = i + 1 < seq.len ? i + 1 : seq.len - 1;
    const int64_t delta = p.bias.timestamps[seq.begin + next] - p.bias.timestamps[seq.begin + j];
    bias += p.bias.ts_weight[hstu_ts_bucket(delta, p.bias.num_ts_buckets)];
  }
  return bias;
}

// Copies the call's time-bucket tables (HstuBiasParams::ts_tables) and the bucket weights into
// shared memory with the block's threads; the caller synchronizes before use.
__device__ __forceinline__ void stage_ts_tables(const HstuBiasParams& bias, uint32_t (*cells)[2],
                                                int64_t* thresholds, float* weights) {
  for (int x = threadIdx.x; x < kTsCells * 2; x += blockDim.x) {
    cells[x / 2][x % 2] = bias.ts_tables.cells[x / 2][x % 2];
  }
  for (int b = threadIdx.x; b < kTsBucketThresholds; b += blockDim.x) {
    thresholds[b] = bias.ts_tables.thresholds[b];
  }
  for (int b = threadIdx.x; b <= bias.num_ts_buckets; b += blockDim.x) {
    weights[b] = bias.ts_weight[b];
  }
}

// The cell table with the bucket weights (TsWeightedCell), staged once per block beside
// stage_ts_tables' (the caller synchronizes).
__device__ __forceinline__ void stage_ts_cell_weights(const HstuBiasParams& bias,
                                                      TsWeightedCell* cell_weights) {
  for (int c = threadIdx.x; c < kTsCells; c += blockDim.x) {
    cell_weights[c] = make_ts_weighted_cell(bias.ts_tables.cells[c][0], bias.ts_tables.cells[c][1],
                                            bias.num_ts_buckets, bias.ts_weight);
  }
}

}  // namespace freescale::attention
