#include "comm/peer_runtime.h"

#include <cuda.h>
#include <nvtx3/nvToolsExt.h>

#include <chrono>
#include <cstring>
#include <stdexcept>

namespace freescale::comm {
namespace {

constexpr int kReady = 0;
constexpr int kDone = 1;
constexpr int64_t kSignalBytes = 4096;  // signals first; the receive region starts aligned

void check(cudaError_t err, const char* what) {
  if (err != cudaSuccess) {
    throw std::runtime_error(std::string("comm runtime: ") + what +
                             " failed: " + cudaGetErrorName(err) + ": " + cudaGetErrorString(err));
  }
}

// Stream memory operations come from the driver API; fetched through the runtime so that the
// extension does not link libcuda itself.
struct StreamMemOps {
  using Wait = CUresult (*)(CUstream, CUdeviceptr, cuuint32_t, unsigned int);
  using Write = CUresult (*)(CUstream, CUdeviceptr, cuuint32_t, unsigned int);
  Wait wait = nullptr;
  Write write = nullptr;

  static const StreamMemOps& get() {
    static const StreamMemOps ops = [] {
      StreamMemOps o;
      cudaDriverEntryPointQueryResult status;
      check(
          cudaGetDriverEntryPointByVersion("cuStreamWaitValue32", reinterpret_cast<void**>(&o.wait),
                                           12000, cudaEnableDefault, &status),
          "looking up cuStreamWaitValue32");
      check(cudaGetDriverEntryPointByVersion("cuStreamWriteValue32",
                                             reinterpret_cast<void**>(&o.write), 12000,
                                             cudaEnableDefault, &status),
            "looking up cuStreamWriteValue32");
      if (o.wait == nullptr || o.write == nullptr) {
        throw std::runtime_error("comm runtime: the driver has no stream memory operations");
      }
      return o;
    }();
    return ops;
  }
};

void wait_geq(cudaStream_t stream, const uint32_t* addr, uint32_t value) {
  const CUresult r = StreamMemOps::get().wait(reinterpret_cast<CUstream>(stream),
                                              reinterpret_cast<CUdeviceptr>(addr), value,
                                              CU_STREAM_WAIT_VALUE_GEQ);
  if (r != CUDA_SUCCESS) throw std::runtime_error("comm runtime: cuStreamWaitValue32 failed");
}

void write_value(cudaStream_t stream, uint32_t* addr, uint32_t value) {
  // The default flags fence the stream's earlier writes (the copy) before the signal.
  const CUresult r = StreamMemOps::get().write(reinterpret_cast<CUstream>(stream),
                                               reinterpret_cast<CUdeviceptr>(addr), value,
                                               CU_STREAM_WRITE_VALUE_DEFAULT);
  if (r != CUDA_SUCCESS) throw std::runtime_error("comm runtime: cuStreamWriteValue32 failed");
}

// An NVTX range over the host side of a transfer (its issue), for Nsight timelines.
class NvtxRange {
 public:
  explicit NvtxRange(const std::string& name) { nvtxRangePushA(name.c_str()); }
  ~NvtxRange() { nvtxRangePop(); }
  NvtxRange(const NvtxRange&) = delete;
  NvtxRange& operator=(const NvtxRange&) = delete;
};

double now_s() {
  return std::chrono::duration<double>(std::chrono::steady_clock::now().time_since_epoch()).count();
}

}  // namespace

PeerRuntime::PeerRuntime(const PeerRuntimeConfig& config) : config_(config) {
  if (config.world < 1 || config.rank < 0 || config.rank >= config.world) {
    throw std::invalid_argument("comm runtime: need 0 <= rank < world");
  }
  if (config.recv_bytes < 0 || config.timeout_s <= 0) {
    throw std::invalid_argument("comm runtime: need recv_bytes >= 0 and timeout_s > 0");
  }
  if (static_cast<int64_t>(2) * config.world * 4 > kSignalBytes) {
    throw std::invalid_argument("comm runtime: world too large for the signal area");
  }
  check(cudaSetDevice(config.device), "cudaSetDevice");
  void* raw = nullptr;
  check(cudaMalloc(&raw, kSignalBytes + config.recv_bytes), "cudaMalloc(arena)");
  arena_ = static_cast<uint8_t*>(raw);
  check(cudaMemset(arena_, 0, kSignalBytes), "cudaMemset(signals)");
  recv_ = arena_ + kSignalBytes;
  peer_arenas_.assign(config.world, nullptr);
  side_.assign(config.world, nullptr);
  joined_.assign(config.world, nullptr);
  for (int32_t p = 0; p < config.world; ++p) {
    check(cudaStreamCreateWithFlags(&side_[p], cudaStreamNonBlocking), "cudaStreamCreate");
    check(cudaEventCreateWithFlags(&joined_[p], cudaEventDisableTiming), "cudaEventCreate");
  }
  check(cudaEventCreateWithFlags(&forked_, cudaEventDisableTiming), "cudaEventCreate");
  check(cudaStreamCreateWithFlags(&rescue_, cudaStreamNonBlocking), "cudaStreamCreate");
  check(cudaDeviceSynchronize(), "arena initialization");
  watchdog_ = std::thread([this] { watch(); });
}

PeerRuntime::~PeerRuntime() {
  try {
    close();
  } catch (...) {  // a destructor must not throw; close() reports errors when called directly
  }
}

std::vector<uint8_t> PeerRuntime::ipc_handle() const {
  cudaIpcMemHandle_t handle;
  check(cudaIpcGetMemHandle(&handle, arena_), "cudaIpcGetMemHandle");
  std::vector<uint8_t> out(sizeof(handle));
  std::memcpy(out.data(), &handle, sizeof(handle));
  return out;
}

void PeerRuntime::open(const std::vector<std::vector<uint8_t>>& handles) {
  if (open_) throw std::runtime_error("comm runtime: open() called twice");
  if (static_cast<int32_t>(handles.size()) != config_.world) {
    throw std::invalid_argument("comm runtime: need one IPC handle per rank");
  }
  check(cudaSetDevice(config_.device), "cudaSetDevice");
  for (int32_t p = 0; p < config_.world; ++p) {
    if (p == config_.rank) continue;
    if (handles[p].size() != sizeof(cudaIpcMemHandle_t)) {
      throw std::invalid_argument("comm runtime: malformed IPC handle of rank " +
                                  std::to_string(p));
    }
    cudaIpcMemHandle_t handle;
    std::memcpy(&handle, handles[p].data(), sizeof(handle));
    void* mapped = nullptr;
    check(cudaIpcOpenMemHandle(&mapped, handle, cudaIpcMemLazyEnablePeerAccess),
          "cudaIpcOpenMemHandle");
    peer_arenas_[p] = static_cast<uint8_t*>(mapped);
  }
  open_ = true;
}

uint32_t* PeerRuntime::local_signal(int kind, int32_t peer) const {
  return reinterpret_cast<uint32_t*>(arena_) + kind * config_.world + peer;
}

uint32_t* PeerRuntime::peer_signal(int32_t peer, int kind, int32_t slot) const {
  return reinterpret_cast<uint32_t*>(peer_arenas_[peer]) + kind * config_.world + slot;
}

void PeerRuntime::all_to_all_v(const void* send, const AllToAllLayout& layout,
                               cudaStream_t stream) {
  const int32_t world = config_.world, rank = config_.rank;
  if (!open_ || closed_) throw std::runtime_error("comm runtime: not open (call open() first)");
  if (layout.world() != world) throw std::invalid_argument("comm runtime: layout world differs");
  if (layout.recv_total(rank) > config_.recv_bytes) {
    throw std::invalid_argument("comm runtime: " + std::to_string(layout.recv_total(rank)) +
                                " bytes to receive, the receive region holds " +
                                std::to_string(config_.recv_bytes));
  }
  if (const std::string e = error(); !e.empty()) throw std::runtime_error(e);
  check(cudaSetDevice(config_.device), "cudaSetDevice");
  cudaEvent_t started, done;
  check(cudaEventCreateWithFlags(&started, cudaEventDisableTiming), "cudaEventCreate");
  check(cudaEventCreateWithFlags(&done, cudaEventDisableTiming), "cudaEventCreate");
  check(cudaEventRecord(started, stream), "cudaEventRecord");
  const uint32_t e = ++epoch_;
  const NvtxRange range("comm/all_to_all_v epoch " + std::to_string(e) + ", " +
                        std::to_string(layout.send_total(rank)) + " B out");
  // 1. Our receive region is free once the stream's earlier work (its consumers) has run.
  for (int32_t p = 0; p < world; ++p) {
    if (p != rank) write_value(stream, peer_signal(p, kReady, rank), e);
  }
  check(cudaEventRecord(forked_, stream), "cudaEventRecord");
  // 2. One side stream per peer, from rank+1 on; the own chunk last, a local copy.
  const auto* src = static_cast<const uint8_t*>(send);
  for (int32_t step = 1; step <= world; ++step) {
    const int32_t p = (rank + step) % world;
    cudaStream_t s = side_[p];
    check(cudaStreamWaitEvent(s, forked_, 0), "cudaStreamWaitEvent");
    const int64_t bytes = layout.split(rank, p);
    const uint8_t* from = src + layout.send_offset(rank, p);
    if (p == rank) {
      if (bytes > 0) {
        check(cudaMemcpyAsync(recv_ + layout.recv_offset(rank, rank), from, bytes,
                              cudaMemcpyDeviceToDevice, s),
              "cudaMemcpyAsync(self)");
      }
    } else {
      const NvtxRange peer_range("comm/push to " + std::to_string(p) + ": " +
                                 std::to_string(bytes) + " B");
      wait_geq(s, local_signal(kReady, p), e);
      if (bytes > 0) {
        uint8_t* to = peer_arenas_[p] + kSignalBytes + layout.recv_offset(p, rank);
        check(cudaMemcpyAsync(to, from, bytes, cudaMemcpyDeviceToDevice, s),
              "cudaMemcpyAsync(peer)");
      }
      write_value(s, peer_signal(p, kDone, rank), e);
    }
    check(cudaEventRecord(joined_[p], s), "cudaEventRecord");
    check(cudaStreamWaitEvent(stream, joined_[p], 0), "cudaStreamWaitEvent");
  }
  // 3. Every peer's chunk for us has arrived.
  for (int32_t p = 0; p < world; ++p) {
    if (p != rank) wait_geq(stream, local_signal(kDone, p), e);
  }
  check(cudaEventRecord(done, stream), "cudaEventRecord");
  {
    const std::lock_guard<std::mutex> lock(mutex_);
    pending_.push_back({started, done, e, 0.0});
  }
  wake_.notify_one();
}

std::string PeerRuntime::error() const {
  const std::lock_guard<std::mutex> lock(mutex_);
  return error_;
}

void PeerRuntime::watch() {
  cudaSetDevice(config_.device);
  std::unique_lock<std::mutex> lock(mutex_);
  while (!stop_ || !pending_.empty()) {
    if (pending_.empty()) {
      wake_.wait_for(lock, std::chrono::milliseconds(50));
      continue;
    }
    Pending& front = pending_.front();
    if (front.deadline == 0.0 && cudaEventQuery(front.started) == cudaSuccess) {
      front.deadline = now_s() + config_.timeout_s;  // the clock runs from the call's start
    }
    const Pending entry = front;
    lock.unlock();
    const cudaError_t state = cudaEventQuery(entry.done);
    bool retire = state != cudaErrorNotReady;  // done, or a CUDA error: nothing to wait for
    if (!retire && entry.deadline > 0.0 && now_s() > entry.deadline) {
      release_waits(entry.epoch);  // records the error and lets the stream run on
      retire = true;
    }
    lock.lock();
    if (retire) {
      cudaEventDestroy(entry.started);
      cudaEventDestroy(entry.done);  // resources go once the event completes
      pending_.pop_front();
    } else {
      wake_.wait_for(lock, std::chrono::milliseconds(1));
    }
  }
}

void PeerRuntime::release_waits(uint32_t epoch) {
  const int32_t world = config_.world;
  std::vector<uint32_t> seen(2 * world, 0);
  cudaMemcpyAsync(seen.data(), arena_, seen.size() * 4, cudaMemcpyDeviceToHost, rescue_);
  cudaStreamSynchronize(rescue_);
  std::string late;
  for (int32_t p = 0; p < world; ++p) {
    if (p == config_.rank) continue;
    const bool ready = static_cast<int32_t>(seen[kReady * world + p] - epoch) >= 0;
    const bool done = static_cast<int32_t>(seen[kDone * world + p] - epoch) >= 0;
    if (!ready || !done) late += (late.empty() ? "" : ", ") + std::to_string(p);
  }
  {
    const std::lock_guard<std::mutex> lock(mutex_);
    if (error_.empty()) {
      error_ = "comm runtime: rank " + std::to_string(config_.rank) + ": peer(s) " + late +
               " did not signal all-to-all epoch " + std::to_string(epoch) + " within " +
               std::to_string(config_.timeout_s) + " s (dead or stuck); its result is invalid";
    }
  }
  // Let the stuck waits pass so that the process can report the error instead of hanging; a
  // slot a fast peer already moved past `epoch` keeps its value.
  std::vector<uint32_t> release(seen);
  for (uint32_t& v : release) {
    if (static_cast<int32_t>(v - epoch) < 0) v = epoch;
  }
  cudaMemcpyAsync(arena_, release.data(), release.size() * 4, cudaMemcpyHostToDevice, rescue_);
  cudaStreamSynchronize(rescue_);
}

void PeerRuntime::close() {
  if (closed_) return;
  closed_ = true;
  stop_ = true;
  wake_.notify_all();
  if (watchdog_.joinable()) watchdog_.join();
  cudaSetDevice(config_.device);
  for (cudaStream_t s : side_) {  // our own copies only, not the rest of the device
    if (s != nullptr) cudaStreamSynchronize(s);
  }
  for (int32_t p = 0; p < config_.world; ++p) {
    if (peer_arenas_[p] != nullptr) cudaIpcCloseMemHandle(peer_arenas_[p]);
    if (side_[p] != nullptr) cudaStreamDestroy(side_[p]);
    if (joined_[p] != nullptr) cudaEventDestroy(joined_[p]);
  }
  if (forked_ != nullptr) cudaEventDestroy(forked_);
  if (rescue_ != nullptr) cudaStreamDestroy(rescue_);
  if (arena_ != nullptr) cudaFree(arena_);
  arena_ = recv_ = nullptr;
}

}  // namespace freescale::comm
