// Host-side planning of the SM-free communication runtime (DESIGN §6), torch-free so that CI
// tests it without GPUs: where every byte of an all-to-all-v goes, which copies a rank issues
// and in which order, and how they are cut into pieces (the runtime issues exactly these).
#pragma once

#include <cstddef>
#include <cstdint>
#include <vector>

namespace freescale::comm {

// `bytes` bytes from rank `src`'s send buffer at src_offset to rank `dst`'s receive buffer at
// dst_offset.
struct Copy {
  int32_t src = 0;
  int32_t dst = 0;
  int64_t src_offset = 0;
  int64_t dst_offset = 0;
  int64_t bytes = 0;
};

// An all-to-all-v seen from every rank: splits[s * world + d] = bytes rank s sends to rank d.
// Rank s's send buffer holds its chunks for d = 0, 1, ... back to back; rank d's receive buffer
// holds the chunks from s = 0, 1, ... back to back (torch's all_to_all_single layout).
class AllToAllLayout {
 public:
  // Throws std::invalid_argument unless world >= 1, splits has world * world entries, all >= 0.
  AllToAllLayout(int32_t world, std::vector<int64_t> splits);

  int32_t world() const { return world_; }
  int64_t split(int32_t src, int32_t dst) const { return splits_[index(src, dst)]; }
  // Offset of src's chunk for dst in src's send buffer.
  int64_t send_offset(int32_t src, int32_t dst) const { return send_offsets_[index(src, dst)]; }
  // Offset of src's chunk in dst's receive buffer.
  int64_t recv_offset(int32_t dst, int32_t src) const { return recv_offsets_[index(dst, src)]; }
  int64_t send_total(int32_t rank) const;
  int64_t recv_total(int32_t rank) const;

 private:
  size_t index(int32_t a, int32_t b) const;

  int32_t world_;
  std::vector<int64_t> splits_;
  std::vector<int64_t> send_offsets_;  // [src * world + dst]
  std::vector<int64_t> recv_offsets_;  // [dst * world + src]
};

// How a rank's chunks are cut: pieces of at most max_piece bytes (0: whole chunks), every piece
// but a chunk's last a multiple of `align` bytes (element or vector size; >= 1).
struct Cutting {
  int64_t max_piece = 0;
  int64_t align = 1;
};

// The copies `rank` issues to pull its receive buffer from the peers' send buffers: peers in
// the order rank+1, rank+2, ..., rank-1 (so that the ranks start on different peers and spread
// the load over the links), then its own chunk (a local copy, last); empty chunks skipped.
std::vector<Copy> pull_copies(const AllToAllLayout& layout, int32_t rank, Cutting cutting);

// The same for pushing: `rank` writes its chunks into the peers' receive buffers.
std::vector<Copy> push_copies(const AllToAllLayout& layout, int32_t rank, Cutting cutting);

// `copy` cut into pieces by `cutting` (in order). Throws std::invalid_argument on align < 1 or
// max_piece < 0.
std::vector<Copy> cut(const Copy& copy, Cutting cutting);

}  // namespace freescale::comm
