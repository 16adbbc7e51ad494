// CUDA implementation of the fused sparse optimizer ops (csrc/optim): checks, device guard,
// current stream. No host synchronization: row values are validated (on request) by the Python
// wrapper, and the kernels skip rows outside the table.
#include <ATen/ATen.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include <cmath>

#include "ops/cuda_check.h"
#include "optim/sparse_optim.h"

namespace freescale::ops {
namespace {

using optim::OptimScalar;
using optim::SparseUpdateParams;

// A state updated in place: the table's device and dtype, `shape`, contiguous elements.
void check_state(const char* op, const char* name, const at::Tensor& state, const at::Tensor& table,
                 at::IntArrayRef shape) {
  TORCH_CHECK(state.device() == table.device() && state.scalar_type() == table.scalar_type(), op,
              ": ", name, " must be ", table.scalar_type(), " on ", table.device(), ", got ",
              state.scalar_type(), " on ", state.device());
  TORCH_CHECK(state.sizes() == shape, op, ": ", name, " must be ", shape, ", got ", state.sizes());
  TORCH_CHECK(state.stride(-1) == 1, op, ": ", name, " must have contiguous elements (strides ",
              state.strides(), ")");
}

// Checks shared by every update; `keep` holds the contiguous copies the launch reads.
SparseUpdateParams make_params(const char* op, const at::Tensor& table, const at::Tensor& rows,
                               const at::Tensor& grads, double lr, double eps,
                               at::Tensor& keep_rows, at::Tensor& keep_grads) {
  TORCH_CHECK(table.is_cuda(), op, ": the CUDA kernel takes CUDA tensors");
  TORCH_CHECK(table.scalar_type() == at::kFloat || table.scalar_type() == at::kDouble, op,
              ": tables must be float32 or float64, got ", table.scalar_type());
  TORCH_CHECK(table.dim() == 2 && table.stride(1) == 1, op,
              ": the table must be [rows, dim] with contiguous elements, got ", table.sizes(),
              " with strides ", table.strides());
  TORCH_CHECK(rows.device() == table.device() && rows.scalar_type() == at::kLong && rows.dim() == 1,
              op, ": rows must be a 1-D int64 tensor on ", table.device(), ", got ",
              rows.scalar_type(), " ", rows.sizes(), " on ", rows.device());
  TORCH_CHECK(grads.device() == table.device() && grads.scalar_type() == table.scalar_type(), op,
              ": grads must be ", table.scalar_type(), " on ", table.device(), ", got ",
              grads.scalar_type(), " on ", grads.device());
  TORCH_CHECK(grads.dim() == 2 && grads.size(0) == rows.size(0) && grads.size(1) == table.size(1),
              op, ": grads must be [", rows.size(0), ", ", table.size(1), "], got ", grads.sizes());
  TORCH_CHECK(std::isfinite(lr) && std::isfinite(eps) && eps >= 0, op,
              ": lr and eps must be finite (eps >= 0), got ", lr, " and ", eps);
  keep_rows = rows.contiguous();
  keep_grads = grads.stride(1) == 1 ? grads : grads.contiguous();
  SparseUpdateParams p;
  p.dtype = table.scalar_type() == at::kDouble ? OptimScalar::kFloat64 : OptimScalar::kFloat32;
  p.num_rows = rows.size(0);
  p.table_rows = table.size(0);
  p.dim = table.size(1);
  p.rows = keep_rows.data_ptr<int64_t>();
  p.grads = keep_grads.data_ptr();
  p.grads_row_stride = keep_grads.stride(0);
  p.table = table.data_ptr();
  p.table_row_stride = table.stride(0);
  p.lr = lr;
  p.eps = eps;
  return p;
}

void rowwise_adagrad_cuda(at::Tensor table, at::Tensor sum_sq, const at::Tensor& rows,
                          const at::Tensor& grads, double lr, double eps) {
  constexpr const char* op = "sparse_rowwise_adagrad_";
  const c10::cuda::CUDAGuard guard(table.device());
  at::Tensor keep_rows, keep_grads;
  SparseUpdateParams p = make_params(op, table, rows, grads, lr, eps, keep_rows, keep_grads);
  check_state(op, "sum_sq", sum_sq, table, {table.size(0)});
  p.sum_sq = sum_sq.data_ptr();
  FREESCALE_CUDA_CHECK(optim::sparse_rowwise_adagrad(p, c10::cuda::getCurrentCUDAStream()),
                       "sparse_rowwise_adagrad_ kernel");
}

void adam_cuda(at::Tensor table, at::Tensor exp_avg, at::Tensor exp_avg_sq, const at::Tensor& rows,
               const at::Tensor& grads, int64_t step, double lr, double beta1, double beta2,
               double eps) {
  constexpr const char* op = "sparse_adam_";
  const c10::cuda::CUDAGuard guard(table.device());
  at::Tensor keep_rows, keep_grads;
  SparseUpdateParams p = make_params(op, table, rows, grads, lr, eps, keep_rows, keep_grads);
  TORCH_CHECK(step >= 1, op, ": step counts updates from 1, got ", step);
  TORCH_CHECK(beta1 >= 0 && beta1 < 1 && beta2 >= 0 && beta2 < 1, op,
              ": betas must be in [0, 1), got ", beta1, " and ", beta2);
  check_state(op, "exp_avg", exp_avg, table, table.sizes());
  check_state(op, "exp_avg_sq", exp_avg_sq, table, table.sizes());
  p.exp_avg = exp_avg.data_ptr();
  p.exp_avg_row_stride = exp_avg.stride(0);
  p.exp_avg_sq = exp_avg_sq.data_ptr();
  p.exp_avg_sq_row_stride = exp_avg_sq.stride(0);
  p.beta1 = beta1;
  p.beta2 = beta2;
  const double t = static_cast<double>(step);
  p.step_size = lr * std::sqrt(1.0 - std::pow(beta2, t)) / (1.0 - std::pow(beta1, t));
  FREESCALE_CUDA_CHECK(optim::sparse_adam(p, c10::cuda::getCurrentCUDAStream()),
                       "sparse_adam_ kernel");
}

}  // namespace

TORCH_LIBRARY_IMPL(freescale, CUDA, m) {
  m.impl("sparse_rowwise_adagrad_", &rowwise_adagrad_cuda);
  m.impl("sparse_adam_", &adam_cuda);
}

}  // namespace freescale::ops
