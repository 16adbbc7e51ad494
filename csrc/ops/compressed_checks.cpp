#include "ops/compressed_checks.h"

#include <c10/util/Exception.h>

#include <optional>

namespace freescale::ops {

HstuShapes check_compressed_args(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                                 const at::Tensor& seq_offsets, const at::Tensor& region,
                                 const at::Tensor& is_token, int64_t max_seq_len) {
  // q/k/v/offsets metadata is checked exactly as for hstu_attention (no mask extras, no bias).
  const std::optional<at::Tensor> none;
  const HstuArgs a{q, k, v, seq_offsets, max_seq_len, 1.0, none, 0, 0, none, none, none};
  const HstuShapes shapes = check_hstu_args(a);
  TORCH_CHECK(region.dim() == 1 && region.size(0) == shapes.total_len,
              "compressed_attention: region must be [T] = [", shapes.total_len, "], got ",
              region.sizes());
  TORCH_CHECK(region.scalar_type() == at::kInt, "compressed_attention: region must be int32, got ",
              region.scalar_type());
  TORCH_CHECK(is_token.dim() == 1 && is_token.size(0) == shapes.total_len,
              "compressed_attention: is_token must be [T] = [", shapes.total_len, "], got ",
              is_token.sizes());
  TORCH_CHECK(is_token.scalar_type() == at::kBool,
              "compressed_attention: is_token must be bool, got ", is_token.scalar_type());
  TORCH_CHECK(region.device() == q.device() && is_token.device() == q.device(),
              "compressed_attention: region and is_token must be on q's device ", q.device(),
              ", got ", region.device(), " and ", is_token.device());
  return shapes;
}

}  // namespace freescale::ops
