// CUDA implementation of the token-compressed (PerSRec) attention ops: checks, device guard,
// workspace and outputs, current stream, then the torch-free block-sparse kernels of
// csrc/attention/compressed*. No host synchronization: the offsets are validated (on request)
// by the Python wrapper, and the kernels clamp what they read.
#include <ATen/ATen.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include <limits>

#include "attention/compressed.h"
#include "ops/compressed_checks.h"
#include "ops/cuda_check.h"

namespace freescale::ops {
namespace {

using attention::CompressedParams;
using attention::ScalarKind;

// Tensors whose storage must outlive the launches.
struct Prepared {
  at::Tensor q, k, v, seq_offsets, region, is_token, token_pos, token_count, tile_ranges;
};

// The kernels' shared memory per block against what the current GPU offers one (99 KB on sm_86,
// sm_89 and sm_120, where the backward at head dims over 64 takes more): a clear error where
// the launch would fail with cudaErrorInvalidValue.
void check_shared_memory(size_t needed, const char* pass, const HstuShapes& s) {
  int device = 0;
  int offered = 0;
  FREESCALE_CUDA_CHECK(cudaGetDevice(&device), "cudaGetDevice");
  FREESCALE_CUDA_CHECK(
      cudaDeviceGetAttribute(&offered, cudaDevAttrMaxSharedMemoryPerBlockOptin, device),
      "cudaDeviceGetAttribute");
  TORCH_CHECK(needed <= static_cast<size_t>(offered), "compressed_attention ", pass,
              " on CUDA at head dim ", std::max(s.dim_qk, s.dim_v), " needs ", needed,
              " bytes of shared memory per block, and this GPU offers ", offered,
              " (head dims up to 64 fit every GPU; freescale_ext.compressed_attention runs "
              "such calls densely)");
}

bool vector_loadable(const at::Tensor& t) {
  return reinterpret_cast<uintptr_t>(t.data_ptr()) % 16 == 0 && t.stride(0) % 8 == 0 &&
         t.size(2) % 8 == 0;
}

CompressedParams make_params(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                             const at::Tensor& seq_offsets, const at::Tensor& region,
                             const at::Tensor& is_token, int64_t max_seq_len, double alpha,
                             bool skip_empty_tiles, const HstuShapes& s, Prepared& keep) {
  TORCH_CHECK(q.scalar_type() == at::kBFloat16 || q.scalar_type() == at::kHalf,
              "compressed_attention on CUDA takes float16 or bfloat16 (tensor-core kernels), got ",
              q.scalar_type(), "; freescale_ext.compressed_attention runs other dtypes densely");
  TORCH_CHECK(std::max(s.dim_qk, s.dim_v) <= attention::kCompressedMaxHeadDim,
              "compressed_attention on CUDA: head dims up to ", attention::kCompressedMaxHeadDim,
              " are supported, got d_qk=", s.dim_qk, ", d_v=", s.dim_v);
  TORCH_CHECK(max_seq_len > 0 && max_seq_len <= std::numeric_limits<int32_t>::max() / 2,
              "compressed_attention: max_seq_len must be in [1, 2^30], got ", max_seq_len);
  keep.q = head_packed(q);
  keep.k = head_packed(k);
  keep.v = head_packed(v);
  keep.seq_offsets = seq_offsets.contiguous();
  keep.region = region.contiguous();
  keep.is_token = is_token.contiguous();
  const int tiles =
      static_cast<int>((max_seq_len + attention::kCompressedTile - 1) / attention::kCompressedTile);
  const auto i32 = q.options().dtype(at::kInt);
  keep.token_pos = at::empty({s.total_len}, i32);
  keep.token_count = at::empty({s.batch_size}, i32);
  keep.tile_ranges = at::empty({s.batch_size * tiles * 4}, i32);

  CompressedParams p;
  p.dtype = q.scalar_type() == at::kBFloat16 ? ScalarKind::kBFloat16 : ScalarKind::kFloat16;
  p.batch_size = static_cast<int>(s.batch_size);
  p.num_heads = static_cast<int>(s.num_heads);
  p.dim_qk = static_cast<int>(s.dim_qk);
  p.dim_v = static_cast<int>(s.dim_v);
  p.total_len = s.total_len;
  p.max_seq_len = static_cast<int>(max_seq_len);
  p.tiles_per_seq = tiles;
  p.alpha = static_cast<float>(alpha);
  p.skip_empty_tiles = skip_empty_tiles;
  p.seq_offsets = keep.seq_offsets.data_ptr<int32_t>();
  p.region = keep.region.data_ptr<int32_t>();
  p.is_token = keep.is_token.data_ptr<bool>();
  p.q = keep.q.data_ptr();
  p.k = keep.k.data_ptr();
  p.v = keep.v.data_ptr();
  p.q_row_stride = keep.q.stride(0);
  p.k_row_stride = keep.k.stride(0);
  p.v_row_stride = keep.v.stride(0);
  p.vector_loads = vector_loadable(keep.q) && vector_loadable(keep.k) && vector_loadable(keep.v);
  p.ws.token_pos = keep.token_pos.data_ptr<int32_t>();
  p.ws.token_count = keep.token_count.data_ptr<int32_t>();
  p.ws.tile_ranges = keep.tile_ranges.data_ptr<int32_t>();
  return p;
}

at::Tensor forward_cuda(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                        const at::Tensor& seq_offsets, const at::Tensor& region,
                        const at::Tensor& is_token, int64_t max_seq_len, double alpha,
                        bool skip_empty_tiles) {
  const HstuShapes s = check_compressed_args(q, k, v, seq_offsets, region, is_token, max_seq_len);
  const c10::cuda::CUDAGuard guard(q.device());
  Prepared keep;
  CompressedParams p = make_params(q, k, v, seq_offsets, region, is_token, max_seq_len, alpha,
                                   skip_empty_tiles, s, keep);
  // (after make_params' checks, which name a head dim over the kernels' 128)
  check_shared_memory(attention::compressed_forward_shared_bytes(std::max(s.dim_qk, s.dim_v)),
                      "forward", s);
  // Zero-filled: rows outside every sequence (or past N) are defined as zero.
  at::Tensor out = at::zeros({s.total_len, s.num_heads, s.dim_v}, q.options());
  p.out = out.data_ptr();
  FREESCALE_CUDA_CHECK(attention::compressed_forward(p, c10::cuda::getCurrentCUDAStream()),
                       "compressed_attention forward kernels");
  return out;
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> backward_cuda(
    const at::Tensor& grad_out, const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
    const at::Tensor& seq_offsets, const at::Tensor& region, const at::Tensor& is_token,
    int64_t max_seq_len, double alpha, bool skip_empty_tiles) {
  const HstuShapes s = check_compressed_args(q, k, v, seq_offsets, region, is_token, max_seq_len);
  check_grad_out(grad_out, q, s);
  const c10::cuda::CUDAGuard guard(q.device());
  Prepared keep;
  CompressedParams p = make_params(q, k, v, seq_offsets, region, is_token, max_seq_len, alpha,
                                   skip_empty_tiles, s, keep);
  // (after make_params' checks, which name a head dim over the kernels' 128)
  check_shared_memory(attention::compressed_backward_shared_bytes(std::max(s.dim_qk, s.dim_v)),
                      "backward", s);
  const at::Tensor dout = head_packed(grad_out);
  p.grad_out = dout.data_ptr();
  p.grad_out_row_stride = dout.stride(0);
  p.vector_loads = p.vector_loads && vector_loadable(dout);
  at::Tensor grad_q = at::zeros({s.total_len, s.num_heads, s.dim_qk}, q.options());
  at::Tensor grad_k = at::zeros({s.total_len, s.num_heads, s.dim_qk}, q.options());
  at::Tensor grad_v = at::zeros({s.total_len, s.num_heads, s.dim_v}, q.options());
  p.grad_q = grad_q.data_ptr();
  p.grad_k = grad_k.data_ptr();
  p.grad_v = grad_v.data_ptr();
  FREESCALE_CUDA_CHECK(attention::compressed_backward(p, c10::cuda::getCurrentCUDAStream()),
                       "compressed_attention backward kernels");
  return {grad_q, grad_k, grad_v};
}

}  // namespace

TORCH_LIBRARY_IMPL(freescale, CUDA, m) {
  m.impl("compressed_attention", &forward_cuda);
  m.impl("compressed_attention_backward", &backward_cuda);
}

}  // namespace freescale::ops
