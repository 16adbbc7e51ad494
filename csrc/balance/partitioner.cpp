#include "balance/partitioner.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <numeric>
#include <stdexcept>
#include <string>
#include <utility>

namespace freescale::balance {
namespace {

void check_inputs(const double* costs, int64_t n, int32_t num_parts) {
  if (n > int64_t{0xffffffff}) {  // order_by_decreasing_cost packs indices into 32 bits
    throw std::invalid_argument("at most 2^32-1 samples, got " + std::to_string(n));
  }
  if (num_parts < 1) {
    throw std::invalid_argument("num_parts must be >= 1, got " + std::to_string(num_parts));
  }
  for (int64_t i = 0; i < n; ++i) {
    if (!(costs[i] >= 0.0) || !std::isfinite(costs[i])) {
      throw std::invalid_argument("cost of sample " + std::to_string(i) +
                                  " must be finite and >= 0, got " + std::to_string(costs[i]));
    }
  }
}

// Sample indices by decreasing cost, ties by increasing index: a stable LSD radix sort on the
// top 32 bits of each cost's IEEE pattern, which orders non-negative doubles to about 6
// significant digits. Exact order among near-equal costs does not matter to LPT; speed does:
// it keeps a 1e5-sample partition within a few milliseconds.
std::vector<int64_t> order_by_decreasing_cost(const double* costs, int64_t n) {
  // One 8-byte word per sample: the 32-bit key above the 32-bit index, so each pass moves one
  // array. Three 11-bit digits of the key; 2048-entry histograms stay in L1, built in one pass.
  constexpr int kDigitBits = 11;
  constexpr int kPasses = 3;
  constexpr uint64_t kMask = (uint64_t{1} << kDigitBits) - 1;
  std::vector<uint64_t> words(n), scratch(n);
  std::vector<int64_t> count(kPasses << kDigitBits, 0);
  for (int64_t i = 0; i < n; ++i) {
    uint64_t bits = 0;
    const double c = costs[i] == 0.0 ? 0.0 : costs[i];  // -0.0 sorts as 0.0
    std::memcpy(&bits, &c, sizeof(bits));
    const uint64_t key = ~bits >> 32;  // ascending key = descending cost
    words[i] = (key << 32) | static_cast<uint64_t>(i);
    for (int d = 0; d < kPasses; ++d)
      ++count[(d << kDigitBits) + ((key >> (d * kDigitBits)) & kMask)];
  }
  for (int d = 0; d < kPasses; ++d) {
    const int shift = 32 + d * kDigitBits;
    int64_t* digit_count = count.data() + (d << kDigitBits);
    if (digit_count[(words[0] >> shift) & kMask] == n) continue;  // one digit value: no-op
    int64_t sum = 0;
    for (uint64_t b = 0; b <= kMask; ++b) sum += std::exchange(digit_count[b], sum);
    for (int64_t i = 0; i < n; ++i) scratch[digit_count[(words[i] >> shift) & kMask]++] = words[i];
    words.swap(scratch);
  }
  std::vector<int64_t> order(n);
  for (int64_t i = 0; i < n; ++i) order[i] = static_cast<int64_t>(words[i] & 0xffffffffu);
  return order;
}

// Open parts (those below capacity) in a binary min-heap on load. The heap procedure itself
// is deterministic, so equal inputs give equal partitions on every rank without tie-breaks.
// "Replace top" uses Floyd's bottom-up sift: a part that just took a sample is usually heavy,
// so walking the hole to a leaf with one branch-light comparison per level and then sifting up
// a step or two beats the textbook sift-down (and its mispredicted branches) at 1e5 samples.
class OpenParts {
 public:
  explicit OpenParts(size_t capacity) { heap_.reserve(capacity); }
  void push(double load, int32_t part) {
    heap_.push_back({load, part});
    sift_up(heap_.size() - 1);
  }
  int32_t top() const { return heap_[0].part; }
  void replace_top(double load) {
    const Entry moved{load, heap_[0].part};
    const size_t n = heap_.size();
    size_t hole = 0;
    for (size_t child = 1; child < n; child = 2 * hole + 1) {
      child += (child + 1 < n && heap_[child + 1].load < heap_[child].load);
      heap_[hole] = heap_[child];
      hole = child;
    }
    heap_[hole] = moved;
    sift_up(hole);
  }
  void pop() {
    const Entry last = heap_.back();
    heap_.pop_back();
    if (heap_.empty()) return;
    heap_[0].part = last.part;
    replace_top(last.load);
  }

