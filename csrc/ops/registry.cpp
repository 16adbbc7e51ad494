// The freescale op library: every schema lives here (DESIGN §3). Implementations register
// per dispatch key in *_cpu.cpp / *_cuda.cpp; fake (meta) impls and
// autograd are registered from Python (freescale_ext/ops.py).
#include <torch/library.h>

TORCH_LIBRARY(freescale, m) {
  m.def(
      "hstu_attention(Tensor q, Tensor k, Tensor v, Tensor seq_offsets, int max_seq_len, "
      "float alpha=1.0, Tensor? num_targets=None, int contextual_len=0, int max_attn_len=0, "
      "Tensor? pos_weight=None, Tensor? ts_weight=None, Tensor? timestamps=None) -> Tensor");
  // Returns (grad_q, grad_k, grad_v, grad_pos_weight, grad_ts_weight); a bias gradient is an
  // empty tensor when its table was not given.
  m.def(
      "hstu_attention_backward(Tensor grad_out, Tensor q, Tensor k, Tensor v, "
      "Tensor seq_offsets, int max_seq_len, float alpha, Tensor? num_targets, "
      "int contextual_len, int max_attn_len, Tensor? pos_weight, Tensor? ts_weight, "
      "Tensor? timestamps) -> (Tensor, Tensor, Tensor, Tensor, Tensor)");
  // Token-compressed (PerSRec) attention, DESIGN §5: SiLU attention with the fixed normalizer
  // N = max_seq_len and M_ij = (j <= i) and (is_token_j or region_j == region_i) per sequence.
  // skip_empty_tiles=False makes the CUDA kernels visit every causal tile (the dense masked
  // computation, for benchmarks); the result is the same.
  m.def(
      "compressed_attention(Tensor q, Tensor k, Tensor v, Tensor seq_offsets, Tensor region, "
      "Tensor is_token, int max_seq_len, float alpha=1.0, bool skip_empty_tiles=True) -> Tensor");
  m.def(
      "compressed_attention_backward(Tensor grad_out, Tensor q, Tensor k, Tensor v, "
      "Tensor seq_offsets, Tensor region, Tensor is_token, int max_seq_len, float alpha, "
      "bool skip_empty_tiles=True) -> (Tensor, Tensor, Tensor)");
  // Fused sparse optimizer updates of embedding tables, DESIGN §7 (CUDA; the CPU reference is
  // freescale_ext/sparse_optim.py). rows: unique int64 table rows; grads: [R, dim], the summed
  // gradient of each row. Row-wise Adagrad keeps one accumulator per row (sum_sq [N]); Adam is
  // torch.optim.SparseAdam's lazy update with its global step t >= 1.
  m.def(
      "sparse_rowwise_adagrad_(Tensor(a!) table, Tensor(b!) sum_sq, Tensor rows, Tensor grads, "
      "float lr, float eps) -> ()");
  m.def(
      "sparse_adam_(Tensor(a!) table, Tensor(b!) exp_avg, Tensor(c!) exp_avg_sq, Tensor rows, "
      "Tensor grads, int step, float lr, float beta1, float beta2, float eps) -> ()");
  // Raises on malformed jagged offsets. Reads the data: a device sync for CUDA tensors.
  m.def(
      "check_seq_offsets(Tensor seq_offsets, int total_len, int max_seq_len, "
      "Tensor? num_targets=None) -> ()");
}
