#include "attention/hopper/tile_list.h"
#include "attention/hstu_sequence.cuh"

namespace freescale::attention::hopper {
namespace {

constexpr int kThreads = 1024;
constexpr int kWarps = kThreads / 32;

__device__ __forceinline__ int sequence_tiles(const HstuParams& p, int b, int tile, int max_tiles) {
  int64_t begin;
  int len;
  sequence_span(p, b, &begin, &len);
  const int tiles = (len + tile - 1) / tile;
  return tiles < max_tiles ? tiles : max_tiles;
}

// One block. A counting sort of the sequences by tile count, most first: a sequence with t tiles
// takes t * heads consecutive entries, claimed with one atomic on its count's cursor (sequences
// of equal count are placed in the atomics' order). A warp then writes each of its lanes'
// sequences' entries together.
__global__ void __launch_bounds__(kThreads)
    build_tile_list_kernel(const HstuParams p, int tile, int max_tiles, bool rows, int* list,
                           int64_t capacity) {
  // Per tile count: the number of sequences, then the start of their entries, then a cursor.
  __shared__ long long cursor[kMaxTileLevels + 1];
  for (int l = threadIdx.x; l <= max_tiles; l += kThreads) cursor[l] = 0;
  __syncthreads();
  for (int b = threadIdx.x; b < p.batch_size; b += kThreads) {
    atomicAdd(reinterpret_cast<unsigned long long*>(&cursor[sequence_tiles(p, b, tile, max_tiles)]),
              1ull);
  }
  __syncthreads();
  const int64_t heads = p.num_heads;
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
  const int warp = threadIdx.x / 32;
  const int lane = threadIdx.x % 32;
  for (int b0 = warp * 32; b0 < p.batch_size; b0 += kWarps * 32) {
    const int b = b0 + lane;
    const int tiles = b < p.batch_size ? sequence_tiles(p, b, tile, max_tiles) : 0;
    long long at = 0;
    if (tiles > 0) {
      at = static_cast<long long>(atomicAdd(reinterpret_cast<unsigned long long*>(&cursor[tiles]),
                                            static_cast<unsigned long long>(tiles * heads)));
    }
    for (int src = 0; src < 32; ++src) {
      const int t = __shfl_sync(0xffffffffu, tiles, src);
      const long long first = __shfl_sync(0xffffffffu, at, src);
      for (int64_t x = lane; x < t * heads; x += 32) {
        if (first + x >= capacity) break;
        const int h = static_cast<int>(x / t);
        const int k = static_cast<int>(x % t);
        entries[first + x] = make_int2(b0 + src, h * kMaxTileLevels + (rows ? t - 1 - k : k));
      }
    }
  }
}

}  // namespace

cudaError_t build_tile_list(const HstuParams& p, int tile, bool rows, cudaStream_t stream) {
  const int max_tiles = (p.max_seq_len + tile - 1) / tile;
  if (!tile_list_applies(p, tile) || p.tile_list == nullptr) return cudaErrorInvalidValue;
  build_tile_list_kernel<<<1, kThreads, 0, stream>>>(p, tile, max_tiles, rows, p.tile_list,
                                                     tile_list_capacity(p, tile));
  return cudaGetLastError();
}

}  // namespace freescale::attention::hopper
