// CPU implementation of the token-compressed (PerSRec) attention ops, DESIGN §5: SiLU attention
// with the fixed normalizer N and the mask
//   M_ij = (j <= i) and valid_j and (is_token_j or region_j == region_i),
// padded dense ATen math, float64-capable, backward written out (the float64 reference in
// freescale_ext.reference is differentiated by autograd, so agreement checks both).
#include <ATen/ATen.h>
#include <c10/util/Exception.h>
#include <torch/library.h>

#include "ops/compressed_checks.h"
#include "ops/hstu_checks.h"
#include "ops/padded_dense.h"

namespace freescale::ops {
namespace {

const std::optional<at::Tensor> kNone;

// Metadata, then the offsets' values (a host read, free on the CPU).
HstuShapes check_cpu_args(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                          const at::Tensor& seq_offsets, const at::Tensor& region,
                          const at::Tensor& is_token, int64_t max_seq_len) {
  const HstuShapes shapes =
      check_compressed_args(q, k, v, seq_offsets, region, is_token, max_seq_len);
  check_seq_offsets_values(seq_offsets, shapes.total_len, max_seq_len, kNone);
  return shapes;
}

struct CompressedScores {
  PaddedIndex ix;
  at::Tensor q, k, v;  // padded [B, H, L, d], compute dtype
  at::Tensor s;        // [B, H, L, L] alpha q.k
  at::Tensor scale;    // [B, 1, L, L] mask / N
};

CompressedScores compressed_scores(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                                   const at::Tensor& seq_offsets, const at::Tensor& region,
                                   const at::Tensor& is_token, int64_t max_seq_len, double alpha) {
  CompressedScores sc;
  const auto compute = compute_type(q);
  sc.ix = make_index(seq_offsets);
  const int64_t L = sc.ix.max_len;
  const at::Tensor pos = at::arange(L, sc.ix.lengths.options());
  const at::Tensor in_seq = pos.view({1, L}) < sc.ix.lengths.view({-1, 1});  // [B, L]
  const at::Tensor reg = to_padded_rows(region.to(at::kLong), sc.ix, -1);    // [B, L]
  const at::Tensor tok = to_padded_rows(is_token, sc.ix, false);             // [B, L]
  const at::Tensor causal = (pos.view({1, L}) <= pos.view({L, 1})).unsqueeze(0);
  const at::Tensor same_region = reg.unsqueeze(2) == reg.unsqueeze(1);
  const at::Tensor mask =
      causal & in_seq.unsqueeze(2) & in_seq.unsqueeze(1) & (tok.unsqueeze(1) | same_region);
  sc.scale = mask.unsqueeze(1).to(compute) / static_cast<double>(max_seq_len);
  sc.q = to_padded(q.to(compute), sc.ix);
  sc.k = to_padded(k.to(compute), sc.ix);
  sc.v = to_padded(v.to(compute), sc.ix);
  sc.s = at::matmul(sc.q, sc.k.transpose(-1, -2)) * alpha;
  return sc;
}

at::Tensor forward_cpu(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                       const at::Tensor& seq_offsets, const at::Tensor& region,
                       const at::Tensor& is_token, int64_t max_seq_len, double alpha,
                       bool /*skip_empty_tiles: the CPU path is dense*/) {
  const HstuShapes shapes = check_cpu_args(q, k, v, seq_offsets, region, is_token, max_seq_len);
  if (shapes.total_len == 0) return at::empty({0, shapes.num_heads, shapes.dim_v}, q.options());
  const CompressedScores sc =
      compressed_scores(q, k, v, seq_offsets, region, is_token, max_seq_len, alpha);
  return from_padded(silu_attention_forward(sc.s, sc.scale, sc.v), sc.ix).to(q.scalar_type());
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> backward_cpu(
    const at::Tensor& grad_out, const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
    const at::Tensor& seq_offsets, const at::Tensor& region, const at::Tensor& is_token,
    int64_t max_seq_len, double alpha, bool /*skip_empty_tiles*/) {
  const HstuShapes shapes = check_cpu_args(q, k, v, seq_offsets, region, is_token, max_seq_len);
  check_grad_out(grad_out, q, shapes);
  if (shapes.total_len == 0) return {at::zeros_like(q), at::zeros_like(k), at::zeros_like(v)};
  const CompressedScores sc =
      compressed_scores(q, k, v, seq_offsets, region, is_token, max_seq_len, alpha);
  const at::Tensor dout = to_padded(grad_out.to(sc.q.scalar_type()), sc.ix);
  const SiluAttentionGrads g =
      silu_attention_backward(dout, sc.q, sc.k, sc.v, sc.s, sc.scale, alpha);
  const auto out_type = q.scalar_type();
  return {from_padded(g.dq, sc.ix).to(out_type), from_padded(g.dk, sc.ix).to(out_type),
          from_padded(g.dv, sc.ix).to(out_type)};
}

}  // namespace

TORCH_LIBRARY_IMPL(freescale, CPU, m) {
  m.impl("compressed_attention", &forward_cpu);
  m.impl("compressed_attention_backward", &backward_cpu);
}

}  // namespace freescale::ops
