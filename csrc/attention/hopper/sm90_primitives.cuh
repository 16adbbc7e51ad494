// sm_90a building blocks of the Hopper attention kernels, as inline PTX: transaction barriers
// (mbarrier), TMA tile loads, warpgroup MMA fences and shared-memory matrix descriptors, and
// register reallocation between producer and consumer warpgroups.
//
// Everything here is only meaningful inside `#if FREESCALE_SM90A` device code.
#pragma once

#include <cuda.h>  // CUtensorMap (a type only; nothing from the driver library is linked)
#include <cuda_runtime.h>

#include <cstdint>

#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900 && defined(__CUDA_ARCH_FEAT_SM90_ALL)
#define FREESCALE_SM90A 1
#else
#define FREESCALE_SM90A 0
#endif

namespace freescale::attention::hopper {

__device__ __forceinline__ uint32_t smem_u32(const void* p) {
  return static_cast<uint32_t>(__cvta_generic_to_shared(p));
}

// The first 1024-byte aligned byte of a dynamic shared-memory allocation: 128-byte swizzled
// tiles must start on 1024 bytes (the allocation carries 1024 bytes of slack for it).
__device__ __forceinline__ uint8_t* align_1024(uint8_t* smem) {
  return smem + ((1024 - (smem_u32(smem) & 1023)) & 1023);
}

// ---- mbarrier: arrival counts plus expected transaction bytes (TMA completes the bytes) ----

__device__ __forceinline__ void barrier_init(uint64_t* bar, uint32_t arrivals) {
  asm volatile("mbarrier.init.shared::cta.b64 [%0], %1;\n" ::"r"(smem_u32(bar)), "r"(arrivals));
}

// Makes the initialized barriers visible to the async proxy (TMA) and the other threads.
__device__ __forceinline__ void barrier_init_fence() {
  asm volatile("fence.mbarrier_init.release.cluster;\n" ::: "memory");
}

__device__ __forceinline__ void barrier_arrive_expect_bytes(uint64_t* bar, uint32_t bytes) {
  asm volatile("mbarrier.arrive.expect_tx.shared::cta.b64 _, [%0], %1;\n" ::"r"(smem_u32(bar)),
               "r"(bytes)
               : "memory");
}

__device__ __forceinline__ void barrier_arrive(uint64_t* bar) {
  asm volatile("mbarrier.arrive.shared::cta.b64 _, [%0];\n" ::"r"(smem_u32(bar)) : "memory");
}

// Waits until the phase with the given parity has completed.
__device__ __forceinline__ void barrier_wait(uint64_t* bar, uint32_t parity) {
  const uint32_t addr = smem_u32(bar);
  uint32_t done = 0;
  do {
    asm volatile(
        "{\n.reg .pred p;\n"
        "mbarrier.try_wait.parity.shared::cta.b64 p, [%1], %2;\n"
        "selp.u32 %0, 1, 0, p;\n}\n"
        : "=r"(done)
        : "r"(addr), "r"(parity)
        : "memory");
  } while (!done);
}

// The barriers of a load pipeline, initialized by thread 0 (the caller synchronizes the block
// after): `once` for a load issued once per block, then a ring of `stages` full/empty pairs
// (full: `full_arrivals`, the one with the bytes and any of threads that fill the stage beside
// the loads; empty: `empty_arrivals`, e.g. one per consumer warp).
__device__ __forceinline__ void init_pipeline_barriers(uint64_t* once, uint64_t* full,
                                                       uint64_t* empty, int stages,
                                                       int full_arrivals, int empty_arrivals) {
  if (threadIdx.x != 0) return;
  barrier_init(once, 1);
  for (int s = 0; s < stages; ++s) {
    barrier_init(&full[s], full_arrivals);
    barrier_init(&empty[s], empty_arrivals);
  }
  barrier_init_fence();
}

// ---- TMA ----

// Loads the box at coordinates (c0, c1, c2) (innermost first) of a 3-D tensor map into shared
// memory; the barrier's transaction count drops by the box's bytes when it lands. Rows past the
// tensor's end arrive as zeros.
__device__ __forceinline__ void tma_load_3d(void* dst, const CUtensorMap* map, uint64_t* bar,
                                            int c0, int c1, int c2) {
  asm volatile(
      "cp.async.bulk.tensor.3d.shared::cluster.global.mbarrier::complete_tx::bytes"
      " [%0], [%1, {%3, %4, %5}], [%2];\n" ::"r"(smem_u32(dst)),
      "l"(reinterpret_cast<uint64_t>(map)), "r"(smem_u32(bar)), "r"(c0), "r"(c1), "r"(c2)
      : "memory");
}

__device__ __forceinline__ void tma_prefetch_descriptor(const CUtensorMap* map) {
  asm volatile("prefetch.tensormap [%0];\n" ::"l"(reinterpret_cast<uint64_t>(map)) : "memory");
}

// ---- warpgroup MMA ----

__device__ __forceinline__ void wgmma_fence() {
  asm volatile("wgmma.fence.sync.aligned;\n" ::: "memory");
}
__device__ __forceinline__ void wgmma_commit() {
  asm volatile("wgmma.commit_group.sync.aligned;\n" ::: "memory");
}
template <int kPending>
__device__ __forceinline__ void wgmma_wait() {
  asm volatile("wgmma.wait_group.sync.aligned %0;\n" ::"n"(kPending) : "memory");
}

// Keeps the compiler from moving reads or writes of accumulator registers across the
// asynchronous MMAs that own them.
template <int N>
__device__ __forceinline__ void fence_registers(float (&r)[N]) {
#pragma unroll
  for (int i = 0; i < N; ++i) asm volatile("" : "+f"(r[i])::"memory");
}

// Shared-memory matrix descriptor of a tile in the 128-byte swizzle layout that TMA writes with
// CU_TENSOR_MAP_SWIZZLE_128B (rows of 128 bytes, 8-row atoms of 1024 bytes; the tile base must
// be 1024-byte aligned). Byte offsets are stored >> 4 (PTX ISA, "Matrix Descriptor Format").
//  K-major operand (rows = M or N, 64 elements of K per 128-byte row): leading offset unused
//    (1), stride offset = 1024 (next 8 rows). A step of 16 elements along K adds 32 bytes.
//  MN-major operand (rows = K, 64 elements of M/N per 128-byte row): leading offset = bytes to
//    the next 64-element block of M/N, stride offset = 1024 (next 8 rows of K).
__device__ __forceinline__ uint64_t swizzle128_descriptor(uint32_t smem_addr, uint32_t leading,
                                                          uint32_t stride) {
  uint64_t desc = 0;
  desc |= static_cast<uint64_t>((smem_addr & 0x3FFFF) >> 4);
  desc |= static_cast<uint64_t>((leading & 0x3FFFF) >> 4) << 16;
  desc |= static_cast<uint64_t>((stride & 0x3FFFF) >> 4) << 32;
  desc |= 1ull << 62;  // layout type 1: 128-byte swizzle
  return desc;
}

// Keeps registers that an asynchronous MMA reads (its A fragment) alive, and unchanged, until
// this point: call it after the wgmma_wait that retires the MMA.
template <int N, int M>
__device__ __forceinline__ void keep_registers(const uint32_t (&r)[N][M]) {
#pragma unroll
  for (int i = 0; i < N; ++i) {
#pragma unroll
    for (int j = 0; j < M; ++j) asm volatile("" ::"r"(r[i][j]) : "memory");
  }
}

// ---- bulk reductions (shared -> global, the async proxy's own adds in L2) ----

// Adds the shared-memory box at `src` to the box at coordinates (c0, c1, c2) (innermost first) of
// a 3-D tensor map, elementwise (fp32 adds in L2), as one asynchronous bulk operation of this
// thread's bulk group; `src` is laid out as the map's TMA load would write it (its swizzle).
// Rows past the tensor's end are not written.
__device__ __forceinline__ void tma_reduce_add_3d(const CUtensorMap* map, const void* src, int c0,
                                                  int c1, int c2) {
  asm volatile(
      "cp.reduce.async.bulk.tensor.3d.global.shared::cta.add.tile.bulk_group"
      " [%0, {%2, %3, %4}], [%1];\n" ::"l"(map),
      "r"(smem_u32(src)), "r"(c0), "r"(c1), "r"(c2)
      : "memory");
}

__device__ __forceinline__ void bulk_commit() {
  asm volatile("cp.async.bulk.commit_group;\n" ::: "memory");
}

// Waits until this thread's committed bulk operations have read their shared memory.
__device__ __forceinline__ void bulk_wait_read() {
  asm volatile("cp.async.bulk.wait_group.read 0;\n" ::: "memory");
}

// ---- global reductions ----

// Adds `value` to the float at `address` where `add` holds: a relaxed GPU-scope reduction (RED,
// which the thread issues and does not wait for), as atomicAdd's unused result compiles to, but
// under a PTX predicate instead of a C++ branch, so that the code around it can be scheduled
// across it (ptxas may still branch around the RED itself: in the bias backward's add_to_run it
// does, and interleaves the pairs' other work anyway). (No memory clobber: the kernels never
// read these floats back.)
__device__ __forceinline__ void red_add_if(bool add, float* address, float value) {
  asm volatile(
      "{\n .reg .pred p;\n setp.ne.u32 p, %0, 0;\n @p red.relaxed.gpu.global.add.f32 [%1], "
      "%2;\n}\n" ::"r"(static_cast<uint32_t>(add)),
      "l"(address), "f"(value));
}

// ---- ordering between threads and the async proxy ----

// Makes this thread's ordinary shared-memory writes visible to later asynchronous-proxy reads
// (wgmma operands, TMA stores); pair it with a barrier between the writers and the issuer.
__device__ __forceinline__ void fence_shared_to_async() {
  asm volatile("fence.proxy.async.shared::cta;\n" ::: "memory");
}

// A barrier among `kThreads` threads (whole warps) that use the same id; id 0 is __syncthreads.
template <int kThreads>
__device__ __forceinline__ void named_barrier_sync(int id) {
  asm volatile("bar.sync %0, %1;\n" ::"r"(id), "n"(kThreads) : "memory");
}

// named_barrier_sync that also returns whether `pred` held for any of the kThreads threads.
template <int kThreads>
__device__ __forceinline__ bool named_barrier_sync_any(int id, bool pred) {
  uint32_t any;
  asm volatile(
      "{\n .reg .pred p, q;\n setp.ne.u32 p, %1, 0;\n bar.red.or.pred q, %2, %3, p;\n"
      " selp.u32 %0, 1, 0, q;\n}\n"
      : "=r"(any)
      : "r"(static_cast<uint32_t>(pred)), "r"(id), "n"(kThreads)
      : "memory");
  return any != 0;
}

// Counts this warp's threads towards barrier `id` without waiting for it.
template <int kThreads>
__device__ __forceinline__ void named_barrier_arrive(int id) {
  asm volatile("bar.arrive %0, %1;\n" ::"r"(id), "n"(kThreads) : "memory");
}

// ---- warp specialization ----

template <int kRegs>
__device__ __forceinline__ void registers_increase() {
  asm volatile("setmaxnreg.inc.sync.aligned.u32 %0;\n" ::"n"(kRegs));
}
template <int kRegs>
__device__ __forceinline__ void registers_decrease() {
  asm volatile("setmaxnreg.dec.sync.aligned.u32 %0;\n" ::"n"(kRegs));
}

// sigmoid(x) = (1 + tanh(x / 2)) / 2: one MUFU operation (tanh.approx, relative error ~2^-11)
// instead of an exponential and a reciprocal; P is rounded to 16 bits right after.
__device__ __forceinline__ float tanh_approx(float x) {
  float y;
  asm("tanh.approx.f32 %0, %1;\n" : "=f"(y) : "f"(x));
  return y;
}

}  // namespace freescale::attention::hopper
