#include "comm/transfer_plan.h"

#include <algorithm>
#include <stdexcept>
#include <string>

namespace freescale::comm {

AllToAllLayout::AllToAllLayout(int32_t world, std::vector<int64_t> splits)
    : world_(world), splits_(std::move(splits)) {
  if (world < 1) throw std::invalid_argument("all-to-all: world must be >= 1");
  const size_t n = static_cast<size_t>(world) * static_cast<size_t>(world);
  if (splits_.size() != n) {
    throw std::invalid_argument(
        "all-to-all: splits must have world * world = " + std::to_string(n) + " entries, got " +
        std::to_string(splits_.size()));
  }
  for (const int64_t s : splits_) {
    if (s < 0) throw std::invalid_argument("all-to-all: split sizes must be >= 0");
  }
  send_offsets_.assign(n, 0);
  recv_offsets_.assign(n, 0);
  for (int32_t s = 0; s < world; ++s) {
    int64_t offset = 0;
    for (int32_t d = 0; d < world; ++d) {
      send_offsets_[index(s, d)] = offset;
      offset += split(s, d);
    }
  }
  for (int32_t d = 0; d < world; ++d) {
    int64_t offset = 0;
    for (int32_t s = 0; s < world; ++s) {
      recv_offsets_[index(d, s)] = offset;
      offset += split(s, d);
    }
  }
}

size_t AllToAllLayout::index(int32_t a, int32_t b) const {
  if (a < 0 || a >= world_ || b < 0 || b >= world_) {
    throw std::out_of_range("all-to-all: rank out of range");
  }
  return static_cast<size_t>(a) * static_cast<size_t>(world_) + static_cast<size_t>(b);
}

int64_t AllToAllLayout::send_total(int32_t rank) const {
  int64_t total = 0;
  for (int32_t d = 0; d < world_; ++d) total += split(rank, d);
  return total;
}

int64_t AllToAllLayout::recv_total(int32_t rank) const {
  int64_t total = 0;
  for (int32_t s = 0; s < world_; ++s) total += split(s, rank);
  return total;
}

std::vector<Copy> cut(const Copy& copy, Cutting cutting) {
  if (cutting.align < 1 || cutting.max_piece < 0) {
    throw std::invalid_argument("cutting: need align >= 1 and max_piece >= 0");
  }
  if (copy.bytes <= 0) return {};
  int64_t piece = copy.bytes;
  if (cutting.max_piece > 0 && cutting.max_piece < copy.bytes) {
    // Round down to the alignment, but never below one aligned unit.
    piece = std::max(cutting.align, cutting.max_piece / cutting.align * cutting.align);
  }
  std::vector<Copy> pieces;
  for (int64_t done = 0; done < copy.bytes; done += piece) {
    Copy p = copy;
    p.src_offset += done;
    p.dst_offset += done;
    p.bytes = std::min(piece, copy.bytes - done);
    pieces.push_back(p);
  }
  return pieces;
}

namespace {

std::vector<Copy> rank_copies(const AllToAllLayout& layout, int32_t rank, Cutting cutting,
                              bool pull) {
  const int32_t world = layout.world();
  if (rank < 0 || rank >= world) throw std::invalid_argument("all-to-all: rank out of range");
  std::vector<Copy> copies;
  for (int32_t step = 1; step <= world; ++step) {  // step == world: the rank itself, last
    const int32_t peer = (rank + step) % world;
    Copy c;
    c.src = pull ? peer : rank;
    c.dst = pull ? rank : peer;
    c.bytes = layout.split(c.src, c.dst);
    c.src_offset = layout.send_offset(c.src, c.dst);
    c.dst_offset = layout.recv_offset(c.dst, c.src);
    for (const Copy& piece : cut(c, cutting)) copies.push_back(piece);
  }
  return copies;
}

}  // namespace

std::vector<Copy> pull_copies(const AllToAllLayout& layout, int32_t rank, Cutting cutting) {
  return rank_copies(layout, rank, cutting, /*pull=*/true);
}

std::vector<Copy> push_copies(const AllToAllLayout& layout, int32_t rank, Cutting cutting) {
  return rank_copies(layout, rank, cutting, /*pull=*/false);
}

}  // namespace freescale::comm
