// The SM-free all-to-all-v of DESIGN §6 between the GPUs of one host: copy engines move the
// data, stream memory operations signal, no kernel runs. Torch-free; csrc/ops/comm_runtime.cpp
// is its torch boundary.
//
// Every rank owns an arena in its device memory, [signals | one receive region per priority
// class], shared with the peers through CUDA IPC. A call of class c (its epoch e, on the
// caller's stream):
//   1. tells every peer "my receive region is free for epoch e" (writes e into the peer's
//      ready[rank]; stream-ordered after whatever consumed the previous result);
//   2. per peer p, from p = rank+1 on: waits for ready[p] >= e, copies its chunk into p's
//      receive region, writes e into p's done[rank]; peer rank+1 on the caller's stream, every
//      other peer on a side stream of its own (so the copy engines work in parallel); its own
//      chunk, if it is copied, is a local copy on a side stream;
//   3. waits until done[s] >= e for every peer s: the receive region holds epoch e.
// Copies go through cudaMemcpyBatchAsync with the hint to leave the SMs to compute. With
// CopyIssue::kBatch, step 2 is instead one batch of all chunks on the caller's stream after all
// the ready waits (fewer API calls; the driver spreads the batch).
//
// Priority classes (0 highest) have their own receive region, signals, epochs and side
// streams, so a class-0 call issued while a class-1 call is in flight does not queue behind its
// copies in a stream; the copies of classes > 0 are cut into pieces of `piece_bytes`, so the
// copy engines, which switch between streams only between copies, serve the class-0 copies
// after at most one piece per engine instead of after the whole bulk transfer.
// A host watchdog turns a peer that never signals into an error within `timeout_s` of the stream
// reaching the call: it releases the stuck waits (writes the awaited values from the host) and
// records which peers failed; `error()` then reports it, and the runtime refuses further calls.
// The results of that call, on this rank and on the peers it then wrote to, are invalid.
// The release is a host-to-device copy on a stream of its own; with CUDA_DEVICE_MAX_CONNECTIONS=1
// the device may queue it behind the stuck wait, and the watchdog cannot help (not supported).
// Waits compare with wrap-around, (int32_t)(slot - value) >= 0, so epochs may wrap.
#pragma once

#include <cuda_runtime_api.h>

#include <atomic>
#include <condition_variable>
#include <cstdint>
#include <deque>
#include <mutex>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include "comm/transfer_plan.h"

namespace freescale::comm {

// How the protocol's signals (ready, done) reach a peer. kFencedWrite: cuStreamWriteValue32,
// with its memory barrier; kCopy: a 4-byte copy-engine copy of the value (staged in pinned host
// memory), in order behind the data copies of its stream.
enum class SignalMode { kFencedWrite, kCopy };

// How a call hands its copies to the copy engines.
enum class CopyIssue {
  kPeerStreams,  // peer rank+1 on the caller's stream, each other peer on a side stream of its
                 // own: the engines work on several peers at once
  kBatch,        // one cudaMemcpyBatchAsync of every chunk on the caller's stream
};

struct PeerRuntimeConfig {
  int32_t rank = 0;
  int32_t world = 1;
  int32_t device = 0;
  std::vector<int64_t> recv_bytes;  // receive region of each priority class (1 to kMaxClasses)
  double timeout_s = 60.0;
  int64_t piece_bytes = int64_t{4} << 20;  // cutting of the copies of classes > 0 (0: none)
  CopyIssue issue = CopyIssue::kPeerStreams;
  SignalMode signal = SignalMode::kFencedWrite;
};

class PeerRuntime {
 public:
  // Allocates the arena on `device` (zeroed signals). Throws std::runtime_error on CUDA errors.
  explicit PeerRuntime(const PeerRuntimeConfig& config);
  ~PeerRuntime();
  PeerRuntime(const PeerRuntime&) = delete;
  PeerRuntime& operator=(const PeerRuntime&) = delete;

  // This rank's arena as a CUDA IPC handle (to be exchanged through the process group).
  std::vector<uint8_t> ipc_handle() const;
  // Maps every peer's arena (handles[r] of rank r; this rank's entry is ignored).
  void open(const std::vector<std::vector<uint8_t>>& handles);

  static constexpr int32_t kMaxClasses = 4;

  // All-to-all-v of `layout` (bytes) in priority class `cls`: `send` is this rank's send buffer
  // on its device (torch's all_to_all_single layout). On return the work is queued on `stream`;
  // once it has run, recv_region(cls) holds layout.recv_total(rank) bytes, valid until the next
  // call of that class. Calls of one class must be issued in the same order on every rank.
  // With own_chunk false, this rank's chunk for itself stays in `send` ("in place"): its slot
  // in the receive region is not written, and no local copy (which the driver may run on SMs,
  // waiting behind concurrent kernels) sits in the call.
  void all_to_all_v(const void* send, const AllToAllLayout& layout, int32_t cls,
                    cudaStream_t stream, bool own_chunk = true);
  // Every rank's `bytes` bytes at `send`, gathered in rank order into recv_region(cls) on every
  // rank (the same protocol: one chunk per peer, all from the same source).
  void all_gather(const void* send, int64_t bytes, int32_t cls, cudaStream_t stream);

