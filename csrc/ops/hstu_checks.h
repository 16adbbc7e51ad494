// Input checks shared by the CPU and CUDA HSTU attention ops. Every check throws a
// c10::Error (a Python RuntimeError/ValueError) naming the offending values.
#pragma once

#include <ATen/core/Tensor.h>

#include <optional>

namespace freescale::ops {

// The arguments of one hstu_attention call, as the op schema lists them.
struct HstuArgs {
  const at::Tensor& q;
  const at::Tensor& k;
  const at::Tensor& v;
  const at::Tensor& seq_offsets;
  int64_t max_seq_len;
  double alpha;
  const std::optional<at::Tensor>& num_targets;
  int64_t contextual_len;
  int64_t max_attn_len;
  const std::optional<at::Tensor>& pos_weight;
  const std::optional<at::Tensor>& ts_weight;
  const std::optional<at::Tensor>& timestamps;
};

struct HstuShapes {
  int64_t total_len;
  int64_t batch_size;
  int64_t num_heads;
  int64_t dim_qk;
  int64_t dim_v;
};

// Metadata only (dtype, device, shapes, sizes of the bias tables): never reads tensor data, so
// it costs no device synchronization.
HstuShapes check_hstu_args(const HstuArgs& args);

void check_grad_out(const at::Tensor& grad_out, const at::Tensor& q, const HstuShapes& shapes);

// Content checks of the offsets (and num_targets): starts at 0, non-decreasing, ends at
// total_len, every length <= max_seq_len, 0 <= num_targets[b] <= length[b]. Reads the data, so
// for CUDA tensors this synchronizes with the device.
void check_seq_offsets_values(const at::Tensor& seq_offsets, int64_t total_len, int64_t max_seq_len,
                              const std::optional<at::Tensor>& num_targets);

// The tensor itself if its last two dims are packed ([T, H, d] with row stride >= H*d), else a
// packed copy; kernels take a row stride so views into a fused projection need no copy.
at::Tensor head_packed(const at::Tensor& t);

}  // namespace freescale::ops
