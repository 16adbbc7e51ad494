#include "ops/hstu_checks.h"

#include <ATen/ATen.h>
#include <c10/util/Exception.h>

namespace freescale::ops {
namespace {

bool is_supported_float(at::ScalarType t) {
  return t == at::kFloat || t == at::kHalf || t == at::kBFloat16 || t == at::kDouble;
}

void check_same_device(const at::Tensor& t, const at::Tensor& q, const char* name) {
  TORCH_CHECK(t.device() == q.device(), "hstu_attention: ", name, " is on ", t.device(),
              " but q is on ", q.device());
}

void check_table(const std::optional<at::Tensor>& table, const at::Tensor& q, const char* name) {
  if (!table.has_value()) return;
  const auto& t = *table;
  check_same_device(t, q, name);
  TORCH_CHECK(t.dim() == 1, "hstu_attention: ", name, " must be 1-D, got shape ", t.sizes());
  TORCH_CHECK(t.scalar_type() == at::kFloat || t.scalar_type() == q.scalar_type(),
              "hstu_attention: ", name, " must be float32 or q's dtype (", q.scalar_type(),
              "), got ", t.scalar_type());
}

}  // namespace

HstuShapes check_hstu_args(const HstuArgs& a) {
  [[maybe_unused]] const auto& [q, k, v, seq_offsets, max_seq_len, alpha, num_targets,
                                contextual_len, max_attn_len, pos_weight, ts_weight, timestamps] =
      a;
  TORCH_CHECK(q.dim() == 3 && k.dim() == 3 && v.dim() == 3,
              "hstu_attention: q, k, v must be [T, H, d]; got q ", q.sizes(), ", k ", k.sizes(),
              ", v ", v.sizes());
  TORCH_CHECK(is_supported_float(q.scalar_type()),
              "hstu_attention: q must be float32, float16, bfloat16 or float64, got ",
              q.scalar_type());
  TORCH_CHECK(k.scalar_type() == q.scalar_type() && v.scalar_type() == q.scalar_type(),
              "hstu_attention: q, k, v must share a dtype; got ", q.scalar_type(), ", ",
              k.scalar_type(), ", ", v.scalar_type());
  check_same_device(k, q, "k");
  check_same_device(v, q, "v");
  check_same_device(seq_offsets, q, "seq_offsets");
  TORCH_CHECK(k.sizes() == q.sizes(), "hstu_attention: k must have q's shape ", q.sizes(), ", got ",
              k.sizes());
  TORCH_CHECK(v.size(0) == q.size(0) && v.size(1) == q.size(1),
              "hstu_attention: v must be [T, H, d_v] with T=", q.size(0), " and H=", q.size(1),
              ", got ", v.sizes());
  TORCH_CHECK(q.size(2) > 0 && v.size(2) > 0, "hstu_attention: head dims must be positive");
  TORCH_CHECK(seq_offsets.dim() == 1 && seq_offsets.size(0) >= 1,
              "hstu_attention: seq_offsets must be a 1-D tensor of B+1 offsets, got shape ",
              seq_offsets.sizes());
  TORCH_CHECK(seq_offsets.scalar_type() == at::kInt,
              "hstu_attention: seq_offsets must be int32, got ", seq_offsets.scalar_type());
  TORCH_CHECK(max_seq_len >= 1, "hstu_attention: max_seq_len must be >= 1, got ", max_seq_len);
  TORCH_CHECK(contextual_len >= 0, "hstu_attention: contextual_len must be >= 0, got ",
              contextual_len);
  TORCH_CHECK(max_attn_len >= 0, "hstu_attention: max_attn_len must be >= 0, got ", max_attn_len);
  TORCH_CHECK(q.size(0) <= std::numeric_limits<int32_t>::max(),
              "hstu_attention: at most 2^31-1 tokens, got ", q.size(0));

  const int64_t batch = seq_offsets.size(0) - 1;
  if (num_targets.has_value()) {
    check_same_device(*num_targets, q, "num_targets");
    TORCH_CHECK(num_targets->dim() == 1 && num_targets->size(0) == batch,
                "hstu_attention: num_targets must have shape [B]=[", batch, "], got ",
                num_targets->sizes());
    TORCH_CHECK(num_targets->scalar_type() == at::kInt,
                "hstu_attention: num_targets must be int32, got ", num_targets->scalar_type());
  }
  check_table(pos_weight, q, "pos_weight");
  if (pos_weight.has_value()) {
    TORCH_CHECK(pos_weight->size(0) == 2 * max_seq_len - 1,
                "hstu_attention: pos_weight must have 2*max_seq_len-1 = ", 2 * max_seq_len - 1,
                " entries, got ", pos_weight->size(0));
  }
  check_table(ts_weight, q, "ts_weight");
  if (ts_weight.has_value()) {
    TORCH_CHECK(ts_weight->size(0) >= 1, "hstu_attention: ts_weight is empty");
    TORCH_CHECK(timestamps.has_value(), "hstu_attention: ts_weight needs timestamps");
  }
  if (timestamps.has_value()) {
    check_same_device(*timestamps, q, "timestamps");
    TORCH_CHECK(ts_weight.has_value(), "hstu_attention: timestamps given without ts_weight");
    TORCH_CHECK(timestamps->dim() == 1 && timestamps->size(0) == q.size(0),
                "hstu_attention: timestamps must have shape [T]=[", q.size(0), "], got ",
                timestamps->sizes());
    TORCH_CHECK(timestamps->scalar_type() == at::kLong,
                "hstu_attention: timestamps must be int64, got ", timestamps->scalar_type());
  }
  return {q.size(0), batch, q.size(1), q.size(2), v.size(2)};
}

void check_grad_out(const at::Tensor& grad_out, const at::Tensor& q, const HstuShapes& s) {
  TORCH_CHECK(grad_out.dim() == 3 && grad_out.size(0) == s.total_len &&
                  grad_out.size(1) == s.num_heads && grad_out.size(2) == s.dim_v,
              "hstu_attention_backward: grad_out must be [", s.total_len, ", ", s.num_heads, ", ",
              s.dim_v, "], got ", grad_out.sizes());
  TORCH_CHECK(grad_out.scalar_type() == q.scalar_type(),
              "hstu_attention_backward: grad_out must be ", q.scalar_type(), ", got ",
              grad_out.scalar_type());
  check_same_device(grad_out, q, "grad_out");
}

void check_seq_offsets_values(const at::Tensor& seq_offsets, int64_t total_len, int64_t max_seq_len,
                              const std::optional<at::Tensor>& num_targets) {
  TORCH_CHECK(seq_offsets.dim() == 1 && seq_offsets.size(0) >= 1,
              "seq_offsets must be a 1-D tensor of B+1 offsets, got shape ", seq_offsets.sizes());
  const at::Tensor offsets = seq_offsets.to(at::kCPU, at::kLong).contiguous();
  const int64_t* o = offsets.data_ptr<int64_t>();
  const int64_t batch = offsets.size(0) - 1;
  TORCH_CHECK(o[0] == 0, "seq_offsets[0] must be 0, got ", o[0]);
  for (int64_t b = 0; b < batch; ++b) {
    TORCH_CHECK(o[b + 1] >= o[b], "seq_offsets must be non-decreasing: seq_offsets[", b, "]=", o[b],
                " > seq_offsets[", b + 1, "]=", o[b + 1]);
    TORCH_CHECK(o[b + 1] - o[b] <= max_seq_len, "sequence ", b, " has length ", o[b + 1] - o[b],
                " > max_seq_len=", max_seq_len);
  }
  TORCH_CHECK(o[batch] == total_len, "seq_offsets[-1]=", o[batch],
              " must equal the number of tokens T=", total_len,
              o[batch] > total_len ? " (the offsets overrun the values)" : "");
  if (num_targets.has_value()) {
    const at::Tensor nt = num_targets->to(at::kCPU, at::kLong).contiguous();
    TORCH_CHECK(nt.numel() == batch, "num_targets must have ", batch, " entries, got ", nt.numel());
    const int64_t* n = nt.data_ptr<int64_t>();
    for (int64_t b = 0; b < batch; ++b) {
      TORCH_CHECK(n[b] >= 0 && n[b] <= o[b + 1] - o[b], "num_targets[", b, "]=", n[b],
                  " must be in [0, length=", o[b + 1] - o[b], "]");
    }
  }
}

at::Tensor head_packed(const at::Tensor& t) {
  if (t.stride(2) == 1 && t.stride(1) == t.size(2) && t.stride(0) >= t.size(1) * t.size(2)) {
    return t;
  }
  return t.contiguous();
}

}  // namespace freescale::ops
