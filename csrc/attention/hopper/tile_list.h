// The non-empty tiles of a jagged batch, heaviest first, for the sm_90a kernels' grids.
//
// A grid over every (sequence, tile) of the longest possible sequence launches mostly empty
// blocks on long-tailed batches (a block per 128 rows of max_seq_len for every sequence); the
// lengths live on the GPU, so a small kernel lists the tiles that exist instead, and the
// attention kernel's block k takes entry k (blocks past the count exit at once).
#pragma once

#include <cuda_runtime_api.h>

#include <cstdint>

#include "attention/hstu_params.h"

namespace freescale::attention::hopper {

// Tiles per sequence the list can order (its levels live in shared memory).
constexpr int kMaxTileLevels = 4096;

// int32 layout: [0] the count, [1] unused (keeps the pairs 8-byte aligned), then
// (sequence, tile) pairs.
constexpr int kTileListHeader = 2;

// Entries a batch can need: sum of ceil(len / tile) <= ceil(T / tile) + B, and no more than
// B * ceil(max_seq_len / tile) (the grid the list replaces).
inline int64_t tile_list_capacity(const HstuParams& p, int tile) {
  const int64_t by_tokens = (p.total_len + tile - 1) / tile + p.batch_size;
  const int64_t by_grid = static_cast<int64_t>(p.batch_size) * ((p.max_seq_len + tile - 1) / tile);
  return by_tokens < by_grid ? by_tokens : by_grid;
}

// Workspace bytes of a tile list for this call (where tile_list_applies).
inline int64_t tile_list_bytes(const HstuParams& p, int tile) {
  return 4 * (kTileListHeader + 2 * tile_list_capacity(p, tile));
}

// Whether the kernels use a list for this call (else a grid over every possible tile).
inline bool tile_list_applies(const HstuParams& p, int tile) {
  return (p.max_seq_len + tile - 1) / tile <= kMaxTileLevels;
}

// Writes into p.tile_list every (sequence b, tile m) with m * tile < len_b (tiles capped at
// max_seq_len), ordered by the work a causal mask gives it, most first: row tiles (`rows`: the
// forward) by m, key tiles (the backward) by the number of row tiles at or after them. Entries
// past tile_list_capacity (only overlapping, i.e. malformed, offsets reach it) are dropped.
cudaError_t build_tile_list(const HstuParams& p, int tile, bool rows, cudaStream_t stream);

// The grid of a listed launch: one block per (entry, head), heads fastest, so that every
// head's heaviest tiles start before any head's light ones.
inline unsigned tile_list_grid(const HstuParams& p, int tile) {
  return static_cast<unsigned>(tile_list_capacity(p, tile) * p.num_heads);
}

#if defined(__CUDACC__)
// This block's (sequence, tile, head) in a listed launch; false past the list's end.
__device__ __forceinline__ bool listed_tile(const HstuParams& p, int* batch, int* tile, int* head) {
  const int entry = static_cast<int>(blockIdx.x / static_cast<unsigned>(p.num_heads));
  if (entry >= p.tile_list[0]) return false;
  const int2 pair = reinterpret_cast<const int2*>(p.tile_list + kTileListHeader)[entry];
  *batch = pair.x;
  *tile = pair.y;
  *head = static_cast<int>(blockIdx.x % static_cast<unsigned>(p.num_heads));
  return true;
}
#endif

}  // namespace freescale::attention::hopper
