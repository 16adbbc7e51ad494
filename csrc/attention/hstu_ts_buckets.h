// Time buckets of the relative bias (DESIGN §4), shared by host and device code:
//   bucket(Δ) = clamp(floor(ln(max(|Δ|, 1)) / 0.301), 0, num_buckets)
// exactly as float64 computes it, three ways: the float64 logarithm itself (the reference and
// the simple kernels), compares with a table of the bucket thresholds (any int64 gap), and, for
// gaps below 2^31, one 8-byte table cell per quarter of a power of two and a compare, which is
// what the sm_90a kernels run per pair: a handful of instructions where a pair's matrix products
// cost a few dozen, so the bias stays close to the plain kernels' speed.
#pragma once

#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>

#include "attention/host_device.h"

namespace freescale::attention {

// bucket(Δ) = clamp(floor(ln(max(|Δ|, 1)) / 0.301), 0, num_buckets), in float64 so that the
// host and device agree on every bucket boundary.
FS_HOST_DEVICE int hstu_ts_bucket(int64_t delta, int num_buckets) {
  double a = static_cast<double>(delta < 0 ? -delta : delta);
  if (a < 1.0) a = 1.0;
  int b = static_cast<int>(floor(log(a) / 0.301));
  return b < 0 ? 0 : (b > num_buckets ? num_buckets : b);
}

// Gaps up to 2^63 fall in buckets below 146 (ln(2^63) / 0.301 = 145.1): thresholds 0..146.
constexpr int kTsBucketThresholds = 147;

// The smallest gap |Δ| whose bucket (unclamped) is at least b, or INT64_MAX where no gap
// reaches b; found by bisection with hstu_ts_bucket itself, so comparing a gap with the
// thresholds gives exactly its bucket (the bucket never decreases as |Δ| grows).
FS_HOST_DEVICE int64_t hstu_ts_bucket_threshold(int b) {
  constexpr int kUnclamped = 1 << 30;
  if (b <= 0) return 0;
  if (b >= kTsBucketThresholds - 1) return std::numeric_limits<int64_t>::max();
  const double edge = exp(0.301 * b);
  int64_t lo = static_cast<int64_t>(edge * (1.0 - 1e-9));      // bucket(lo) < b
  int64_t hi = static_cast<int64_t>(edge * (1.0 + 1e-9)) + 2;  // bucket(hi) >= b
  if (lo < 1) lo = 1;
  if (hstu_ts_bucket(lo, kUnclamped) >= b) return lo;
  while (hi - lo > 1) {
    const int64_t mid = lo + (hi - lo) / 2;
    if (hstu_ts_bucket(mid, kUnclamped) >= b) {
      hi = mid;
    } else {
      lo = mid;
    }
  }
  return hi;
}

// hstu_ts_bucket from a table of the thresholds [kTsBucketThresholds]: an estimate from a
// single-precision logarithm (off by at most one), corrected by comparing with the neighbouring
// thresholds. Integer compares instead of a float64 logarithm per pair. The walks make the
// result exact whatever the estimate, so the device takes the one-instruction approximate
// logarithm (log2f is a library routine of a dozen instructions, per pair of the bias).
FS_HOST_DEVICE int hstu_ts_bucket_from_thresholds(int64_t delta, int num_buckets,
                                                  const int64_t* thresholds) {
  const int64_t a = delta < 0 ? -delta : delta;
#if defined(__CUDA_ARCH__)
  const float log2_a = __log2f(static_cast<float>(a));
#else
  const float log2_a = log2f(static_cast<float>(a));
#endif
  int b = a <= 1 ? 0 : static_cast<int>(log2_a * (0.6931472f / 0.301f));
  b = b < 0 ? 0 : (b > kTsBucketThresholds - 2 ? kTsBucketThresholds - 2 : b);
  while (b > 0 && a < thresholds[b]) --b;
  while (b + 2 < kTsBucketThresholds && a >= thresholds[b + 1]) ++b;  // the last: a sentinel
  return b > num_buckets ? num_buckets : b;
}

// Gaps |Δ| in [2^e, 2^(e+1)) ("octave" e) split into four cells [2^e (4 + m) / 4, 2^e (5 + m) / 4),
// m = 0..3: a cell spans a factor of at most 5/4 < e^0.301 = 1.35, so at most one bucket boundary
// falls inside it. Cell 4 e + m holds {s, b}: the (clamped) bucket b of its first gap and the gap s
// where it steps to b + 1, padded with the cell's end where it does not. A cell's index is the
// exponent and first two mantissa bits of the gap as a float rounded toward zero.
constexpr int kTsCells = 4 * 32;

// The bucket tables of one call, built on the host (fill_ts_bucket_tables) and handed to the
// kernels by value in HstuBiasParams, so no block recomputes a threshold.
struct TsBucketTables {
  int64_t thresholds[kTsBucketThresholds];  // hstu_ts_bucket_threshold(b)
  alignas(8) uint32_t cells[kTsCells][2];
};

// Cell c's gaps: [first, past), clipped to uint32 (cell 127 ends at 2^32); empty where
// first >= past (octaves 0 and 1 hold fewer than four integers).
FS_HOST_DEVICE void ts_cell_span(int c, int64_t* first, int64_t* past) {
  const int e = c / 4;
  const int64_t m = c % 4;
  *first = (((4 + m) << e) + 3) / 4;  // ceil(2^e (4 + m) / 4)
  *past = (((5 + m) << e) + 3) / 4;
}

// Cell c of the table for `num_buckets`, from the thresholds.
FS_HOST_DEVICE void fill_ts_cell(int c, int num_buckets, const int64_t* thresholds,
                                 uint32_t cell[2]) {
  int64_t first = 0;
  int64_t past = 0;
  ts_cell_span(c, &first, &past);
  const int64_t pad = past > 0xFFFFFFFFll ? 0xFFFFFFFFll : past;
  const int base = hstu_ts_bucket_from_thresholds(first, num_buckets, thresholds);
  const int b = base + 1;
  const bool steps = b <= num_buckets && b < kTsBucketThresholds && thresholds[b] < past;
  cell[0] = static_cast<uint32_t>(steps ? thresholds[b] : pad);
  cell[1] = static_cast<uint32_t>(base);
}

// The cell of a gap a >= 1 (4 e + m, e = floor(log2 a)).
FS_HOST_DEVICE int ts_cell_of(uint32_t a) {
#if defined(__CUDA_ARCH__)
  // (one conversion, I2FP, a full-rate ALU instruction on sm_90, instead of a leading-zero count
  // and shifts: the float's exponent field is 127 + e and its top mantissa bits are m)
  return static_cast<int>(__float_as_uint(__uint2float_rz(a)) >> 21) - 4 * 127;
#else
  int e = 0;
  while (e < 31 && (a >> (e + 1)) != 0) ++e;
  const uint32_t m = e >= 2 ? (a >> (e - 2)) & 3u : (a << (2 - e)) & 3u;
  return 4 * e + static_cast<int>(m);
#endif
}

// Gaps the cell table takes: |Δ| below 2^31.
constexpr int64_t kSmallTsGap = int64_t{1} << 31;

// bucket(Δ) for a gap |Δ| = a < kSmallTsGap from the cell table: equal to hstu_ts_bucket. One
// 8-byte table read and a compare per pair.
FS_HOST_DEVICE int ts_bucket_of_small_gap(uint32_t a, const uint32_t (*cells)[2]) {
  const int c = ts_cell_of(a > 1u ? a : 1u);  // (gaps 0 and 1 share bucket 0)
#if defined(__CUDA_ARCH__)
  const uint2 cell = reinterpret_cast<const uint2*>(cells)[c];
  return static_cast<int>(cell.y) + (a >= cell.x);
#else
  return static_cast<int>(cells[c][1]) + (a >= cells[c][0]);
#endif
}

// The cell table with each cell's bucket weights beside it, for the pairs that look their bucket
// up one gap at a time (near the diagonal, where a row spans many buckets): a pair's weight is
// then one 16-byte table read and a compare, where ts_bucket_of_small_gap and then the weight's
// read took two dependent reads (the sm_90a forward with the bias ran 1.04-1.06x at d = 64 and
// 128, docs/hstu_sm90/23.md).
// Cell c: {split, bucket b of its first gap, weight b, weight b + 1}, b + 1 clamped to the last
// bucket where the cell does not step (its split lies past every gap of the cell, so that weight
// is never taken; the clamp keeps the read inside the weights). 16-byte aligned: the device reads
// a cell with one 16-byte load. The weights are held as their bits so that a pair's pick is an
// integer select (SEL, the measured kernel's; a float select compiles to FSEL).
struct alignas(16) TsWeightedCell {
  uint32_t split;
  int32_t lower;
  uint32_t lower_weight_bits;
  uint32_t upper_weight_bits;
};

// The bits of a 32-bit value as another 32-bit type (memcpy: a register move on the device).
template <typename To, typename From>
FS_HOST_DEVICE To ts_bit_cast(From x) {
  static_assert(sizeof(To) == sizeof(From), "a bit cast keeps the size");
  To out;
  memcpy(&out, &x, sizeof(out));
  return out;
}

// The weighted cell of TsBucketTables' cell {split, lower}, from the call's weights
// [num_buckets + 1].
FS_HOST_DEVICE TsWeightedCell make_ts_weighted_cell(uint32_t split, uint32_t lower, int num_buckets,
                                                    const float* weights) {
  const int b = static_cast<int>(lower);
  return {split, b, ts_bit_cast<uint32_t>(weights[b]),
          ts_bit_cast<uint32_t>(weights[b < num_buckets ? b + 1 : b])};
}

struct TsBucketWeight {
  int bucket;
  float weight;
};

// bucket(Δ) (as ts_bucket_of_small_gap) and its weight for a gap |Δ| = a < kSmallTsGap.
FS_HOST_DEVICE TsBucketWeight ts_bucket_weight_of_small_gap(uint32_t a,
                                                            const TsWeightedCell* cells) {
  const TsWeightedCell cell = cells[ts_cell_of(a > 1u ? a : 1u)];  // (gaps 0 and 1: bucket 0)
  const bool upper = a >= cell.split;
  return {cell.lower + (upper ? 1 : 0),
          ts_bit_cast<float>(upper ? cell.upper_weight_bits : cell.lower_weight_bits)};
}

// The buckets of a monotone stretch of gaps, from its two ends. Where times ascend, the gaps
// t_{i+1} - t_j of one key row grow along its queries (and those of one query row shrink along
// its keys), so every gap of the stretch lies between `smallest` and `largest` (both clamped at
// 0: a negative gap then belongs to a masked pair). Where the ends' buckets differ by at most
// one (`two`), a gap g of the stretch is in bucket lower + (g >= split): one compare per pair
// instead of a table lookup. Gaps below kSmallTsGap (cell table).
struct TsTwoBuckets {
  int lower = 0;
  int upper = 0;
  int32_t split = 0;  // the smallest gap in `upper`; INT32_MAX where upper == lower
  bool two = false;   // the stretch spans at most two buckets
};
FS_HOST_DEVICE TsTwoBuckets ts_two_buckets(int32_t smallest, int32_t largest,
                                           const uint32_t (*cells)[2], const int64_t* thresholds) {
  TsTwoBuckets out;
  out.lower = ts_bucket_of_small_gap(static_cast<uint32_t>(smallest < 0 ? 0 : smallest), cells);
  out.upper = ts_bucket_of_small_gap(static_cast<uint32_t>(largest < 0 ? 0 : largest), cells);
  out.two = out.upper >= out.lower && out.upper - out.lower <= 1;
  out.split = out.upper > out.lower ? static_cast<int32_t>(thresholds[out.upper])
                                    : std::numeric_limits<int32_t>::max();
  return out;
}

// The forward's two-bucket rows test the column's time offset instead of the gap: gap =
// from - o_j >= split exactly where o_j <= from - split, which this returns (int64 arithmetic;
// where it lies below int32, as from - INT32_MAX does for a one-bucket stretch of a negative
// row offset, INT32_MIN, which no offset of small_ts_offset reaches).
FS_HOST_DEVICE int32_t ts_last_upper_offset(int32_t from, int32_t split) {
  const int64_t last = static_cast<int64_t>(from) - split;
  constexpr int64_t kLowest = std::numeric_limits<int32_t>::min();
  return static_cast<int32_t>(last < kLowest ? kLowest : last);
}

// Timestamps as int32 offsets from a reference time: exact while |ts - ref| < kSmallTsSpan, so
// the gap between two offsets stays below kSmallTsGap (ts_bucket_of_small_gap); sets *wide
// otherwise.
constexpr int64_t kSmallTsSpan = kSmallTsGap / 2;
FS_HOST_DEVICE int32_t small_ts_offset(int64_t ts, int64_t ref, bool* wide) {
  const int64_t offset = ts - ref;
  if (offset >= kSmallTsSpan || offset <= -kSmallTsSpan) *wide = true;
  return static_cast<int32_t>(offset);
}

// Host: the tables for `num_buckets` (the thresholds are computed once per process).
inline void fill_ts_bucket_tables(int num_buckets, TsBucketTables* tables) {
  static const TsBucketTables shared = [] {
    TsBucketTables t{};
    for (int b = 0; b < kTsBucketThresholds; ++b) t.thresholds[b] = hstu_ts_bucket_threshold(b);
    return t;
  }();
  *tables = shared;
  for (int c = 0; c < kTsCells; ++c)
    fill_ts_cell(c, num_buckets, tables->thresholds, tables->cells[c]);
}

}  // namespace freescale::attention
