#include "ops/padded_dense.h"

namespace freescale::ops {

PaddedIndex make_index(const at::Tensor& seq_offsets) {
  PaddedIndex ix;
  const at::Tensor offsets = seq_offsets.to(at::kLong);
  ix.batch = offsets.size(0) - 1;
  ix.lengths = offsets.slice(0, 1) - offsets.slice(0, 0, ix.batch);
  ix.max_len = ix.batch > 0 ? ix.lengths.max().item<int64_t>() : 0;
  ix.batch_index = at::repeat_interleave(at::arange(ix.batch, offsets.options()), ix.lengths);
  ix.position = at::arange(ix.batch_index.size(0), offsets.options()) -
                offsets.index_select(0, ix.batch_index);
  return ix;
}

at::Tensor to_padded(const at::Tensor& x, const PaddedIndex& ix) {
  return to_padded_rows(x, ix, 0).permute({0, 2, 1, 3});
}

at::Tensor to_padded_rows(const at::Tensor& x, const PaddedIndex& ix, const at::Scalar& fill) {
  std::vector<int64_t> shape{ix.batch, ix.max_len};
  shape.insert(shape.end(), x.sizes().begin() + 1, x.sizes().end());
  at::Tensor out = at::full(shape, fill, x.options());
  out.index_put_({ix.batch_index, ix.position}, x);
  return out;
}

at::Tensor from_padded(const at::Tensor& y, const PaddedIndex& ix) {
  return y.permute({0, 2, 1, 3}).index({ix.batch_index, ix.position});
}

at::ScalarType compute_type(const at::Tensor& q) {
  return q.scalar_type() == at::kDouble ? at::kDouble : at::kFloat;
}

at::Tensor silu_attention_forward(const at::Tensor& s, const at::Tensor& scale,
                                  const at::Tensor& v) {
  return at::matmul(at::silu(s).mul_(scale), v);
}

SiluAttentionGrads silu_attention_backward(const at::Tensor& dout, const at::Tensor& q,
                                           const at::Tensor& k, const at::Tensor& v,
                                           const at::Tensor& s, const at::Tensor& scale,
                                           double alpha) {
  // Elementwise work on [B, H, L, L] dominates on CPU: update in place.
  const at::Tensor sig = at::sigmoid(s);
  const at::Tensor p = s * sig;
  at::Tensor ds = (1 - sig).mul_(s).add_(1).mul_(sig);         // dSiLU/ds
  ds.mul_(at::matmul(dout, v.transpose(-1, -2))).mul_(scale);  // * dP
  p.mul_(scale);
  SiluAttentionGrads g;
  g.dq = at::matmul(ds, k) * alpha;
  g.dk = at::matmul(ds.transpose(-1, -2), q) * alpha;
  g.dv = at::matmul(p.transpose(-1, -2), dout);
  g.ds = ds;
  return g;
}

}  // namespace freescale::ops
