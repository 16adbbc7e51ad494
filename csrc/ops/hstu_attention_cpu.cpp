// CPU implementation of the HSTU attention ops: padded dense ATen math, float64-capable.
//
// Forward and backward are written out from the formulas of DESIGN §4 (not autograd), so the
// float64 Python reference (freescale_ext.reference), which is differentiated by autograd, is an
// independent check of them. Half-precision inputs are computed in float32.
#include <ATen/ATen.h>
#include <torch/library.h>

#include "ops/hstu_checks.h"
#include "ops/padded_dense.h"

namespace freescale::ops {
namespace {

struct MaskAndBias {
  at::Tensor mask;       // [B, L, L] bool
  at::Tensor bias;       // [B, L, L] compute dtype, or undefined
  at::Tensor pos_index;  // [L, L] int64 into pos_weight
  at::Tensor ts_bucket;  // [B, L, L] int64 into ts_weight
};

MaskAndBias build_mask_and_bias(const PaddedIndex& ix, const HstuArgs& a, at::ScalarType compute) {
  const int64_t L = ix.max_len;
  const int64_t c = a.contextual_len;
  const auto long_opts = ix.lengths.options();
  const at::Tensor pos = at::arange(L, long_opts);
  const at::Tensor len = ix.lengths.view({-1, 1});  // [B, 1]
  at::Tensor ids = (c > 0 ? (pos - c + 1).clamp_min(0) : pos).view({1, L}).expand({ix.batch, L});
  at::Tensor max_id = c > 0 ? len - c + 1 : len.clone();  // [B, 1]
  if (a.num_targets.has_value()) {
    max_id = max_id - a.num_targets->to(at::kLong).view({-1, 1});
    ids = at::minimum(ids, max_id);
  }
  const at::Tensor row = ids.unsqueeze(2);
  const at::Tensor col = ids.unsqueeze(1);
  at::Tensor valid = at::eq(pos.view({L, 1}), pos.view({1, L})).unsqueeze(0) | (row > col);
  if (a.max_attn_len > 0) valid = valid & ((row - col) <= a.max_attn_len);
  if (c > 0) valid = valid | ((row == 0) & (col < max_id.unsqueeze(2)));
  const at::Tensor in_seq = pos.view({1, L}) < len;  // [B, L]
  valid = valid & in_seq.unsqueeze(2) & in_seq.unsqueeze(1);

  MaskAndBias out;
  out.mask = valid;
  if (a.pos_weight.has_value()) {
    const int64_t n = a.max_seq_len;
    out.pos_index = (pos.view({1, L}) - pos.view({L, 1}) + (n - 1)).clamp(0, 2 * n - 2);
    out.bias = a.pos_weight->to(compute).index({out.pos_index}).unsqueeze(0);
  }
  if (a.ts_weight.has_value()) {
    const int64_t nb = a.ts_weight->size(0) - 1;
    at::Tensor ts = at::zeros({ix.batch, L}, long_opts);
    ts.index_put_({ix.batch_index, ix.position}, a.timestamps->to(at::kLong));
    // t_{i+1} within the sequence; the last token uses its own timestamp.
    const at::Tensor next = at::minimum(pos.view({1, L}) + 1, (len - 1).clamp_min(0));
    const at::Tensor ts_next = ts.gather(1, next.expand({ix.batch, L}));
    const at::Tensor delta = (ts_next.unsqueeze(2) - ts.unsqueeze(1)).abs().clamp_min(1);
    out.ts_bucket = at::floor(at::log(delta.to(at::kDouble)) / 0.301).to(at::kLong).clamp(0, nb);
    const at::Tensor ts_bias = a.ts_weight->to(compute).index({out.ts_bucket});
    out.bias = out.bias.defined() ? out.bias + ts_bias : ts_bias;
  }
  return out;
}

struct Scores {
  PaddedIndex ix;
  MaskAndBias mb;
  at::Tensor q, k, v;  // padded, compute dtype
  at::Tensor s;        // [B, H, L, L] alpha q.k + bias
  at::Tensor maskf;    // [B, 1, L, L] compute dtype
};

Scores compute_scores(const HstuArgs& a) {
  Scores sc;
  const auto compute = compute_type(a.q);
  sc.ix = make_index(a.seq_offsets);
  sc.mb = build_mask_and_bias(sc.ix, a, compute);
  sc.q = to_padded(a.q.to(compute), sc.ix);
  sc.k = to_padded(a.k.to(compute), sc.ix);
  sc.v = to_padded(a.v.to(compute), sc.ix);
  sc.s = at::matmul(sc.q, sc.k.transpose(-1, -2)) * a.alpha;
  if (sc.mb.bias.defined()) sc.s = sc.s + sc.mb.bias.unsqueeze(1);
  sc.maskf = sc.mb.mask.unsqueeze(1).to(compute);
  return sc;
}

at::Tensor forward_cpu(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                       const at::Tensor& seq_offsets, int64_t max_seq_len, double alpha,
                       const std::optional<at::Tensor>& num_targets, int64_t contextual_len,
                       int64_t max_attn_len, const std::optional<at::Tensor>& pos_weight,
                       const std::optional<at::Tensor>& ts_weight,
                       const std::optional<at::Tensor>& timestamps) {
  const HstuArgs a{q,
                   k,
                   v,
                   seq_offsets,
                   max_seq_len,
                   alpha,
                   num_targets,
                   contextual_len,
                   max_attn_len,
                   pos_weight,
                   ts_weight,
                   timestamps};
  const HstuShapes shapes = check_hstu_args(a);
  check_seq_offsets_values(seq_offsets, shapes.total_len, max_seq_len, num_targets);
  if (shapes.total_len == 0) return at::empty({0, shapes.num_heads, shapes.dim_v}, q.options());
  const Scores sc = compute_scores(a);
  const at::Tensor scale = sc.maskf / static_cast<double>(max_seq_len);
  return from_padded(silu_attention_forward(sc.s, scale, sc.v), sc.ix).to(q.scalar_type());
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor> backward_cpu(
    const at::Tensor& grad_out, const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
    const at::Tensor& seq_offsets, int64_t max_seq_len, double alpha,
    const std::optional<at::Tensor>& num_targets, int64_t contextual_len, int64_t max_attn_len,
    const std::optional<at::Tensor>& pos_weight, const std::optional<at::Tensor>& ts_weight,
    const std::optional<at::Tensor>& timestamps) {
  const HstuArgs a{q,
                   k,
                   v,
                   seq_offsets,
                   max_seq_len,
                   alpha,
                   num_targets,
                   contextual_len,
                   max_attn_len,
                   pos_weight,
                   ts_weight,
                   timestamps};
  const HstuShapes shapes = check_hstu_args(a);
  check_grad_out(grad_out, q, shapes);
  check_seq_offsets_values(seq_offsets, shapes.total_len, max_seq_len, num_targets);
  at::Tensor grad_pos =
      pos_weight.has_value() ? at::zeros_like(*pos_weight) : at::empty({0}, q.options());
  at::Tensor grad_ts =
      ts_weight.has_value() ? at::zeros_like(*ts_weight) : at::empty({0}, q.options());
  if (shapes.total_len == 0) {
    return {at::zeros_like(q), at::zeros_like(k), at::zeros_like(v), grad_pos, grad_ts};
  }
  const auto compute = compute_type(q);
  const Scores sc = compute_scores(a);
  const at::Tensor dout = to_padded(grad_out.to(compute), sc.ix);
  const at::Tensor scale = sc.maskf / static_cast<double>(max_seq_len);
  const SiluAttentionGrads g = silu_attention_backward(dout, sc.q, sc.k, sc.v, sc.s, scale, alpha);
  const at::Tensor dq = from_padded(g.dq, sc.ix);
  const at::Tensor dk = from_padded(g.dk, sc.ix);
  const at::Tensor dv = from_padded(g.dv, sc.ix);

  if (pos_weight.has_value() || ts_weight.has_value()) {
    const at::Tensor ds_pairs = g.ds.sum(1);  // [B, L, L]: the bias is shared across heads
    if (pos_weight.has_value()) {
      const at::Tensor per_pair = ds_pairs.sum(0).flatten();
      grad_pos = at::zeros({pos_weight->size(0)}, per_pair.options())
                     .index_add_(0, sc.mb.pos_index.flatten(), per_pair)
                     .to(pos_weight->scalar_type());
    }
    if (ts_weight.has_value()) {
      grad_ts = at::zeros({ts_weight->size(0)}, ds_pairs.options())
                    .index_add_(0, sc.mb.ts_bucket.flatten(), ds_pairs.flatten())
                    .to(ts_weight->scalar_type());
    }
  }
  return {dq.to(q.scalar_type()), dk.to(q.scalar_type()), dv.to(q.scalar_type()), grad_pos,
          grad_ts};
}

void check_seq_offsets_op(const at::Tensor& seq_offsets, int64_t total_len, int64_t max_seq_len,
                          const std::optional<at::Tensor>& num_targets) {
  check_seq_offsets_values(seq_offsets, total_len, max_seq_len, num_targets);
}

}  // namespace

TORCH_LIBRARY_IMPL(freescale, CPU, m) {
  m.impl("hstu_attention", &forward_cpu);
  m.impl("hstu_attention_backward", &backward_cpu);
  m.impl("check_seq_offsets", &check_seq_offsets_op);
}

// Offsets validation reads data wherever it lives (a device sync for CUDA tensors, by design:
// callers opt into it, see freescale_ext.hstu_attention).
TORCH_LIBRARY_IMPL(freescale, CUDA, m) { m.impl("check_seq_offsets", &check_seq_offsets_op); }

}  // namespace freescale::ops
