#include "attention/hopper/tile_list.h"
#include "attention/hstu_sequence.cuh"

namespace freescale::attention::hopper {
namespace {

constexpr int kThreads = 1024;

__device__ __forceinline__ int sequence_tiles(const HstuParams& p, int b, int tile, int max_tiles) {
  int64_t begin;
  int len;
  sequence_span(p, b, &begin, &len);
  const int tiles = (len + tile - 1) / tile;
  return tiles < max_tiles ? tiles : max_tiles;
}

// Adds `amount` to cursor[level] for each lane of the warp with level > 0 and returns the lane's
// old value, lanes of one level in lane order. One atomic per level present in the warp: sm_90
// has no 64-bit shared atomic add (it compiles to a compare-and-swap spin), and 128 sequences of
// one level spinning on one cursor took the builder 22 us of an ML-1M call on an H200.
__device__ __forceinline__ long long warp_claim(long long* cursor, int level, long long amount,
                                                int lane) {
  const unsigned active = __ballot_sync(0xffffffffu, level > 0);
  if (level <= 0) return 0;
  const unsigned peers = __match_any_sync(active, level);
  const int leader = __ffs(peers) - 1;
  unsigned long long base = 0;
  if (lane == leader) {
    base = atomicAdd(reinterpret_cast<unsigned long long*>(&cursor[level]),
                     static_cast<unsigned long long>(__popc(peers) * amount));
  }
  base = __shfl_sync(peers, base, leader);
  return static_cast<long long>(base) + __popc(peers & ((1u << lane) - 1u)) * amount;
}

// One block. A counting sort of the sequences by tile count, most first: a sequence with t tiles
// takes t * heads consecutive entries, claimed per warp and level on the level's cursor
// (sequences of equal count are placed in the claims' order). A warp then writes each of its
// lanes' sequences' entries together.
__global__ void __launch_bounds__(kThreads)
    build_tile_list_kernel(const HstuParams p, int tile, int max_tiles, bool rows, int* list,
                           int64_t capacity) {
  // Per tile count: the number of sequences, then the start of their entries, then a cursor.
  __shared__ long long cursor[kMaxTileLevels + 1];
  for (int l = threadIdx.x; l <= max_tiles; l += kThreads) cursor[l] = 0;
  __syncthreads();
  const int warp = threadIdx.x / 32;
  const int lane = threadIdx.x % 32;
  // (Loops step whole warps, so that every lane of a warp takes part in its claims.)
  for (int b0 = warp * 32; b0 < p.batch_size; b0 += kThreads) {
    const int b = b0 + lane;
    warp_claim(cursor, b < p.batch_size ? sequence_tiles(p, b, tile, max_tiles) : 0, 1, lane);
  }
  __syncthreads();
  // (tiles * heads fits an int: tile_list_applies bounds heads by 2^31 / kMaxTileLevels.)
  const int heads = static_cast<int>(p.num_heads);
  if (threadIdx.x == 0) {
    int64_t start = 0;
    for (int l = max_tiles; l >= 1; --l) {
      const int64_t sequences = cursor[l];
      cursor[l] = start;
      start += sequences * l * heads;
    }
    list[0] = static_cast<int>(start < capacity ? start : capacity);  // the count
    list[kTileListClaim] = 0;
  }
  __syncthreads();
  int2* entries = reinterpret_cast<int2*>(list + kTileListHeader);
  for (int b0 = warp * 32; b0 < p.batch_size; b0 += kThreads) {
    const int b = b0 + lane;
    const int tiles = b < p.batch_size ? sequence_tiles(p, b, tile, max_tiles) : 0;
    const long long at = warp_claim(cursor, tiles, static_cast<long long>(tiles) * heads, lane);
    for (int src = 0; src < 32; ++src) {
      const int t = __shfl_sync(0xffffffffu, tiles, src);
      const long long first = __shfl_sync(0xffffffffu, at, src);
      for (int x = lane; x < t * heads; x += 32) {
        if (first + x >= capacity) break;
        const int h = x / t;
        const int k = x - h * t;
        entries[first + x] = make_int2(b0 + src, h * kMaxTileLevels + (rows ? t - 1 - k : k));
      }
    }
  }
}

}  // namespace

cudaError_t build_tile_list(const HstuParams& p, int tile, bool rows, cudaStream_t stream) {
  const int max_tiles = static_cast<int>(max_sequence_tiles(p, tile));
  if (!tile_list_applies(p, tile) || p.tile_list == nullptr) return cudaErrorInvalidValue;
  build_tile_list_kernel<<<1, kThreads, 0, stream>>>(p, tile, max_tiles, rows, p.tile_list,
                                                     tile_list_capacity(p, tile));
  return cudaGetLastError();
}

}  // namespace freescale::attention::hopper
