#include "comm/peer_runtime.h"

#include <cuda.h>
#include <nvtx3/nvToolsExt.h>

#include <algorithm>
#include <chrono>
#include <cstring>
#include <stdexcept>

namespace freescale::comm {
namespace {

// The signal area: 2048 uint32 slots, then the receive regions (the class-0 one is the
// symmetric heap), each aligned.
constexpr int64_t kSignalBytes = 8192;
constexpr int64_t kRegionAlign = 256;
constexpr int32_t kMaxWorld = 128;
constexpr int32_t kClassSlots = 2 * kMaxWorld;  // per class: ready, then done
constexpr int32_t kBarrierSlot = PeerRuntime::kMaxClasses * kClassSlots;  // + peer
constexpr int32_t kUserSlot = kBarrierSlot + kMaxWorld;                   // + slot
constexpr int32_t kNumSlots = static_cast<int32_t>(kSignalBytes / 4);
static_assert(kUserSlot + PeerRuntime::kUserSlots <= kNumSlots, "signal area too small");
// SignalMode::kCopy: each call stages its epoch in an entry of a pinned host ring, whence its
// signal copies read it; an entry is reused once the call that used it last has completed.
constexpr int32_t kHostRing = 1024;

// "Peer's region of class cls is free for epoch e" and "peer's chunk of epoch e arrived".
constexpr int32_t ready_slot(int32_t cls, int32_t peer) { return cls * kClassSlots + peer; }
constexpr int32_t done_slot(int32_t cls, int32_t peer) {
  return cls * kClassSlots + kMaxWorld + peer;
}

std::string slot_name(int32_t index) {
  if (index >= kUserSlot) return "user slot " + std::to_string(index - kUserSlot);
  const std::string peer = " of peer " + std::to_string(index % kMaxWorld);
  if (index >= kBarrierSlot) return "barrier" + peer;
  const int32_t cls = index / kClassSlots;
  const char* kind = index % kClassSlots >= kMaxWorld ? "done" : "ready";
  return std::string(kind) + peer + " (class " + std::to_string(cls) + ")";
}

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
  using Batch = CUresult (*)(CUstream, unsigned int, CUstreamBatchMemOpParams*, unsigned int);
  Wait wait = nullptr;
  Write write = nullptr;
  Batch batch = nullptr;

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
      check(
          cudaGetDriverEntryPointByVersion("cuStreamBatchMemOp", reinterpret_cast<void**>(&o.batch),
                                           12000, cudaEnableDefault, &status),
          "looking up cuStreamBatchMemOp");
      if (o.wait == nullptr || o.write == nullptr || o.batch == nullptr) {
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
  // The default flags fence the stream's earlier writes (the copy) before the signal (the v2
  // API, the only one CUDA 13 has, refuses CU_STREAM_WRITE_VALUE_NO_MEMORY_BARRIER).
  const CUresult r = StreamMemOps::get().write(reinterpret_cast<CUstream>(stream),
                                               reinterpret_cast<CUdeviceptr>(addr), value,
                                               CU_STREAM_WRITE_VALUE_DEFAULT);
  if (r != CUDA_SUCCESS) throw std::runtime_error("comm runtime: cuStreamWriteValue32 failed");
}

// One stream memory operation of a batch: a wait (slot >= value) or a fenced write.
struct MemOp {
  bool write;
  uint32_t* addr;
  uint32_t value;
};

// `ops` in order on `stream`, in as few driver calls as the batch limit allows (each call has a
// host cost of a few µs; a call of the runtime has 2 (world - 1) of these operations).
void run_mem_ops(cudaStream_t stream, const std::vector<MemOp>& ops) {
  constexpr size_t kMaxBatch = 255;  // cuStreamBatchMemOp takes fewer than 256
  if (ops.size() == 1) {
    if (ops[0].write) {
      write_value(stream, ops[0].addr, ops[0].value);
    } else {
      wait_geq(stream, ops[0].addr, ops[0].value);
    }
    return;
  }
  std::vector<CUstreamBatchMemOpParams> params;
  for (size_t first = 0; first < ops.size(); first += kMaxBatch) {
    const size_t count = std::min(kMaxBatch, ops.size() - first);
    params.assign(count, CUstreamBatchMemOpParams{});
    for (size_t i = 0; i < count; ++i) {
      const MemOp& op = ops[first + i];
      if (op.write) {
        params[i].writeValue.operation = CU_STREAM_MEM_OP_WRITE_VALUE_32;
        params[i].writeValue.address = reinterpret_cast<CUdeviceptr>(op.addr);
        params[i].writeValue.value = op.value;
        params[i].writeValue.flags = CU_STREAM_WRITE_VALUE_DEFAULT;  // fenced, as write_value
      } else {
        params[i].waitValue.operation = CU_STREAM_MEM_OP_WAIT_VALUE_32;
        params[i].waitValue.address = reinterpret_cast<CUdeviceptr>(op.addr);
        params[i].waitValue.value = op.value;
        params[i].waitValue.flags = CU_STREAM_WAIT_VALUE_GEQ;
      }
    }
    const CUresult r = StreamMemOps::get().batch(
        reinterpret_cast<CUstream>(stream), static_cast<unsigned int>(count), params.data(), 0);
    if (r != CUDA_SUCCESS) throw std::runtime_error("comm runtime: cuStreamBatchMemOp failed");
  }
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
  if (config.timeout_s <= 0 || config.piece_bytes < 0) {
    throw std::invalid_argument("comm runtime: need timeout_s > 0 and piece_bytes >= 0");
  }
  if (config.world > kMaxWorld) {
    throw std::invalid_argument("comm runtime: at most " + std::to_string(kMaxWorld) + " ranks");
  }
  const auto classes = static_cast<int32_t>(config.recv_bytes.size());
  if (classes < 1 || classes > kMaxClasses) {
    throw std::invalid_argument("comm runtime: 1 to " + std::to_string(kMaxClasses) +
                                " priority classes (one receive size each)");
  }
  int64_t arena_bytes = kSignalBytes;
  lanes_.resize(classes);
  for (int32_t c = 0; c < classes; ++c) {
    if (config.recv_bytes[c] < 0) throw std::invalid_argument("comm runtime: recv_bytes < 0");
    lanes_[c].offset = arena_bytes;
    lanes_[c].capacity = config.recv_bytes[c];
    arena_bytes += (config.recv_bytes[c] + kRegionAlign - 1) / kRegionAlign * kRegionAlign;
  }
  check(cudaSetDevice(config.device), "cudaSetDevice");
  void* raw = nullptr;
  check(cudaMalloc(&raw, arena_bytes), "cudaMalloc(arena)");
  arena_ = static_cast<uint8_t*>(raw);
  check(cudaMemset(arena_, 0, kSignalBytes), "cudaMemset(signals)");
  peer_arenas_.assign(config.world, nullptr);
  int least = 0, greatest = 0;  // numerically: greatest is the highest priority
  check(cudaDeviceGetStreamPriorityRange(&least, &greatest), "cudaDeviceGetStreamPriorityRange");
  for (int32_t c = 0; c < classes; ++c) {
    Lane& lane = lanes_[c];
    lane.side.assign(config.world, nullptr);
    lane.joined.assign(config.world, nullptr);
    for (int32_t p = 0; p < config.world; ++p) {
      check(cudaStreamCreateWithPriority(&lane.side[p], cudaStreamNonBlocking,
                                         c == 0 ? greatest : least),
            "cudaStreamCreateWithPriority");
      check(cudaEventCreateWithFlags(&lane.joined[p], cudaEventDisableTiming), "cudaEventCreate");
    }
    check(cudaEventCreateWithFlags(&lane.forked, cudaEventDisableTiming), "cudaEventCreate");
  }
  check(cudaStreamCreateWithFlags(&rescue_, cudaStreamNonBlocking), "cudaStreamCreate");
  if (config.signal == SignalMode::kCopy) {
    void* ring = nullptr;
    check(cudaHostAlloc(&ring, kHostRing * sizeof(uint32_t), cudaHostAllocPortable),
          "cudaHostAlloc(staging ring)");
    host_ring_ = static_cast<uint32_t*>(ring);
    ring_done_.assign(kHostRing, nullptr);
    for (cudaEvent_t& ev : ring_done_) {
      check(cudaEventCreateWithFlags(&ev, cudaEventDisableTiming), "cudaEventCreate");
    }
  }
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

uint32_t* PeerRuntime::local_slot(int32_t index) const {
  return reinterpret_cast<uint32_t*>(arena_) + index;
}

uint32_t* PeerRuntime::peer_slot(int32_t peer, int32_t index) const {
  return reinterpret_cast<uint32_t*>(peer_arenas_[peer]) + index;
}

void PeerRuntime::check_usable() const {
  if (!open_ || closed_) throw std::runtime_error("comm runtime: not open (call open() first)");
  if (const std::string e = error(); !e.empty()) throw std::runtime_error(e);
  check(cudaSetDevice(config_.device), "cudaSetDevice");
}

cudaEvent_t PeerRuntime::take_event() {
  {
    const std::lock_guard<std::mutex> lock(mutex_);
    if (!spare_events_.empty()) {
      const cudaEvent_t ev = spare_events_.back();
      spare_events_.pop_back();
      return ev;
    }
  }
  cudaEvent_t ev;
  check(cudaEventCreateWithFlags(&ev, cudaEventDisableTiming), "cudaEventCreate");
  return ev;
}

cudaEvent_t PeerRuntime::begin_watch(cudaStream_t stream) {
  const cudaEvent_t started = take_event();
  check(cudaEventRecord(started, stream), "cudaEventRecord");
  return started;
}

void PeerRuntime::end_watch(cudaEvent_t started, cudaStream_t stream, std::string what,
                            std::vector<std::pair<int32_t, uint32_t>> waits) {
  const cudaEvent_t done = take_event();
  check(cudaEventRecord(done, stream), "cudaEventRecord");
  bool idle = false;
  {
    const std::lock_guard<std::mutex> lock(mutex_);
    idle = pending_.empty();
    pending_.push_back({started, done, std::move(what), std::move(waits), 0.0});
  }
  // A busy watchdog polls every millisecond anyway; waking it costs a system call per call.
  if (idle) wake_.notify_one();
}

void PeerRuntime::check_peer(int32_t peer) const {
  if (peer < 0 || peer >= config_.world) {
    throw std::invalid_argument("comm runtime: peer " + std::to_string(peer) + " out of range");
  }
}

void PeerRuntime::check_heap(int32_t peer, int64_t offset, int64_t bytes) const {
  check_peer(peer);
  if (offset < 0 || bytes < 0 || offset + bytes > lanes_[0].capacity) {
    throw std::invalid_argument("comm runtime: [" + std::to_string(offset) + ", " +
                                std::to_string(offset + bytes) + ") is outside the " +
                                std::to_string(lanes_[0].capacity) + "-byte heap");
  }
}

void PeerRuntime::put(int32_t peer, int64_t offset, const void* src, int64_t bytes,
                      cudaStream_t stream) {
  check_usable();
  check_heap(peer, offset, bytes);
  const NvtxRange range("comm/put " + std::to_string(bytes) + " B to " + std::to_string(peer));
  uint8_t* to = (peer == config_.rank ? arena_ : peer_arenas_[peer]) + lanes_[0].offset + offset;
  if (bytes > 0) copy({{to, src, static_cast<size_t>(bytes)}}, stream);
}

void PeerRuntime::get(int32_t peer, int64_t offset, void* dst, int64_t bytes, cudaStream_t stream) {
  check_usable();
  check_heap(peer, offset, bytes);
  const NvtxRange range("comm/get " + std::to_string(bytes) + " B from " + std::to_string(peer));
  const uint8_t* from =
      (peer == config_.rank ? arena_ : peer_arenas_[peer]) + lanes_[0].offset + offset;
  if (bytes > 0) copy({{dst, from, static_cast<size_t>(bytes)}}, stream);
}

void PeerRuntime::signal(int32_t peer, int32_t slot, uint32_t value, cudaStream_t stream) {
  check_usable();
  check_peer(peer);
  if (slot < 0 || slot >= kUserSlots) {
    throw std::invalid_argument("comm runtime: user slot " + std::to_string(slot) + " out of [0, " +
                                std::to_string(kUserSlots) + ")");
  }
  uint32_t* addr =
      peer == config_.rank ? local_slot(kUserSlot + slot) : peer_slot(peer, kUserSlot + slot);
  write_value(stream, addr, value);
}

void PeerRuntime::wait(int32_t slot, uint32_t value, cudaStream_t stream) {
  check_usable();
  if (slot < 0 || slot >= kUserSlots) {
    throw std::invalid_argument("comm runtime: user slot " + std::to_string(slot) + " out of [0, " +
                                std::to_string(kUserSlots) + ")");
  }
  cudaEvent_t started = begin_watch(stream);
  wait_geq(stream, local_slot(kUserSlot + slot), value);
  end_watch(started, stream, "wait on user slot " + std::to_string(slot),
            {{kUserSlot + slot, value}});
}

void PeerRuntime::barrier(cudaStream_t stream) {
  check_usable();
  try {
    barrier_unchecked(stream);
  } catch (const std::exception& ex) {
    fail(ex.what());
    throw;
  }
}

void PeerRuntime::barrier_unchecked(cudaStream_t stream) {
  const uint32_t b = ++barrier_epoch_;
  const NvtxRange range("comm/barrier " + std::to_string(b));
  cudaEvent_t started = begin_watch(stream);
  std::vector<std::pair<int32_t, uint32_t>> waits;
  std::vector<MemOp> ops;
  for (int32_t p = 0; p < config_.world; ++p) {
    if (p != config_.rank) ops.push_back({true, peer_slot(p, kBarrierSlot + config_.rank), b});
  }
  for (int32_t p = 0; p < config_.world; ++p) {
    if (p == config_.rank) continue;
    ops.push_back({false, local_slot(kBarrierSlot + p), b});
    waits.emplace_back(kBarrierSlot + p, b);
  }
  if (!ops.empty()) run_mem_ops(stream, ops);
  end_watch(started, stream, "barrier " + std::to_string(b), std::move(waits));
}

void PeerRuntime::check_class(int32_t cls) const {
  if (cls < 0 || cls >= num_classes()) {
    throw std::invalid_argument("comm runtime: priority class " + std::to_string(cls) +
                                " out of [0, " + std::to_string(num_classes()) + ")");
  }
}

void* PeerRuntime::recv_region(int32_t cls) const {
  check_class(cls);
  return arena_ == nullptr ? nullptr : arena_ + lanes_[cls].offset;
}

int64_t PeerRuntime::recv_capacity(int32_t cls) const {
  check_class(cls);
  return lanes_[cls].capacity;
}

uint32_t PeerRuntime::epoch(int32_t cls) const {
  check_class(cls);
  return lanes_[cls].epoch;
}

void PeerRuntime::all_to_all_v(const void* send, const AllToAllLayout& layout, int32_t cls,
                               cudaStream_t stream, bool own_chunk) {
  const int32_t world = config_.world, rank = config_.rank;
  check_usable();
  check_class(cls);
  if (layout.world() != world) throw std::invalid_argument("comm runtime: layout world differs");
  if (layout.recv_total(rank) > lanes_[cls].capacity) {
    throw std::invalid_argument("comm runtime: " + std::to_string(layout.recv_total(rank)) +
                                " bytes to receive, the receive region of class " +
                                std::to_string(cls) + " holds " +
                                std::to_string(lanes_[cls].capacity));
  }
  std::vector<Copy> copies = push_copies(layout, rank, cutting(cls));
  if (!own_chunk) std::erase_if(copies, [rank](const Copy& c) { return c.dst == rank; });
  push_all(static_cast<const uint8_t*>(send), copies, cls, "all-to-all", stream);
}

void PeerRuntime::all_gather(const void* send, int64_t bytes, int32_t cls, cudaStream_t stream) {
  check_usable();
  check_class(cls);
  if (bytes < 0 || bytes * config_.world > lanes_[cls].capacity) {
    throw std::invalid_argument("comm runtime: all_gather of " + std::to_string(bytes) +
                                " bytes per rank does not fit the " +
                                std::to_string(lanes_[cls].capacity) + "-byte receive region");
  }
  // The same `bytes` to every rank, peers from rank+1 on, into slot `rank` of their regions.
  std::vector<Copy> copies;
  for (int32_t step = 1; step <= config_.world; ++step) {
    const Copy whole{config_.rank, (config_.rank + step) % config_.world, 0, config_.rank * bytes,
                     bytes};
    for (const Copy& piece : cut(whole, cutting(cls))) copies.push_back(piece);
  }
  push_all(static_cast<const uint8_t*>(send), copies, cls, "all-gather", stream);
}

void PeerRuntime::fail(const std::string& message) {
  const std::lock_guard<std::mutex> lock(mutex_);
  if (error_.empty()) {
    error_ = "comm runtime: rank " + std::to_string(config_.rank) + ": " + message +
             " (a call failed halfway: this rank's epochs no longer match its peers')";
  }
}

void PeerRuntime::push_all(const uint8_t* send, const std::vector<Copy>& copies, int32_t cls,
                           const char* what, cudaStream_t stream) {
  try {
    push_all_unchecked(send, copies, cls, what, stream);
  } catch (const std::exception& ex) {
    fail(ex.what());
    throw;
  }
}

void PeerRuntime::copy(const std::vector<Piece>& pieces, cudaStream_t stream) {
  if (pieces.empty()) return;
  size_t smallest = pieces[0].bytes;
  for (const Piece& piece : pieces) smallest = std::min(smallest, piece.bytes);
  if (static_cast<int64_t>(smallest) > refused_piece_) {
    std::vector<void*> dsts;
    std::vector<const void*> srcs;
    std::vector<size_t> sizes;
    for (const Piece& piece : pieces) {
      dsts.push_back(piece.dst);
      srcs.push_back(piece.src);
      sizes.push_back(piece.bytes);
    }
    cudaMemcpyAttributes attr = {};
    attr.srcAccessOrder = cudaMemcpySrcAccessOrderStream;
    attr.flags = cudaMemcpyFlagPreferOverlapWithCompute;
    size_t first = 0;
    const cudaError_t err = cudaMemcpyBatchAsync(dsts.data(), srcs.data(), sizes.data(),
                                                 pieces.size(), &attr, &first, 1, stream);
    if (err == cudaSuccess) return;
    if (err != cudaErrorNotSupported && err != cudaErrorInvalidValue) {
      check(err, "cudaMemcpyBatchAsync");
    }
    cudaGetLastError();  // the refusal is not sticky; this batch goes piece by piece
    refused_piece_ = static_cast<int64_t>(smallest);
    const std::lock_guard<std::mutex> lock(mutex_);
    batch_refusal_ = std::string(cudaGetErrorName(err)) + " for " + std::to_string(pieces.size()) +
                     " piece(s), the smallest " + std::to_string(smallest) + " B";
  }
  for (const Piece& piece : pieces) {
    check(cudaMemcpyAsync(piece.dst, piece.src, piece.bytes, cudaMemcpyDeviceToDevice, stream),
          "cudaMemcpyAsync");
  }
}

const uint32_t* PeerRuntime::stage(uint32_t epoch, int32_t* entry) {
  *entry = static_cast<int32_t>(ring_next_++ % kHostRing);
  // Returns at once unless the entry's last call is still queued (kHostRing calls in flight).
  check(cudaEventSynchronize(ring_done_[*entry]), "cudaEventSynchronize(staging)");
  host_ring_[*entry] = epoch;
  return host_ring_ + *entry;
}

void PeerRuntime::signal_peer(cudaStream_t stream, int32_t peer, int32_t index, uint32_t epoch,
                              const uint32_t* staged) {
  if (config_.signal == SignalMode::kCopy) {
    // The copy engine carries the staged value, behind the data copies of this stream.
    copy({{peer_slot(peer, index), staged, 4}}, stream);
  } else {
    write_value(stream, peer_slot(peer, index), epoch);
  }
}

void PeerRuntime::push_all_unchecked(const uint8_t* send, const std::vector<Copy>& copies,
                                     int32_t cls, const char* what, cudaStream_t stream) {
  const int32_t world = config_.world, rank = config_.rank;
  Lane& lane = lanes_[cls];
  std::vector<std::vector<Piece>> to(world);  // by destination, in the plan's order
  for (const Copy& c : copies) {
    uint8_t* region = (c.dst == rank ? arena_ : peer_arenas_[c.dst]) + lane.offset;
    to[c.dst].push_back({region + c.dst_offset, send + c.src_offset, static_cast<size_t>(c.bytes)});
  }
  cudaEvent_t started = begin_watch(stream);
  const uint32_t e = ++lane.epoch;
  const std::string name =
      std::string(what) + " class " + std::to_string(cls) + " epoch " + std::to_string(e);
  const NvtxRange range("comm/" + name);
  std::vector<std::pair<int32_t, uint32_t>> waits;
  int32_t entry = -1;
  const uint32_t* staged = config_.signal == SignalMode::kCopy ? stage(e, &entry) : nullptr;
  // Signals that are stream writes go out in one batch of memory operations per stream.
  const bool written = config_.signal == SignalMode::kFencedWrite;
  std::vector<MemOp> ops;
  // Sets slot `index` of every peer to e on the caller's stream: queued in `ops` as a batched
  // write, or (copied signals) issued at once.
  const auto signal_peers = [&](int32_t index) {
    for (int32_t p = 0; p < world; ++p) {
      if (p == rank) continue;
      if (written) {
        ops.push_back({true, peer_slot(p, index), e});
      } else {
        signal_peer(stream, p, index, e, staged);
      }
    }
  };
  // 1. Our receive region is free once the stream's earlier work (its consumers) has run.
  signal_peers(ready_slot(cls, rank));
  if (config_.issue == CopyIssue::kBatch) {
    // 2. Every peer's region is free, then one batch, peers from rank+1 on, the own chunk last.
    std::vector<Piece> pieces;
    for (int32_t step = 1; step <= world; ++step) {
      const int32_t p = (rank + step) % world;
      if (p != rank) {
        ops.push_back({false, local_slot(ready_slot(cls, p)), e});
        waits.emplace_back(ready_slot(cls, p), e);
      }
      pieces.insert(pieces.end(), to[p].begin(), to[p].end());
    }
    if (!ops.empty()) run_mem_ops(stream, ops);
    ops.clear();
    copy(pieces, stream);
    signal_peers(done_slot(cls, rank));
  } else {
    // 2. Peer rank+1 on the caller's stream itself, every other peer (and the own chunk, if
    // any) on a side stream of its own forked from it, so that the copy engines serve several
    // peers at once; no side stream (two events and two waits) where one peer would use it.
    if (!ops.empty()) run_mem_ops(stream, ops);
    ops.clear();
    const int32_t first = (rank + 1) % world;
    std::vector<int32_t> forked;
    for (int32_t step = 2; step <= world; ++step) {
      const int32_t p = (rank + step) % world;
      if (p != rank || !to[p].empty()) forked.push_back(p);
    }
    const auto push_to = [&](int32_t p, cudaStream_t s) {
      if (p == rank) {
        copy(to[p], s);
        return;
      }
      const NvtxRange peer_range("comm/push to " + std::to_string(p) + ": " +
                                 std::to_string(to[p].size()) + " piece(s)");
      wait_geq(s, local_slot(ready_slot(cls, p)), e);
      waits.emplace_back(ready_slot(cls, p), e);
      copy(to[p], s);
      signal_peer(s, p, done_slot(cls, rank), e, staged);
    };
    if (!forked.empty()) check(cudaEventRecord(lane.forked, stream), "cudaEventRecord");
    for (const int32_t p : forked) {
      check(cudaStreamWaitEvent(lane.side[p], lane.forked, 0), "cudaStreamWaitEvent");
      push_to(p, lane.side[p]);
      check(cudaEventRecord(lane.joined[p], lane.side[p]), "cudaEventRecord");
    }
    if (first != rank || !to[first].empty()) push_to(first, stream);
    for (const int32_t p : forked) {
      check(cudaStreamWaitEvent(stream, lane.joined[p], 0), "cudaStreamWaitEvent");
    }
  }
  // 3. Every peer's chunk for us has arrived.
  for (int32_t p = 0; p < world; ++p) {
    if (p == rank) continue;
    ops.push_back({false, local_slot(done_slot(cls, p)), e});
    waits.emplace_back(done_slot(cls, p), e);
  }
  if (!ops.empty()) run_mem_ops(stream, ops);
  if (entry >= 0) check(cudaEventRecord(ring_done_[entry], stream), "cudaEventRecord");
  end_watch(started, stream, name, std::move(waits));
}

std::string PeerRuntime::batch_refusal() const {
  const std::lock_guard<std::mutex> lock(mutex_);
  return batch_refusal_;
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
    // After a first failure the queued calls behind it are released at once: the runtime is
    // failed, and a queue of calls to a dead peer must not take one timeout each.
    const bool failed = !error().empty();
    if (!retire && (failed || (entry.deadline > 0.0 && now_s() > entry.deadline))) {
      release_waits(entry);  // records the error (the first one) and lets the stream run on
      retire = true;
    }
    lock.lock();
    if (retire) {
      // Recycled: creating two events per call cost more host time than the rest of a call.
      spare_events_.push_back(entry.started);
      spare_events_.push_back(entry.done);
      pending_.pop_front();
    } else {
      wake_.wait_for(lock, std::chrono::milliseconds(1));
    }
  }
}

void PeerRuntime::release_waits(const Pending& entry) {
  std::vector<uint32_t> seen(kNumSlots, 0);
  cudaMemcpyAsync(seen.data(), arena_, kSignalBytes, cudaMemcpyDeviceToHost, rescue_);
  cudaStreamSynchronize(rescue_);
  std::string late;
  for (const auto& [index, value] : entry.waits) {
    if (static_cast<int32_t>(seen[index] - value) >= 0) continue;
    late += (late.empty() ? "" : ", ") + slot_name(index);
    // Raise only the awaited slots that fell short: the stuck waits pass, and a slot a fast
    // peer already moved on keeps its value.
    const uint32_t staged = value;  // read by the copy before the synchronize returns
    cudaMemcpyAsync(local_slot(index), &staged, 4, cudaMemcpyHostToDevice, rescue_);
    cudaStreamSynchronize(rescue_);
  }
  const std::lock_guard<std::mutex> lock(mutex_);
  if (error_.empty()) {
    error_ = "comm runtime: rank " + std::to_string(config_.rank) + ": " + entry.what +
             " not satisfied within " + std::to_string(config_.timeout_s) + " s (" +
             (late.empty() ? std::string("completed late") : "missing: " + late) +
             "; a peer is dead or stuck); its result is invalid";
  }
}

void PeerRuntime::close() {
  if (closed_) return;
  closed_ = true;
  stop_ = true;
  wake_.notify_all();
  if (watchdog_.joinable()) watchdog_.join();
  cudaSetDevice(config_.device);
  for (const Lane& lane : lanes_) {  // our own copies only, not the rest of the device
    for (cudaStream_t s : lane.side) {
      if (s != nullptr) cudaStreamSynchronize(s);
    }
  }
  for (int32_t p = 0; p < config_.world; ++p) {
    if (peer_arenas_[p] != nullptr) cudaIpcCloseMemHandle(peer_arenas_[p]);
  }
  for (Lane& lane : lanes_) {
    for (cudaStream_t s : lane.side) {
      if (s != nullptr) cudaStreamDestroy(s);
    }
    for (cudaEvent_t ev : lane.joined) {
      if (ev != nullptr) cudaEventDestroy(ev);
    }
    if (lane.forked != nullptr) cudaEventDestroy(lane.forked);
    lane = Lane{};
  }
  for (cudaEvent_t ev : spare_events_) cudaEventDestroy(ev);  // the watchdog has stopped
  spare_events_.clear();
  if (rescue_ != nullptr) cudaStreamDestroy(rescue_);
  for (cudaEvent_t ev : ring_done_) cudaEventDestroy(ev);
  ring_done_.clear();
  if (host_ring_ != nullptr) cudaFreeHost(host_ring_);
  host_ring_ = nullptr;
  if (arena_ != nullptr) cudaFree(arena_);
  arena_ = nullptr;
}

}  // namespace freescale::comm
