// Padded dense ATen building blocks of the CPU attention ops (HSTU and compressed): jagged
// <-> padded layouts and the SiLU-attention forward/backward given scores and a mask.
#pragma once

#include <ATen/ATen.h>

namespace freescale::ops {

struct PaddedIndex {
  at::Tensor lengths;      // [B] int64
  at::Tensor batch_index;  // [T] int64, sequence of each token
  at::Tensor position;     // [T] int64, position inside its sequence
  int64_t batch = 0;
  int64_t max_len = 0;
};

PaddedIndex make_index(const at::Tensor& seq_offsets);

// [T, H, d] -> [B, H, L, d], zero padded.
at::Tensor to_padded(const at::Tensor& x, const PaddedIndex& ix);

// [T, ...] -> [B, L, ...], padded with `fill`.
at::Tensor to_padded_rows(const at::Tensor& x, const PaddedIndex& ix, const at::Scalar& fill);

// [B, H, L, d] -> [T, H, d].
at::Tensor from_padded(const at::Tensor& y, const PaddedIndex& ix);

// float64 stays float64; every other floating type computes in float32.
at::ScalarType compute_type(const at::Tensor& q);

// out = (SiLU(s) * scale) @ v, where scale ([B, 1, L, L]) folds the mask and 1/N.
at::Tensor silu_attention_forward(const at::Tensor& s, const at::Tensor& scale,
                                  const at::Tensor& v);

struct SiluAttentionGrads {
  at::Tensor dq, dk, dv;  // padded [B, H, L, d]
  at::Tensor ds;          // [B, H, L, L] d loss / d s (mask and 1/N applied)
};

// Backward of silu_attention_forward with s = alpha * q k^T (+ bias): DESIGN §4's formulas.
SiluAttentionGrads silu_attention_backward(const at::Tensor& dout, const at::Tensor& q,
                                           const at::Tensor& k, const at::Tensor& v,
                                           const at::Tensor& s, const at::Tensor& scale,
                                           double alpha);

}  // namespace freescale::ops
