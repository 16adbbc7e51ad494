// Torch boundary of the SM-free communication runtime (csrc/comm/peer_runtime.*): tensors in,
// a tensor view of the receive region out, on torch's current stream. Bound into
// freescale_ext._C.comm as PeerRuntime (CUDA builds only).
#include "ops/comm_runtime.h"

#include <ATen/ATen.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <pybind11/numpy.h>
#include <pybind11/stl.h>
#include <torch/python.h>

#include <algorithm>
#include <memory>
#include <stdexcept>
#include <string>
#include <vector>

#include "comm/peer_runtime.h"

namespace py = pybind11;

namespace freescale::ops {
namespace {

using comm::AllToAllLayout;
using comm::PeerRuntime;
using comm::PeerRuntimeConfig;
using Int64Array = py::array_t<int64_t, py::array::c_style | py::array::forcecast>;

class TorchPeerRuntime {
 public:
  TorchPeerRuntime(int32_t rank, int32_t world, int32_t device, std::vector<int64_t> recv_bytes,
                   double timeout_s, int64_t piece_bytes, const std::string& issue,
                   const std::string& signal)
      : device_(device),
        rank_(rank),
        world_(world),
        runtime_(std::make_unique<PeerRuntime>(
            PeerRuntimeConfig{rank, world, device, std::move(recv_bytes), timeout_s, piece_bytes,
                              parse_issue(issue), parse_signal(signal)})) {}

  py::bytes ipc_handle() const {
    const std::vector<uint8_t> h = runtime_->ipc_handle();
    return py::bytes(reinterpret_cast<const char*>(h.data()), h.size());
  }

  void open(const std::vector<py::bytes>& handles) {
    std::vector<std::vector<uint8_t>> raw;
    for (const py::bytes& b : handles) {
      const std::string s = b;
      raw.emplace_back(s.begin(), s.end());
    }
    runtime_->open(raw);
  }

  // send: this rank's rows ([rows, ...], contiguous, on the runtime's device); split_rows[s, d]:
  // rows from rank s to rank d, the whole matrix. Returns [sum(split_rows[:, rank]), ...] of
  // send's dtype, a view of the receive region (valid until the next call of the class).
  // Every check is here, not in Python: a call's host time is what small transfers wait for.
  at::Tensor all_to_all_v(const at::Tensor& send, const Int64Array& split_rows, int32_t priority,
                          bool own_chunk) {
    check_priority(priority);
    TORCH_CHECK_VALUE(send.is_cuda() && send.device().index() == device_,
                      "comm all_to_all_v: x must be on cuda:", device_, ", got ", send.device());
    TORCH_CHECK_VALUE(send.is_contiguous(), "comm all_to_all_v: x must be contiguous");
    TORCH_CHECK_VALUE(send.dim() >= 1, "comm all_to_all_v: x needs a row dimension");
    TORCH_CHECK_VALUE(
        split_rows.ndim() == 2 && split_rows.shape(0) == world_ && split_rows.shape(1) == world_,
        "comm all_to_all_v: split_rows must be [", world_, ", ", world_, "]");
    const int64_t* rows = split_rows.data();
    int64_t row_bytes = static_cast<int64_t>(send.element_size());
    for (int64_t d = 1; d < send.dim(); ++d) row_bytes *= send.size(d);
    std::vector<int64_t> bytes(rows, rows + split_rows.size());
    int64_t sent = 0, received = 0, largest = 0;
    for (int32_t d = 0; d < world_; ++d) {
      int64_t into_d = 0;
      for (int32_t s = 0; s < world_; ++s) {
        TORCH_CHECK_VALUE(rows[s * world_ + d] >= 0, "comm all_to_all_v: split_rows must be >= 0");
        into_d += rows[s * world_ + d];
        bytes[s * world_ + d] *= row_bytes;
      }
      sent += rows[rank_ * world_ + d];
      if (d == rank_) received = into_d;
      largest = std::max(largest, into_d * row_bytes);
    }
    TORCH_CHECK_VALUE(sent == send.size(0), "comm all_to_all_v: x has ", send.size(0),
                      " rows, split_rows[", rank_, "] sends ", sent);
    // Every rank sees the whole matrix and the same capacity: all refuse together.
    TORCH_CHECK_VALUE(largest <= runtime_->recv_capacity(priority),
                      "comm all_to_all_v: a rank would receive ", largest,
                      " bytes; the receive region of class ", priority, " holds ",
                      runtime_->recv_capacity(priority));
    const AllToAllLayout layout(world_, std::move(bytes));
    const c10::cuda::CUDAGuard guard(send.device());
    runtime_->all_to_all_v(send.data_ptr(), layout, priority,
                           c10::cuda::getCurrentCUDAStream(device_), own_chunk);
    std::vector<int64_t> shape = send.sizes().vec();
    shape[0] = received;
    return at::from_blob(runtime_->recv_region(priority), shape, send.options());
  }

  // Every rank's `send` (the same byte size everywhere), in rank order: uint8 [world * bytes].
  at::Tensor all_gather(const at::Tensor& send, int32_t priority) {
    check_priority(priority);
    check_local(send, "all_gather");
    runtime_->all_gather(send.data_ptr(), nbytes(send), priority, stream());
    return at::from_blob(runtime_->recv_region(priority), {world_ * nbytes(send)},
                         at::TensorOptions().dtype(at::kByte).device(send.device()));
  }

