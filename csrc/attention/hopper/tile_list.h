// The non-empty (sequence, head, tile) work items of a jagged batch, for the sm_90a kernels.
//
// A grid over every (sequence, tile) of the longest possible sequence launches mostly empty
// blocks on long-tailed batches; the lengths live on the GPU, so a small kernel lists the items
// that exist instead, and the attention kernel's work item k is entry k.
//
// Order: sequences longest first; inside a sequence head by head, and inside a (sequence, head)
// its tiles heaviest first (the work a causal mask gives them). The items running at one time
// then share their (sequence, head)'s K and V (forward) or Q and dO (backward) in L2: ordered by
// weight across sequences and heads instead, the blocks in flight each streamed a different
// (sequence, head) from HBM, and the forward was memory bound at long n (DESIGN §4).
#pragma once

#include <cuda_runtime_api.h>

#include <cstdint>

#include "attention/hstu_params.h"

namespace freescale::attention::hopper {

// Tiles per sequence the list can order (its tile-count histogram lives in shared memory).
constexpr int kMaxTileLevels = 4096;

// Work items a launch can take: the kernels index them with int32 (a persistent block's index
// runs up to the count plus the grid).
constexpr int64_t kMaxWorkItems = int64_t{1} << 30;

// int32 layout: [0] the count, [1] the persistent forward's claim counter (zeroed with the
// list), then entries (sequence, head * kMaxTileLevels + tile).
constexpr int kTileListHeader = 2;
constexpr int kTileListClaim = 1;

// Tiles of the longest sequence the call allows, and (sequence, tile) pairs the batch's tokens
// can make: sum of ceil(len / tile) <= ceil(T / tile) + B.
inline int64_t max_sequence_tiles(const HstuParams& p, int tile) {
  return (p.max_seq_len + tile - 1) / tile;
}
inline int64_t tiles_by_tokens(const HstuParams& p, int tile) {
  return (p.total_len + tile - 1) / tile + p.batch_size;
}

// (sequence, tile) pairs a batch can need: those its tokens can make, and no more than
// B * max_sequence_tiles (the grid the list replaces); the list holds them for every head.
inline int64_t tile_list_capacity(const HstuParams& p, int tile) {
  const int64_t by_tokens = tiles_by_tokens(p, tile);
  const int64_t by_grid = static_cast<int64_t>(p.batch_size) * max_sequence_tiles(p, tile);
  return (by_tokens < by_grid ? by_tokens : by_grid) * p.num_heads;
}

// Whether the kernels can use a list for this call (else a grid over every possible tile).
inline bool tile_list_applies(const HstuParams& p, int tile) {
  // (Entries pack head * kMaxTileLevels + tile, and the count, into int32.)
  return max_sequence_tiles(p, tile) <= kMaxTileLevels &&
         p.num_heads < (int64_t{1} << 31) / kMaxTileLevels &&
         tile_list_capacity(p, tile) < kMaxWorkItems;
}

// Whether a list is worth its builder's launch (about 8 us of one block on an H100): not where
// every sequence has at most two tiles and the tokens could fill every item of the full grid
// (ML-1M's dense 200-item batches). There the grid launches no more blocks than the list could
// hold, and the heaviest-first order has at most two tiles per (sequence, head) to sort.
// (Skipping it there: ML-1M forward 1.20-1.23x, backward 1.05-1.12x on an H100,
// docs/hstu_sm90/15.md.)
inline bool tile_list_pays(const HstuParams& p, int tile) {
  const int64_t tiles = max_sequence_tiles(p, tile);
  return tiles > 2 || tiles_by_tokens(p, tile) < p.batch_size * tiles;
}

// Workspace bytes of the call's tile list: 0 where it has none (the list does not apply or does
// not pay).
inline int64_t tile_list_workspace_bytes(const HstuParams& p, int tile) {
  if (!tile_list_applies(p, tile) || !tile_list_pays(p, tile)) return 0;
  return 4 * (kTileListHeader + 2 * tile_list_capacity(p, tile));
}

// Writes into p.tile_list every (sequence b, head h, tile m) with m * tile < len_b (tiles capped
// at max_seq_len) in the order above: row tiles (`rows`: the forward) from the last, which sees
// the most column tiles under a causal mask, key tiles (the backward) from the first, which the
// most row tiles see. Entries past tile_list_capacity (only overlapping, i.e. malformed, offsets
// reach it) are dropped.
cudaError_t build_tile_list(const HstuParams& p, int tile, bool rows, cudaStream_t stream);

#if defined(__CUDACC__)
// Work item `item`'s (sequence, tile, head): from the list when there is one, else from the
// full grid of `tiles` (= ceil(max_seq_len / tile)) per (sequence, head), in the list's order
// without the length sort (`rows` as in build_tile_list). False past the last item; a true
// item of the full grid may lie past its sequence's end (the caller skips it).
__device__ __forceinline__ bool work_item(const HstuParams& p, int64_t item, int tiles, bool rows,
                                          int* batch, int* tile, int* head) {
  if (p.tile_list != nullptr) {
    if (item >= p.tile_list[0]) return false;
    const int2 entry = reinterpret_cast<const int2*>(p.tile_list + kTileListHeader)[item];
    *batch = entry.x;
    *head = entry.y / kMaxTileLevels;
    *tile = entry.y % kMaxTileLevels;
    return true;
  }
  const int64_t per_sequence = static_cast<int64_t>(tiles) * p.num_heads;
  if (item >= per_sequence * p.batch_size) return false;
  *batch = static_cast<int>(item / per_sequence);
  const int rest = static_cast<int>(item % per_sequence);
  *head = rest / tiles;
  *tile = rows ? tiles - 1 - rest % tiles : rest % tiles;
  return true;
}
#endif

// Work items of the full grid (every tile of max_seq_len of every sequence and head).
inline int64_t full_grid_items(const HstuParams& p, int tile) {
  return static_cast<int64_t>(p.batch_size) * p.num_heads * max_sequence_tiles(p, tile);
}

// Work items to launch for: the list's capacity, or the full grid's size.
inline int64_t work_items(const HstuParams& p, int tile) {
  return p.tile_list != nullptr ? tile_list_capacity(p, tile) : full_grid_items(p, tile);
}

// Whether a launch's work items fit kMaxWorkItems, with the list where it applies (without it,
// i.e. FREESCALE_HSTU_TILE_LIST=0, a launch past the limit fails instead).
inline bool work_items_fit(const HstuParams& p, int tile) {
  return tile_list_applies(p, tile) || full_grid_items(p, tile) < kMaxWorkItems;
}

// A persistent grid for `items` work items: one block per SM (the sm_90a kernels fill an SM
// each), or fewer when there are fewer items; 0 when the device cannot be queried.
inline unsigned persistent_grid(int64_t items) {
  int device = 0;
  int sms = 0;
  if (cudaGetDevice(&device) != cudaSuccess ||
      cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, device) != cudaSuccess) {
    return 0;
  }
  return static_cast<unsigned>(items < sms ? items : sms);
}

}  // namespace freescale::attention::hopper
