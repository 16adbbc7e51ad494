// Capacity-constrained longest-processing-time-first partitioning (DESIGN §8).
//
// Splits n samples with costs c_i into p parts holding exactly n/p samples each (the first
// n % p parts hold one more), aiming at the smallest largest part cost. Deterministic: the same
// costs give the same partition on every rank.
// Torch-free: plain arrays in, plain arrays out.
#pragma once

#include <cstdint>
#include <vector>

namespace freescale::balance {

struct Partition {
  std::vector<int32_t> part_of;  // [n] part of each sample
  std::vector<double> loads;     // [p] summed cost of each part
  std::vector<int64_t> counts;   // [p] samples in each part
  int64_t swaps = 0;             // improving swaps made by the refinement
};

// Greedy capacity-LPT, then up to `refine_rounds` rounds of pairwise swaps between the most
// and least loaded parts (each swap keeps the counts and lowers the larger of the two loads).
// Throws std::invalid_argument on p < 1 or a negative / non-finite cost.
Partition capacity_lpt(const double* costs, int64_t n, int32_t num_parts, int32_t refine_rounds);

// Sample indices grouped by part (part 0's first), ascending within each part: a counting
// sort of part_of, so callers need no O(n log n) argsort.
std::vector<int64_t> samples_by_part(const Partition& partition);

}  // namespace freescale::balance