  void put(int32_t peer, int64_t offset, const at::Tensor& src) {
    check_local(src, "put");
    runtime_->put(peer, offset, src.data_ptr(), nbytes(src), stream());
  }

  void get(int32_t peer, int64_t offset, const at::Tensor& dst) {
    check_local(dst, "get");
    runtime_->get(peer, offset, dst.data_ptr(), nbytes(dst), stream());
  }

  void signal(int32_t peer, int32_t slot, uint32_t value) {
    runtime_->signal(peer, slot, value, stream());
  }
  void wait(int32_t slot, uint32_t value) { runtime_->wait(slot, value, stream()); }
  void barrier() { runtime_->barrier(stream()); }

  // This rank's whole symmetric heap, as uint8 (what peers put here).
  at::Tensor heap() const {
    return at::from_blob(runtime_->recv_region(0), {runtime_->recv_capacity(0)},
                         at::TensorOptions().dtype(at::kByte).device(at::kCUDA, device_));
  }

  std::string error() const { return runtime_->error(); }
  uint32_t epoch(int32_t priority) const { return runtime_->epoch(priority); }
  int64_t recv_capacity(int32_t priority) const { return runtime_->recv_capacity(priority); }
  std::string batch_refusal() const { return runtime_->batch_refusal(); }
  void close() { runtime_->close(); }

 private:
  static comm::CopyIssue parse_issue(const std::string& issue) {
    if (issue == "streams") return comm::CopyIssue::kPeerStreams;
    if (issue == "batch") return comm::CopyIssue::kBatch;
    throw std::invalid_argument("comm runtime: issue must be 'streams' or 'batch', got '" + issue +
                                "'");
  }
  static comm::SignalMode parse_signal(const std::string& signal) {
    if (signal == "fenced-write") return comm::SignalMode::kFencedWrite;
    if (signal == "copy") return comm::SignalMode::kCopy;
    throw std::invalid_argument("comm runtime: signal must be 'fenced-write' or 'copy', got '" +
                                signal + "'");
  }
  void check_priority(int32_t priority) const {
    TORCH_CHECK_VALUE(priority >= 0 && priority < runtime_->num_classes(), "comm: priority ",
                      priority, " out of [0, ", runtime_->num_classes(), ")");
  }
  void check_local(const at::Tensor& t, const char* what) const {
    TORCH_CHECK(t.is_cuda() && t.device().index() == device_, "comm ", what,
                ": the tensor must be on cuda:", device_, ", got ", t.device());
    TORCH_CHECK(t.is_contiguous(), "comm ", what, ": the tensor must be contiguous");
  }
  static int64_t nbytes(const at::Tensor& t) {
    return t.numel() * static_cast<int64_t>(t.element_size());
  }
  cudaStream_t stream() const { return c10::cuda::getCurrentCUDAStream(device_); }

  int32_t device_;
  int32_t rank_;
  int32_t world_;
  std::unique_ptr<PeerRuntime> runtime_;
};

}  // namespace

void bind_comm_runtime(py::module_& comm) {
  py::class_<TorchPeerRuntime>(comm, "PeerRuntime",
                               "One rank's copy-engine all-to-all-v (use freescale_ext.comm)")
      .def(py::init<int32_t, int32_t, int32_t, std::vector<int64_t>, double, int64_t,
                    const std::string&, const std::string&>(),
           py::arg("rank"), py::arg("world"), py::arg("device"), py::arg("recv_bytes"),
           py::arg("timeout_s"), py::arg("piece_bytes"), py::arg("issue"), py::arg("signal"))
      .def("ipc_handle", &TorchPeerRuntime::ipc_handle)
      .def("open", &TorchPeerRuntime::open, py::arg("handles"))
      .def("all_to_all_v", &TorchPeerRuntime::all_to_all_v, py::arg("send"), py::arg("split_rows"),
           py::arg("priority"), py::arg("own_chunk"))
      .def("all_gather", &TorchPeerRuntime::all_gather, py::arg("send"), py::arg("priority"))
      .def("put", &TorchPeerRuntime::put, py::arg("peer"), py::arg("offset"), py::arg("src"))
      .def("get", &TorchPeerRuntime::get, py::arg("peer"), py::arg("offset"), py::arg("dst"))
      .def("signal", &TorchPeerRuntime::signal, py::arg("peer"), py::arg("slot"), py::arg("value"))
      .def("wait", &TorchPeerRuntime::wait, py::arg("slot"), py::arg("value"))
      .def("barrier", &TorchPeerRuntime::barrier)
      .def("heap", &TorchPeerRuntime::heap)
      .def("error", &TorchPeerRuntime::error)
      .def("epoch", &TorchPeerRuntime::epoch, py::arg("priority"))
      .def("recv_capacity", &TorchPeerRuntime::recv_capacity, py::arg("priority"))
      .def("batch_refusal", &TorchPeerRuntime::batch_refusal)
      .def("close", &TorchPeerRuntime::close, py::call_guard<py::gil_scoped_release>());
}

}  // namespace freescale::ops
