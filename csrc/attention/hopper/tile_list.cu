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

// One block. Level L (1..max_tiles) holds one entry of every sequence with at least L tiles:
// tile L - 1 for rows (its row tile sees L column tiles under a causal mask), tile tiles_b - L
// for keys (L row tiles see it). Levels go out from the highest, so the heaviest tiles start
// first; inside a level the order is that of the atomics.
__global__ void __launch_bounds__(kThreads)
    build_tile_list_kernel(const HstuParams p, int tile, int max_tiles, bool rows, int* list,
                           int64_t capacity) {
  __shared__ int level_start[kMaxTileLevels + 2];  // histogram, then start, then cursor
  for (int l = threadIdx.x; l <= max_tiles + 1; l += kThreads) level_start[l] = 0;
  __syncthreads();
  for (int b = threadIdx.x; b < p.batch_size; b += kThreads) {
    atomicAdd(&level_start[sequence_tiles(p, b, tile, max_tiles)], 1);
  }
  __syncthreads();
  if (threadIdx.x == 0) {
    // level_start[t] counts sequences with exactly t tiles; level L holds those with >= L.
    // Entries of levels above L come first: start(L) = sum over L' > L of count(L'). Starts
    // past the capacity (malformed offsets) saturate there: their entries are dropped.
    int at_least = 0;  // sequences with >= L tiles
    int64_t start = 0;
    for (int l = max_tiles; l >= 1; --l) {
      at_least += level_start[l];
      level_start[l] = static_cast<int>(start < capacity ? start : capacity);
      start += at_least;
    }
    list[0] = static_cast<int>(start < capacity ? start : capacity);  // the count
  }
  __syncthreads();
  int2* entries = reinterpret_cast<int2*>(list + kTileListHeader);
  for (int b = threadIdx.x; b < p.batch_size; b += kThreads) {
    const int tiles = sequence_tiles(p, b, tile, max_tiles);
    for (int l = 1; l <= tiles; ++l) {
      const int at = atomicAdd(&level_start[l], 1);
      if (at < capacity) entries[at] = make_int2(b, rows ? l - 1 : tiles - l);
    }
  }
}

}  // namespace

cudaError_t build_tile_list(const HstuParams& p, int tile, bool rows, cudaStream_t stream) {
  const int max_tiles = (p.max_seq_len + tile - 1) / tile;
  if (max_tiles > kMaxTileLevels || p.tile_list == nullptr) return cudaErrorInvalidValue;
  build_tile_list_kernel<<<1, kThreads, 0, stream>>>(p, tile, max_tiles, rows, p.tile_list,
                                                     tile_list_capacity(p, tile));
  return cudaGetLastError();
}

}  // namespace freescale::attention::hopper
