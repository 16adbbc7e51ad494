// Torch-free fused sparse optimizer updates of embedding tables (DESIGN §7).
//
// An update touches only `num_rows` given rows of a [table_rows, dim] table: rows[r] is the
// table row that grads row r updates. Rows must be unique (each is read and written by one
// warp); rows outside [0, table_rows) are skipped (the caller validates them). Tables, grads
// and optimizer states are float32 or float64, rows may be strided, their elements contiguous.
#pragma once

#include <cuda_runtime_api.h>

#include <cstdint>

namespace freescale::optim {

enum class OptimScalar : int { kFloat32 = 0, kFloat64 = 1 };

struct SparseUpdateParams {
  OptimScalar dtype = OptimScalar::kFloat32;
  int64_t num_rows = 0;    // R: rows updated
  int64_t table_rows = 0;  // N
  int64_t dim = 0;         // D

  const int64_t* rows = nullptr;  // [R] unique
  const void* grads = nullptr;    // [R, D]
  int64_t grads_row_stride = 0;
  void* table = nullptr;  // [N, D]
  int64_t table_row_stride = 0;

  // Row-wise Adagrad: one accumulator per row, [N].
  void* sum_sq = nullptr;
  // Adam: first and second moments, [N, D] each.
  void* exp_avg = nullptr;
  int64_t exp_avg_row_stride = 0;
  void* exp_avg_sq = nullptr;
  int64_t exp_avg_sq_row_stride = 0;

  double lr = 0.0;
  double eps = 0.0;
  double beta1 = 0.0;
  double beta2 = 0.0;
  // Adam: lr * sqrt(1 - beta2^t) / (1 - beta1^t), computed on the host in double.
  double step_size = 0.0;
};

// G_r += mean_d(g_rd^2); w_r -= lr * g_r / (sqrt(G_r) + eps)   (torchrec's exact row-wise form)
cudaError_t sparse_rowwise_adagrad(const SparseUpdateParams& p, cudaStream_t stream);

// m = b1 m + (1 - b1) g; v = b2 v + (1 - b2) g^2; w -= step_size * m / (sqrt(v) + eps)
// (torch.optim.SparseAdam's lazy update of the given rows).
cudaError_t sparse_adam(const SparseUpdateParams& p, cudaStream_t stream);

}  // namespace freescale::optim
