// CUDA implementation of the HSTU attention ops: checks, device guard, current stream, then
// the torch-free kernels of csrc/attention.
#include <ATen/ATen.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include <algorithm>
#include <array>
#include <cstdlib>
#include <string_view>

#include "attention/head_widths.h"
#include "attention/hstu_simple.h"
#include "attention/hstu_sm90.h"
#include "ops/cuda_check.h"
#include "ops/hstu_checks.h"

namespace freescale::ops {
namespace {

using attention::HstuParams;
using attention::ScalarKind;

ScalarKind scalar_kind(at::ScalarType t) {
  switch (t) {
    case at::kFloat:
      return ScalarKind::kFloat32;
    case at::kHalf:
      return ScalarKind::kFloat16;
    case at::kBFloat16:
      return ScalarKind::kBFloat16;
    default:
      TORCH_CHECK(false, "hstu_attention on CUDA supports float32, float16 and bfloat16, got ", t,
                  " (float64 runs on the CPU reference path)");
  }
}

// Tensors whose storage must outlive the launch (packed, contiguous or converted copies).
struct PreparedInputs {
  at::Tensor q, k, v, seq_offsets, num_targets, pos_weight, ts_weight, timestamps;
};

HstuParams make_params(const HstuArgs& a, const HstuShapes& s, PreparedInputs& keep) {
  TORCH_CHECK(a.q.is_cuda(), "hstu_attention CUDA kernel got a tensor on ", a.q.device());
  TORCH_CHECK(std::max(s.dim_qk, s.dim_v) <= attention::kSimpleMaxHeadDim,
              "hstu_attention: head dims up to ", attention::kSimpleMaxHeadDim,
              " are supported, got d_qk=", s.dim_qk, ", d_v=", s.dim_v);
  TORCH_CHECK(a.max_seq_len <= std::numeric_limits<int32_t>::max() / 2,
              "hstu_attention: max_seq_len too large: ", a.max_seq_len);
  keep.q = head_packed(a.q);
  keep.k = head_packed(a.k);
  keep.v = head_packed(a.v);
  HstuParams p;
  p.dtype = scalar_kind(a.q.scalar_type());
  p.batch_size = static_cast<int>(s.batch_size);
  p.num_heads = static_cast<int>(s.num_heads);
  p.dim_qk = static_cast<int>(s.dim_qk);
  p.dim_v = static_cast<int>(s.dim_v);
  p.total_len = s.total_len;
  p.max_seq_len = static_cast<int>(a.max_seq_len);
  p.alpha = static_cast<float>(a.alpha);
  p.contextual_len = static_cast<int>(a.contextual_len);
  p.max_attn_len = static_cast<int>(a.max_attn_len);
  // The kernels index these 1-D tensors densely, so strided views need a contiguous copy, kept
  // alive in `keep` until the launch (a temporary would be freed, and its memory reused, first).
  keep.seq_offsets = a.seq_offsets.contiguous();
  p.seq_offsets = keep.seq_offsets.data_ptr<int32_t>();
  if (a.num_targets.has_value()) {
    keep.num_targets = a.num_targets->contiguous();
    p.num_targets = keep.num_targets.data_ptr<int32_t>();
  }
  p.q = keep.q.data_ptr();
  p.k = keep.k.data_ptr();
  p.v = keep.v.data_ptr();
  p.q_row_stride = keep.q.stride(0);
  p.k_row_stride = keep.k.stride(0);
  p.v_row_stride = keep.v.stride(0);
  if (a.pos_weight.has_value()) {
    keep.pos_weight = a.pos_weight->to(at::kFloat).contiguous();
    p.bias.pos_weight = keep.pos_weight.data_ptr<float>();
  }
  if (a.ts_weight.has_value()) {
    keep.ts_weight = a.ts_weight->to(at::kFloat).contiguous();
    p.bias.ts_weight = keep.ts_weight.data_ptr<float>();
    p.bias.num_ts_buckets = static_cast<int>(keep.ts_weight.size(0) - 1);
    attention::fill_ts_bucket_tables(p.bias.num_ts_buckets, &p.bias.ts_tables);
    keep.timestamps = a.timestamps->contiguous();
    p.bias.timestamps = keep.timestamps.data_ptr<int64_t>();
  }
  return p;
}

// Which kernels run: FREESCALE_HSTU_FORWARD / FREESCALE_HSTU_BACKWARD = simple, auto (sm_90a
// where it takes the inputs, else simple) or sm90 (an error where the sm_90a path cannot take
// the inputs; tests and benchmarks use it to pin the path they measure). The default is auto
// since the sm_90a kernels passed their GPU tests and compute-sanitizer (H100, 2026-12-05);
// even with the relative bias, their slowest path, they are 4x the simple kernels.
constexpr std::string_view kDefaultKernel = "auto";

std::string_view kernel_choice(const char* variable) {
  const char* env = std::getenv(variable);
  const std::string_view choice = env == nullptr ? kDefaultKernel : env;
  TORCH_CHECK(choice == "auto" || choice == "simple" || choice == "sm90", variable,
              " must be auto, simple or sm90, got '", choice, "'");
  return choice;
}

// True when the sm_90a kernel runs; `unsupported` is its reason to decline, or nullptr.
bool use_sm90(const char* variable, std::string_view choice, const char* unsupported) {
  if (choice == "simple") return false;
  TORCH_CHECK(unsupported == nullptr || choice == "auto", "hstu_attention: ", variable,
              "=sm90, but the sm_90a kernel cannot run these inputs: ",
              unsupported == nullptr ? "" : unsupported);
  return unsupported == nullptr;
}

// The sm_90a kernels take head dims 64/128/256 on TMA-compatible layouts. Other 16-bit calls
// with head dims up to 256 (ML-1M's 25 and 50, d_qk != d_v, misaligned views) run them on
// zero-padded copies: zero columns of q and k leave q.k unchanged, and zero columns of v only
// add output columns, which are dropped. Returns the padded dim where the kernel would take
// the padded call (checked on a probe of its layout before anything is copied), else 0.
int64_t sm90_padded_dim(const HstuParams& p, const HstuShapes& s, at::ScalarType dtype,
                        bool backward) {
  if ((dtype != at::kHalf && dtype != at::kBFloat16) ||
      attention::hstu_sm90_device_unsupported() != nullptr) {
    return 0;
  }
  const int64_t d = std::max(s.dim_qk, s.dim_v);
  const int64_t dim = d <= 64 ? 64 : d <= 128 ? 128 : d <= 256 ? 256 : 0;
  if (dim == 0) return 0;
  alignas(16) static const char placeholder[16] = {};  // only its alignment is looked at
  HstuParams probe = p;
  probe.q = probe.k = probe.v = probe.grad_out = placeholder;
  probe.dim_qk = probe.dim_v = static_cast<int>(dim);
  probe.q_row_stride = probe.k_row_stride = probe.v_row_stride = probe.grad_out_row_stride =
      s.num_heads * dim;
  const char* unsupported = backward ? attention::hstu_sm90_backward_unsupported(probe)
                                     : attention::hstu_sm90_forward_unsupported(probe);
  return unsupported == nullptr ? dim : 0;
}

// Tensors of a padded call that must outlive its launch.
struct PaddedInputs {
  at::Tensor q, k, v, grad_out, dq_accum;
};

// `p` with q, k, v (and, for the backward, dO) replaced by copies zero-padded to `dim` columns
// per head, kept in `keep`, and (backward) a zeroed fp32 dq_accum: one launch for all of them
// (head_widths.h says what the torch ops it replaces cost).
HstuParams padded_params(HstuParams p, int64_t dim, const HstuShapes& s, const at::Tensor& like,
                         bool backward, PaddedInputs& keep, cudaStream_t stream) {
  attention::HeadWidthCopies copies;
  copies.tokens = s.total_len;
  copies.heads = static_cast<int>(s.num_heads);
  const auto add_copy = [&](const void* src, int64_t src_row_stride, int src_dim, at::Tensor& dst,
                            int64_t dst_dim) {
    copies.copy[copies.count++] = {src, src_row_stride, src_dim, dst.data_ptr(),
                                   static_cast<int>(dst_dim)};
  };
  const auto pad = [&](const void*& data, int64_t& row_stride, int src_dim, at::Tensor& copy) {
    copy = at::empty({s.total_len, s.num_heads, dim}, like.options());
    add_copy(data, row_stride, src_dim, copy, dim);
    data = copy.data_ptr();
    row_stride = s.num_heads * dim;
  };
  pad(p.q, p.q_row_stride, p.dim_qk, keep.q);
  pad(p.k, p.k_row_stride, p.dim_qk, keep.k);
  pad(p.v, p.v_row_stride, p.dim_v, keep.v);
  if (backward) {
    pad(p.grad_out, p.grad_out_row_stride, p.dim_v, keep.grad_out);
    // Zeroed as 16-bit rows twice as wide (a null source writes zeros).
    keep.dq_accum = at::empty({s.total_len, s.num_heads, dim}, like.options().dtype(at::kFloat));
    add_copy(nullptr, 0, 0, keep.dq_accum, 2 * dim);
    p.dq_accum = keep.dq_accum.data_ptr<float>();
  }
  p.dim_qk = p.dim_v = static_cast<int>(dim);
  FREESCALE_CUDA_CHECK(attention::copy_head_widths(copies, stream),
                       "hstu_attention head-dim padding kernel");
  return p;
}

// The first dims[j] columns per head of each padded [T, H, dim] output, as dense tensors, from
// one launch.
template <size_t N>
std::array<at::Tensor, N> unpadded(const std::array<at::Tensor, N>& padded,
                                   const std::array<int64_t, N>& dims, cudaStream_t stream) {
  attention::HeadWidthCopies copies;
  copies.tokens = padded[0].size(0);
  copies.heads = static_cast<int>(padded[0].size(1));
  std::array<at::Tensor, N> out;
  for (size_t j = 0; j < N; ++j) {
    out[j] = at::empty({copies.tokens, copies.heads, dims[j]}, padded[j].options());
    copies.copy[copies.count++] = {padded[j].data_ptr(), padded[j].stride(0),
                                   static_cast<int>(padded[j].size(2)), out[j].data_ptr(),
                                   static_cast<int>(dims[j])};
  }
  FREESCALE_CUDA_CHECK(attention::copy_head_widths(copies, stream),
                       "hstu_attention head-dim unpadding kernel");
  return out;
}

// The sm_90a forward's loop without the bias: FREESCALE_HSTU_SM90_LOOP = auto (the default:
// by head dim and max_seq_len, hopper::forward_loop_for), plain, overlap (the next step's Q K^T
// beside this step's P V) or pingpong (overlap, and the two consumer warpgroups taking turns at
// the tensor cores); to measure them against each other.
int sm90_forward_loop() {
  const char* env = std::getenv("FREESCALE_HSTU_SM90_LOOP");
  const std::string_view loop = env == nullptr ? "auto" : env;
  TORCH_CHECK(loop == "auto" || loop == "plain" || loop == "overlap" || loop == "pingpong",
              "FREESCALE_HSTU_SM90_LOOP must be auto, plain, overlap or pingpong, got '", loop,
              "'");
  return loop == "auto" ? -1 : loop == "plain" ? 0 : loop == "overlap" ? 1 : 2;
}

// How the sm_90a backward adds dQ at d = 64 and 128, and at d = 256 without the bias:
// FREESCALE_HSTU_SM90_DQ = bulk (shared memory and TMA tensor reductions, one per warp and 32
// columns; the default: 1.04-1.08x the atomics' backward on an H100 at d = 128,
// docs/hstu_sm90/17.md, 1.31x at d = 256, 22.md, 1.06x at d = 64, 23.md) or atomic (per-thread fp32
// atomics); to measure them against each other.
bool sm90_bulk_dq() {
  const char* env = std::getenv("FREESCALE_HSTU_SM90_DQ");
  const std::string_view mode = env == nullptr ? "bulk" : env;
  TORCH_CHECK(mode == "atomic" || mode == "bulk",
              "FREESCALE_HSTU_SM90_DQ must be atomic or bulk, got '", mode, "'");
  return mode == "bulk";
}

// The sm_90a kernels' tile-list workspace for `p` (kept alive by the returned tensor until the
// launch is queued: the caching allocator is stream-ordered). FREESCALE_HSTU_TILE_LIST=0 turns
// the list off (a grid over every tile of max_seq_len), to compare or to bisect.
at::Tensor attach_tile_list(HstuParams& p, int64_t bytes, const at::Tensor& like) {
  const char* env = std::getenv("FREESCALE_HSTU_TILE_LIST");
  if (bytes <= 0 || (env != nullptr && std::string_view(env) == "0")) return {};
  at::Tensor list = at::empty({bytes / 4}, like.options().dtype(at::kInt));
  p.tile_list = list.data_ptr<int>();
  return list;
}

at::Tensor forward_cuda(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
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
  const HstuShapes s = check_hstu_args(a);
  const c10::cuda::CUDAGuard guard(q.device());
  PreparedInputs keep;
  HstuParams p = make_params(a, s, keep);
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  const std::string_view choice = kernel_choice("FREESCALE_HSTU_FORWARD");
  p.sm90_forward_loop = choice == "simple" ? 0 : sm90_forward_loop();
  const char* unsupported = attention::hstu_sm90_forward_unsupported(p);
  const int64_t padded_dim = unsupported != nullptr && choice != "simple"
                                 ? sm90_padded_dim(p, s, q.scalar_type(), /*backward=*/false)
                                 : 0;
  if (padded_dim > 0) {
    PaddedInputs padded_keep;
    HstuParams pp = padded_params(p, padded_dim, s, q, /*backward=*/false, padded_keep, stream);
    const at::Tensor padded_out = at::empty({s.total_len, s.num_heads, padded_dim}, q.options());
    pp.out = padded_out.data_ptr();
    const at::Tensor tile_list =
        attach_tile_list(pp, attention::hstu_sm90_forward_workspace_bytes(pp), q);
    FREESCALE_CUDA_CHECK(attention::hstu_sm90_forward(pp, stream),
                         "hstu_attention sm_90a forward kernel");
    return unpadded<1>({padded_out}, {s.dim_v}, stream)[0];
  }
  at::Tensor out = at::empty({s.total_len, s.num_heads, s.dim_v}, q.options());
  p.out = out.data_ptr();
  if (use_sm90("FREESCALE_HSTU_FORWARD", choice, unsupported)) {
    const at::Tensor tile_list =
        attach_tile_list(p, attention::hstu_sm90_forward_workspace_bytes(p), q);
    FREESCALE_CUDA_CHECK(attention::hstu_sm90_forward(p, stream),
                         "hstu_attention sm_90a forward kernel");
  } else {
    FREESCALE_CUDA_CHECK(attention::hstu_simple_forward(p, stream),
                         "hstu_attention forward kernel");
  }
  return out;
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor> backward_cuda(
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
  const HstuShapes s = check_hstu_args(a);
  check_grad_out(grad_out, q, s);
  const c10::cuda::CUDAGuard guard(q.device());
  PreparedInputs keep;
  HstuParams p = make_params(a, s, keep);
  const at::Tensor dout = head_packed(grad_out);
  p.grad_out = dout.data_ptr();
  p.grad_out_row_stride = dout.stride(0);
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  const auto f32 = q.options().dtype(at::kFloat);
  // Bias gradients accumulate in fp32 across blocks, into `copies` copies of each table
  // (HstuBiasParams::grad_copies). The simple kernels take the table itself; the sm_90a backward
  // wants several, [copies, len] in one buffer zeroed by one fill, and writes their sums into
  // the returned tables itself. An absent table gets an empty one.
  at::Tensor grad_pos = at::empty({0}, q.options());
  at::Tensor grad_ts = at::empty({0}, q.options());
  at::Tensor table_copies;
  const auto allocate_table_grads = [&](HstuParams& params, int copies) {
    params.bias.grad_copies = copies;
    const int64_t pos_len = pos_weight.has_value() ? pos_weight->size(0) : 0;
    const int64_t ts_len = ts_weight.has_value() ? ts_weight->size(0) : 0;
    if (copies > 1) {
      // (kTsGradLanes floats per time bucket in each copy)
      table_copies = at::zeros({copies * (pos_len + ts_len * attention::kTsGradLanes)}, f32);
      float* const pos_copies = table_copies.data_ptr<float>();
      if (pos_len > 0) {
        grad_pos = at::empty({pos_len}, f32);
        params.bias.grad_pos = pos_copies;
        params.bias.grad_pos_sum = grad_pos.data_ptr<float>();
      }
      if (ts_len > 0) {
        grad_ts = at::empty({ts_len}, f32);
        params.bias.grad_ts = pos_copies + copies * pos_len;
        params.bias.grad_ts_sum = grad_ts.data_ptr<float>();
      }
      return;
    }
    if (pos_len > 0) {
      grad_pos = at::zeros({pos_len}, f32);
      params.bias.grad_pos = grad_pos.data_ptr<float>();
    }
    if (ts_len > 0) {
      grad_ts = at::zeros({ts_len}, f32);
      params.bias.grad_ts = grad_ts.data_ptr<float>();
    }
  };
  const auto table_grads = [&] {
    if (pos_weight.has_value()) grad_pos = grad_pos.to(pos_weight->scalar_type());
    if (ts_weight.has_value()) grad_ts = grad_ts.to(ts_weight->scalar_type());
  };
  const std::string_view choice = kernel_choice("FREESCALE_HSTU_BACKWARD");
  p.sm90_bulk_dq = choice != "simple" && sm90_bulk_dq();
  const char* unsupported = attention::hstu_sm90_backward_unsupported(p);
  const int64_t padded_dim = unsupported != nullptr && choice != "simple"
                                 ? sm90_padded_dim(p, s, q.scalar_type(), /*backward=*/true)
                                 : 0;
  if (padded_dim > 0) {
    PaddedInputs padded_keep;
    HstuParams pp = padded_params(p, padded_dim, s, q, /*backward=*/true, padded_keep, stream);
    const auto padded = [&] {
      return at::empty({s.total_len, s.num_heads, padded_dim}, q.options());
    };
    const at::Tensor dq = padded(), dk = padded(), dv = padded();
    pp.grad_q = dq.data_ptr();
    pp.grad_k = dk.data_ptr();
    pp.grad_v = dv.data_ptr();
    allocate_table_grads(pp, attention::hstu_sm90_backward_grad_copies(pp));
    const at::Tensor tile_list =
        attach_tile_list(pp, attention::hstu_sm90_backward_workspace_bytes(pp), q);
    FREESCALE_CUDA_CHECK(attention::hstu_sm90_backward(pp, stream),
                         "hstu_attention sm_90a backward kernels");
    table_grads();
    const auto grads = unpadded<3>({dq, dk, dv}, {s.dim_qk, s.dim_qk, s.dim_v}, stream);
    return {grads[0], grads[1], grads[2], grad_pos, grad_ts};
  }
  at::Tensor grad_q = at::empty({s.total_len, s.num_heads, s.dim_qk}, q.options());
  at::Tensor grad_k = at::empty({s.total_len, s.num_heads, s.dim_qk}, q.options());
  at::Tensor grad_v = at::empty({s.total_len, s.num_heads, s.dim_v}, q.options());
  p.grad_q = grad_q.data_ptr();
  p.grad_k = grad_k.data_ptr();
  p.grad_v = grad_v.data_ptr();
  if (use_sm90("FREESCALE_HSTU_BACKWARD", choice, unsupported)) {
    const at::Tensor dq_accum = at::zeros({s.total_len, s.num_heads, s.dim_qk}, f32);
    p.dq_accum = dq_accum.data_ptr<float>();
    allocate_table_grads(p, attention::hstu_sm90_backward_grad_copies(p));
    const at::Tensor tile_list =
        attach_tile_list(p, attention::hstu_sm90_backward_workspace_bytes(p), q);
    FREESCALE_CUDA_CHECK(attention::hstu_sm90_backward(p, stream),
                         "hstu_attention sm_90a backward kernels");
  } else {
    allocate_table_grads(p, 1);
    FREESCALE_CUDA_CHECK(attention::hstu_simple_backward(p, stream),
                         "hstu_attention backward kernels");
  }
  table_grads();
  return {grad_q, grad_k, grad_v, grad_pos, grad_ts};
}

}  // namespace

TORCH_LIBRARY_IMPL(freescale, CUDA, m) {
  m.impl("hstu_attention", &forward_cuda);
  m.impl("hstu_attention_backward", &backward_cuda);
}

}  // namespace freescale::ops