 private:
  struct Entry {
    double load;
    int32_t part;
  };
  void sift_up(size_t i) {
    const Entry e = heap_[i];
    while (i > 0 && e.load < heap_[(i - 1) / 2].load) {
      heap_[i] = heap_[(i - 1) / 2];
      i = (i - 1) / 2;
    }
    heap_[i] = e;
  }
  std::vector<Entry> heap_;
};

// Capacity-LPT: samples in decreasing cost, each to the least loaded part that still has room.
void greedy(const double* costs, int64_t n, int32_t p, Partition& out) {
  const std::vector<int64_t> order =
      n > 0 ? order_by_decreasing_cost(costs, n) : std::vector<int64_t>{};
  const int64_t base = n / p;
  const int64_t extra = n % p;
  OpenParts open(p);
  for (int32_t k = 0; k < p; ++k) {
    if (base + (k < extra ? 1 : 0) > 0) open.push(0.0, k);
  }
  for (int64_t i : order) {
    const int32_t part = open.top();
    out.part_of[i] = part;
    out.loads[part] += costs[i];
    if (++out.counts[part] < base + (part < extra ? 1 : 0)) {
      open.replace_top(out.loads[part]);
    } else {
      open.pop();
    }
  }
}

// Members of each part, kept current through swaps, so a refinement round touches only the
// two parts involved (O(n/p log(n/p)), not O(n)).
using Members = std::vector<std::vector<int64_t>>;

Members members_of(const Partition& out, int32_t p) {
  Members members(p);
  for (int32_t k = 0; k < p; ++k) members[k].reserve(out.counts[k]);
  for (int64_t i = 0; i < static_cast<int64_t>(out.part_of.size()); ++i) {
    members[out.part_of[i]].push_back(i);
  }
  return members;
}

// One swap between the most loaded part `hi` and the least loaded part `lo`: exchange a sample
// of hi with a cheaper sample of lo so that the gap g = load[hi] - load[lo] shrinks; the best
// exchange moves d = c_a - c_b as close to g / 2 as possible (0 < d < g).
bool swap_once(const double* costs, int32_t hi, int32_t lo, Members& members, Partition& out) {
  const double gap = out.loads[hi] - out.loads[lo];
  if (!(gap > 0.0)) return false;
  std::vector<std::pair<double, size_t>> in_lo;  // (cost, position in members[lo])
  in_lo.reserve(members[lo].size());
  for (size_t k = 0; k < members[lo].size(); ++k) in_lo.push_back({costs[members[lo][k]], k});
  std::sort(in_lo.begin(), in_lo.end());
  double best_err = gap / 2.0;  // a swap must beat "no swap" (|d - g/2| < g/2 <=> 0 < d < g)
  size_t best_a = 0, best_b = 0;
  bool found = false;
  for (size_t ka = 0; ka < members[hi].size(); ++ka) {
    const double ca = costs[members[hi][ka]];
    const double want = ca - gap / 2.0;  // cost of b that would halve the gap
    const auto it = std::lower_bound(in_lo.begin(), in_lo.end(), std::make_pair(want, size_t{0}));
    for (auto cand = it == in_lo.begin() ? it : it - 1; cand != in_lo.end() && cand <= it; ++cand) {
      const double err = std::abs(ca - cand->first - gap / 2.0);
      if (err < best_err) {
        best_err = err;
        best_a = ka;
        best_b = cand->second;
        found = true;
      }
    }
  }
  if (!found) return false;
  int64_t& a = members[hi][best_a];
  int64_t& b = members[lo][best_b];
  const double d = costs[a] - costs[b];
  out.part_of[a] = lo;
  out.part_of[b] = hi;
  std::swap(a, b);
  out.loads[hi] -= d;
  out.loads[lo] += d;
  return true;
}

}  // namespace

Partition capacity_lpt(const double* costs, int64_t n, int32_t num_parts, int32_t refine_rounds) {
  check_inputs(costs, n, num_parts);
  Partition out;
  out.part_of.assign(n, 0);
  out.loads.assign(num_parts, 0.0);
  out.counts.assign(num_parts, 0);
  greedy(costs, n, num_parts, out);
  if (refine_rounds > 0 && num_parts > 1) {
    Members members = members_of(out, num_parts);
    for (int32_t round = 0; round < refine_rounds; ++round) {
      const auto [lo_it, hi_it] = std::minmax_element(out.loads.begin(), out.loads.end());
      const auto hi = static_cast<int32_t>(hi_it - out.loads.begin());
      const auto lo = static_cast<int32_t>(lo_it - out.loads.begin());
      if (!swap_once(costs, hi, lo, members, out)) break;
      ++out.swaps;
    }
  }
  return out;
}

std::vector<int64_t> samples_by_part(const Partition& partition) {
  std::vector<int64_t> next(partition.counts.size());  // where part k's next sample goes
  int64_t start = 0;
  for (size_t k = 0; k < next.size(); ++k) {
    next[k] = start;
    start += partition.counts[k];
  }
  std::vector<int64_t> out(partition.part_of.size());
  for (int64_t i = 0; i < static_cast<int64_t>(partition.part_of.size()); ++i) {
    out[next[partition.part_of[i]]++] = i;
  }
  return out;
}

}  // namespace freescale::balance
