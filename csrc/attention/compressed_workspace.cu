// One block per sequence walks its rows 256 at a time: a block scan compacts the token
// positions (stored at the sequence's own offset, so no prefix over sequences is needed) and
// shared atomics reduce each 64-row tile's region ranges.
#include <cub/block/block_scan.cuh>

#include "attention/compressed_common.cuh"
#include "attention/compressed_workspace.cuh"

namespace freescale::attention::compressed {
namespace {

constexpr int kScanThreads = 256;
constexpr int kTilesPerChunk = kScanThreads / kTile;

__global__ void __launch_bounds__(kScanThreads) workspace_kernel(const CompressedParams p) {
  using BlockScan = cub::BlockScan<int, kScanThreads>;
  __shared__ typename BlockScan::TempStorage scan;
  __shared__ int ranges[kTilesPerChunk][4];
  __shared__ int tokens_before;
  const int b = blockIdx.x;
  const SeqView seq = load_seq(p, b, /*with_tokens=*/false);
  if (threadIdx.x == 0) tokens_before = 0;
  for (int chunk0 = 0; chunk0 < seq.len; chunk0 += kScanThreads) {
    if (threadIdx.x < kTilesPerChunk) {
      ranges[threadIdx.x][0] = INT_MAX;
      ranges[threadIdx.x][1] = INT_MIN;
      ranges[threadIdx.x][2] = INT_MAX;
      ranges[threadIdx.x][3] = INT_MIN;
    }
    __syncthreads();
    const int pos = chunk0 + static_cast<int>(threadIdx.x);
    const bool valid = pos < seq.len;
    const bool token = valid && p.is_token[seq.begin + pos];
    if (valid) {
      const int region = p.region[seq.begin + pos];
      int* r = ranges[threadIdx.x / kTile];
      atomicMin(&r[2], region);
      atomicMax(&r[3], region);
      if (!token) {
        atomicMin(&r[0], region);
        atomicMax(&r[1], region);
      }
    }
    int rank = 0, total = 0;
    BlockScan(scan).ExclusiveSum(token ? 1 : 0, rank, total);
    if (token) p.ws.token_pos[seq.begin + tokens_before + rank] = pos;
    __syncthreads();  // ranges complete, tokens_before read by every thread
    const int tile = chunk0 / kTile + static_cast<int>(threadIdx.x);
    if (threadIdx.x < kTilesPerChunk && tile < seq.tiles) {
      int4 out;
      out.x = ranges[threadIdx.x][0];
      out.y = ranges[threadIdx.x][1];
      out.z = ranges[threadIdx.x][2];
      out.w = ranges[threadIdx.x][3];
      reinterpret_cast<int4*>(p.ws.tile_ranges)[b * p.tiles_per_seq + tile] = out;
    }
    if (threadIdx.x == 0) tokens_before += total;
    __syncthreads();  // ranges and the scan storage are reused by the next chunk
  }
  if (threadIdx.x == 0) p.ws.token_count[b] = tokens_before;
}

}  // namespace

cudaError_t build_workspace(const CompressedParams& p, cudaStream_t stream) {
  if (p.batch_size == 0) return cudaSuccess;
  workspace_kernel<<<p.batch_size, kScanThreads, 0, stream>>>(p);
  return cudaGetLastError();
}

}  // namespace freescale::attention::compressed
