// Registered instead of the CUDA kernels in a CPU-only build, so that CUDA tensors get a clear
// error rather than "could not run ... with arguments from the CUDA backend".
#include <ATen/ATen.h>
#include <torch/library.h>

namespace freescale::ops {
namespace {

[[noreturn]] void not_compiled(const char* op) {
  TORCH_CHECK(false, "freescale::", op,
              " has no CUDA kernel in this build: freescale_ext._C was compiled without CUDA "
              "(no CUDA toolkit or a CPU build of torch at build time). Reinstall with CUDA_HOME "
              "pointing at a CUDA toolkit, or run on CPU tensors.");
}

at::Tensor forward_missing(const at::Tensor&, const at::Tensor&, const at::Tensor&,
                           const at::Tensor&, int64_t, double, const std::optional<at::Tensor>&,
                           int64_t, int64_t, const std::optional<at::Tensor>&,
                           const std::optional<at::Tensor>&, const std::optional<at::Tensor>&) {
  not_compiled("hstu_attention");
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor> backward_missing(
    const at::Tensor&, const at::Tensor&, const at::Tensor&, const at::Tensor&, const at::Tensor&,
    int64_t, double, const std::optional<at::Tensor>&, int64_t, int64_t,
    const std::optional<at::Tensor>&, const std::optional<at::Tensor>&,
    const std::optional<at::Tensor>&) {
  not_compiled("hstu_attention_backward");
}

at::Tensor compressed_forward_missing(const at::Tensor&, const at::Tensor&, const at::Tensor&,
                                      const at::Tensor&, const at::Tensor&, const at::Tensor&,
                                      int64_t, double, bool) {
  not_compiled("compressed_attention");
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> compressed_backward_missing(
    const at::Tensor&, const at::Tensor&, const at::Tensor&, const at::Tensor&, const at::Tensor&,
    const at::Tensor&, const at::Tensor&, int64_t, double, bool) {
  not_compiled("compressed_attention_backward");
}

void adagrad_missing(at::Tensor, at::Tensor, const at::Tensor&, const at::Tensor&, double, double) {
  not_compiled("sparse_rowwise_adagrad_");
}

void adam_missing(at::Tensor, at::Tensor, at::Tensor, const at::Tensor&, const at::Tensor&, int64_t,
                  double, double, double, double) {
  not_compiled("sparse_adam_");
}

}  // namespace

TORCH_LIBRARY_IMPL(freescale, CUDA, m) {
  m.impl("hstu_attention", &forward_missing);
  m.impl("hstu_attention_backward", &backward_missing);
  m.impl("compressed_attention", &compressed_forward_missing);
  m.impl("compressed_attention_backward", &compressed_backward_missing);
  m.impl("sparse_rowwise_adagrad_", &adagrad_missing);
  m.impl("sparse_adam_", &adam_missing);
}

}  // namespace freescale::ops
