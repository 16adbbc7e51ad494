// Fused sparse optimizer kernels: one warp per updated row, so a row's reads, its reduction
// (row-wise Adagrad) and its writes happen in one pass with coalesced 128-byte accesses, instead
// of the gather / compute / scatter chain of separate PyTorch kernels.
#include "optim/sparse_optim.h"

namespace freescale::optim {
namespace {

constexpr int kWarpsPerBlock = 8;
constexpr int kWarp = 32;

template <typename T>
__device__ T warp_sum(T x) {
#pragma unroll
  for (int offset = kWarp / 2; offset > 0; offset /= 2) {
    x += __shfl_xor_sync(0xffffffffu, x, offset);
  }
  return x;
}

__device__ inline float root(float x) { return sqrtf(x); }
__device__ inline double root(double x) { return sqrt(x); }

// The warp of this thread's row, or -1 past the last row or for an out-of-range table row.
__device__ inline int64_t warp_row(const SparseUpdateParams& p, int64_t& slot) {
  slot = (static_cast<int64_t>(blockIdx.x) * kWarpsPerBlock) + threadIdx.x / kWarp;
  if (slot >= p.num_rows) return -1;
  const int64_t row = p.rows[slot];
  return (row >= 0 && row < p.table_rows) ? row : -1;
}

template <typename T>
__global__ void __launch_bounds__(kWarpsPerBlock* kWarp)
    rowwise_adagrad_kernel(const SparseUpdateParams p) {
  int64_t slot;
  const int64_t row = warp_row(p, slot);
  if (row < 0) return;  // whole warps leave together: the shuffles below stay full-warp
  const int lane = threadIdx.x % kWarp;
  const T* g = static_cast<const T*>(p.grads) + slot * p.grads_row_stride;
  T* w = static_cast<T*>(p.table) + row * p.table_row_stride;
  T square_sum = 0;
  for (int64_t d = lane; d < p.dim; d += kWarp) square_sum += g[d] * g[d];
  square_sum = warp_sum(square_sum);
  T* acc_ptr = static_cast<T*>(p.sum_sq) + row;
  const T acc = *acc_ptr + square_sum / static_cast<T>(p.dim);
  const T scale = static_cast<T>(p.lr) / (root(acc) + static_cast<T>(p.eps));
  for (int64_t d = lane; d < p.dim; d += kWarp) w[d] -= scale * g[d];
  if (lane == 0) *acc_ptr = acc;
}

template <typename T>
__global__ void __launch_bounds__(kWarpsPerBlock* kWarp) adam_kernel(const SparseUpdateParams p) {
  int64_t slot;
  const int64_t row = warp_row(p, slot);
  if (row < 0) return;
  const int lane = threadIdx.x % kWarp;
  const T* g = static_cast<const T*>(p.grads) + slot * p.grads_row_stride;
  T* w = static_cast<T*>(p.table) + row * p.table_row_stride;
  T* m = static_cast<T*>(p.exp_avg) + row * p.exp_avg_row_stride;
  T* v = static_cast<T*>(p.exp_avg_sq) + row * p.exp_avg_sq_row_stride;
  const T b1 = static_cast<T>(p.beta1), b2 = static_cast<T>(p.beta2);
  const T one_minus_b1 = static_cast<T>(1.0 - p.beta1),
          one_minus_b2 = static_cast<T>(1.0 - p.beta2);
  const T step_size = static_cast<T>(p.step_size), eps = static_cast<T>(p.eps);
  for (int64_t d = lane; d < p.dim; d += kWarp) {
    const T gd = g[d];
    const T md = m[d] * b1 + gd * one_minus_b1;
    const T vd = v[d] * b2 + gd * gd * one_minus_b2;
    m[d] = md;
    v[d] = vd;
    w[d] -= step_size * md / (root(vd) + eps);
  }
}

template <template <typename> class Launch>
cudaError_t dispatch(const SparseUpdateParams& p, cudaStream_t stream) {
  if (p.num_rows == 0 || p.dim == 0) return cudaSuccess;
  const int64_t blocks = (p.num_rows + kWarpsPerBlock - 1) / kWarpsPerBlock;
  if (blocks > 0x7fffffff) return cudaErrorInvalidConfiguration;
  const dim3 grid(static_cast<unsigned>(blocks)), block(kWarpsPerBlock * kWarp);
  if (p.dtype == OptimScalar::kFloat64) {
    Launch<double>::run(grid, block, p, stream);
  } else {
    Launch<float>::run(grid, block, p, stream);
  }
  return cudaGetLastError();
}

template <typename T>
struct LaunchAdagrad {
  static void run(dim3 grid, dim3 block, const SparseUpdateParams& p, cudaStream_t stream) {
    rowwise_adagrad_kernel<T><<<grid, block, 0, stream>>>(p);
  }
};

template <typename T>
struct LaunchAdam {
  static void run(dim3 grid, dim3 block, const SparseUpdateParams& p, cudaStream_t stream) {
    adam_kernel<T><<<grid, block, 0, stream>>>(p);
  }
};

}  // namespace

cudaError_t sparse_rowwise_adagrad(const SparseUpdateParams& p, cudaStream_t stream) {
  return dispatch<LaunchAdagrad>(p, stream);
}

cudaError_t sparse_adam(const SparseUpdateParams& p, cudaStream_t stream) {
  return dispatch<LaunchAdam>(p, stream);
}

}  // namespace freescale::optim