  // NVSHMEM-style one-sided operations on the symmetric heap (every rank's class-0 region;
  // an offset means the same place on every rank), stream-ordered on `stream`, no kernels.
  // put: `bytes` from local `src` into `peer`'s heap at `offset`. get: from `peer`'s heap at
  // `offset` into local `dst`. signal: sets `peer`'s user slot to `value` once the stream's
  // earlier work (a put) is visible. wait: until this rank's user slot >= `value`.
  // barrier: until every rank reached its barrier (the n-th call matches the n-th).
  // A wait or barrier that a peer never satisfies is the watchdog's, like an all-to-all.
  void put(int32_t peer, int64_t offset, const void* src, int64_t bytes, cudaStream_t stream);
  void get(int32_t peer, int64_t offset, void* dst, int64_t bytes, cudaStream_t stream);
  void signal(int32_t peer, int32_t slot, uint32_t value, cudaStream_t stream);
  void wait(int32_t slot, uint32_t value, cudaStream_t stream);
  void barrier(cudaStream_t stream);
  static constexpr int32_t kUserSlots = 512;

  void* recv_region(int32_t cls) const;
  int64_t recv_capacity(int32_t cls) const;
  int32_t num_classes() const { return static_cast<int32_t>(config_.recv_bytes.size()); }
  uint32_t epoch(int32_t cls) const;
  // "" while every copy went through cudaMemcpyBatchAsync; else why the driver last refused it
  // (batches whose smallest piece is no larger than the refused one's then go straight to one
  // cudaMemcpyAsync per piece).
  std::string batch_refusal() const;
  // The watchdog's error ("" if none). Sticky: a runtime that timed out stays failed.
  std::string error() const;
  // Waits for the watchdog's pending checks, unmaps peers, frees the arena. Idempotent.
  void close();

 private:
  struct Pending {
    cudaEvent_t started;  // the stream reached the call: its clock starts
    cudaEvent_t done;
    std::string what;                                 // for the error message
    std::vector<std::pair<int32_t, uint32_t>> waits;  // (local slot, awaited value)
    double deadline;                                  // 0 until `started` completed
  };

  struct Piece {
    void* dst;
    const void* src;
    size_t bytes;
  };
  // A priority class's own receive region (offset in every rank's arena), epochs and streams.
  struct Lane {
    int64_t offset = 0;
    int64_t capacity = 0;
    uint32_t epoch = 0;
    std::vector<cudaStream_t> side;   // one per peer
    std::vector<cudaEvent_t> joined;  // one per peer
    cudaEvent_t forked = nullptr;
  };
  // Runs this rank's `copies` (transfer_plan's; src_offset into `send`, dst_offset into the
  // destination's receive region of class cls) under one epoch of the class's ready/done
  // protocol with every peer, whether or not a copy goes to it.
  void push_all(const uint8_t* send, const std::vector<Copy>& copies, int32_t cls, const char* what,
                cudaStream_t stream);
  void push_all_unchecked(const uint8_t* send, const std::vector<Copy>& copies, int32_t cls,
                          const char* what, cudaStream_t stream);
  // How the copies of class cls are cut: classes > 0 in pieces of piece_bytes.
  Cutting cutting(int32_t cls) const { return {cls > 0 ? config_.piece_bytes : 0, 1}; }
  // Copies `pieces` on `stream` by the copy engines.
  void copy(const std::vector<Piece>& pieces, cudaStream_t stream);
  void check_class(int32_t cls) const;
  // Sets `peer`'s slot `index` to `epoch` on `stream`, the configured way (`staged`: the
  // epoch's pinned copy, for kCopy).
  void signal_peer(cudaStream_t stream, int32_t peer, int32_t index, uint32_t epoch,
                   const uint32_t* staged);
  // kCopy: a pinned host entry holding `epoch` (*entry: its index, for ring_done_).
  const uint32_t* stage(uint32_t epoch, int32_t* entry);
  void barrier_unchecked(cudaStream_t stream);
  // Records a sticky error (the first one wins).
  void fail(const std::string& message);

  uint32_t* local_slot(int32_t index) const;
  uint32_t* peer_slot(int32_t peer, int32_t index) const;
  // Checks the runtime can run a call; then events around it, for the watchdog.
  void check_usable() const;
  cudaEvent_t take_event();  // a spare one (the watchdog returns them), else a new one
  cudaEvent_t begin_watch(cudaStream_t stream);
  void end_watch(cudaEvent_t started, cudaStream_t stream, std::string what,
                 std::vector<std::pair<int32_t, uint32_t>> waits);
  void check_peer(int32_t peer) const;
  void check_heap(int32_t peer, int64_t offset, int64_t bytes) const;
  void watch();
  void release_waits(const Pending& entry);

  PeerRuntimeConfig config_;
  uint8_t* arena_ = nullptr;
  std::vector<uint8_t*> peer_arenas_;  // mapped (nullptr for self and before open())
  std::vector<Lane> lanes_;            // one per priority class
  cudaStream_t rescue_ = nullptr;      // the watchdog's stream
  uint32_t barrier_epoch_ = 0;
  int64_t refused_piece_ = 0;           // the largest smallest-piece of a refused batch (0: none)
  std::string batch_refusal_;           // under mutex_
  uint32_t* host_ring_ = nullptr;       // kCopy: pinned epochs, one entry per call
  std::vector<cudaEvent_t> ring_done_;  // the last call that used each entry
  uint64_t ring_next_ = 0;
  bool open_ = false;
  bool closed_ = false;

  mutable std::mutex mutex_;
  std::condition_variable wake_;
  std::deque<Pending> pending_;
  std::vector<cudaEvent_t> spare_events_;
  std::string error_;
  std::atomic<bool> stop_{false};
  std::thread watchdog_;
};

}  // namespace freescale::comm
