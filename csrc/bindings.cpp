// The one pybind11 module. Loading it also registers the freescale ops (TORCH_LIBRARY).
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <algorithm>
#include <optional>
#include <stdexcept>
#include <string>
#include <vector>

#include "attention/hstu_mask.h"
#include "attention/hstu_ts_buckets.h"
#include "balance/partitioner.h"
#include "comm/comm_bindings.h"
#include "ops/cuda_archs.h"
#ifdef FREESCALE_WITH_CUDA
#include "attention/compressed.h"
#include "attention/hopper/tile_list.h"
#include "ops/comm_runtime.h"
#endif

namespace py = pybind11;

namespace {

py::dict build_info() {
  py::dict info;
#ifdef FREESCALE_WITH_CUDA
  info["cuda"] = true;
  std::string archs(FREESCALE_CUDA_ARCHS);  // separated by ',' (CMakeLists.txt): as given, by ';'
  std::replace(archs.begin(), archs.end(), ',', ';');
  info["cuda_archs"] = archs;
#else
  info["cuda"] = false;
  info["cuda_archs"] = std::string();
#endif
  info["compiler"] = std::string(__VERSION__);
  return info;
}

using CostArray = py::array_t<double, py::array::c_style | py::array::forcecast>;

// (sample indices grouped by part int64 [n], loads float64 [p], counts int64 [p], swaps). Runs
// without the GIL, so a background thread can partition the next step while training runs.
py::tuple capacity_lpt(const CostArray& costs, int32_t num_parts, int32_t refine_rounds) {
  if (costs.ndim() != 1) {
    throw std::invalid_argument("costs must be 1-D, got " + std::to_string(costs.ndim()) + "-D");
  }
  freescale::balance::Partition part;
  std::vector<int64_t> grouped;
  {
    py::gil_scoped_release release;
    part = freescale::balance::capacity_lpt(costs.data(), costs.shape(0), num_parts, refine_rounds);
    grouped = freescale::balance::samples_by_part(part);
  }
  auto to_array = [](const auto& v) {
    using T = typename std::decay_t<decltype(v)>::value_type;
    py::array_t<T> a(static_cast<py::ssize_t>(v.size()));
    std::copy(v.begin(), v.end(), a.mutable_data());
    return a;
  };
  return py::make_tuple(to_array(grouped), to_array(part.loads), to_array(part.counts), part.swaps);
}

// The kernels' mask, exposed so CPU tests can check it (and its tile-skip ranges) against the
// reference: rows are [valid(i, j) for j], plus column_range(r0, r1) for every row tile and
// row_range(c0, c1) and row_ranges(c0, c1) for every column tile, and which tiles are fully
// visible.
py::dict hstu_mask_tiles(int length, int contextual_len, int num_targets, int max_attn_len,
                         int tile) {
  const auto mask = freescale::attention::HstuMask::make(length, contextual_len, max_attn_len,
                                                         num_targets >= 0, num_targets);
  py::list valid, ranges;
  for (int i = 0; i < length; ++i) {
    py::list row;
    for (int j = 0; j < length; ++j) row.append(mask.valid(i, j));
    valid.append(row);
  }
  for (int r0 = 0; r0 < length; r0 += tile) {
    int lo = 0, hi = 0;
    mask.column_range(r0, std::min(r0 + tile, length), &lo, &hi);
    ranges.append(py::make_tuple(lo, hi));
  }
  py::list row_ranges, split_row_ranges;
  for (int c0 = 0; c0 < length; c0 += tile) {
    int lo = 0, hi = 0, prefix_end = 0;
    mask.row_range(c0, std::min(c0 + tile, length), &lo, &hi);
    row_ranges.append(py::make_tuple(lo, hi));
    mask.row_ranges(c0, std::min(c0 + tile, length), &prefix_end, &lo, &hi);
    split_row_ranges.append(py::make_tuple(prefix_end, lo, hi));
  }
  // tile_fully_visible for every (row tile, column tile), whole tiles and the sequence's end.
  py::list fully_visible;
  for (int r0 = 0; r0 < length; r0 += tile) {
    py::list row;
    for (int c0 = 0; c0 < length; c0 += tile)
      row.append(mask.tile_fully_visible(r0, tile, c0, tile));
    fully_visible.append(row);
  }
  py::dict out;
  out["valid"] = valid;
  out["column_ranges"] = ranges;
  out["row_ranges"] = row_ranges;
  out["split_row_ranges"] = split_row_ranges;
  out["fully_visible"] = fully_visible;
  return out;
}

// The time buckets of `deltas` as the simple kernels compute them (a float64 logarithm) and as
// the sm_90a kernels do: compares with the threshold table (any gap) and the cell table (gaps
// below 2^31; None for the others), from the tables the op hands the kernels, for CPU tests.
// With `weights` (num_buckets + 1 of them), also each small gap's (bucket, weight) from the
// forward's cell table with the weights beside it (TsWeightedCell).
py::dict hstu_ts_buckets(const std::vector<int64_t>& deltas, int num_buckets,
                         const std::optional<std::vector<float>>& weights) {
  using namespace freescale::attention;
  TsBucketTables tables;
  fill_ts_bucket_tables(num_buckets, &tables);
  std::vector<TsWeightedCell> cell_weights;
  if (weights) {
    if (static_cast<int64_t>(weights->size()) != int64_t{num_buckets} + 1) {
      throw std::invalid_argument("hstu_ts_buckets: weights must hold num_buckets + 1 values");
    }
    for (int c = 0; c < kTsCells; ++c) {
      cell_weights.push_back(make_ts_weighted_cell(tables.cells[c][0], tables.cells[c][1],
                                                   num_buckets, weights->data()));
    }
  }
  py::list direct, compared, cells, weighted, table;
  for (const int64_t delta : deltas) {
    direct.append(hstu_ts_bucket(delta, num_buckets));
    compared.append(hstu_ts_bucket_from_thresholds(delta, num_buckets, tables.thresholds));
    const int64_t gap = delta < 0 ? -delta : delta;
    if (gap < kSmallTsGap) {
      cells.append(ts_bucket_of_small_gap(static_cast<uint32_t>(gap), tables.cells));
      if (weights) {
        const TsBucketWeight bw =
            ts_bucket_weight_of_small_gap(static_cast<uint32_t>(gap), cell_weights.data());
        weighted.append(py::make_tuple(bw.bucket, bw.weight));
      }
    } else {
      cells.append(py::none());
      if (weights) weighted.append(py::none());
    }
  }
  for (const int64_t t : tables.thresholds) table.append(t);
  py::dict out;
  out["direct"] = direct;
  out["thresholds"] = compared;
  out["cells"] = cells;
  out["table"] = table;
  if (weights) out["cell_weights"] = weighted;
  return out;
}

// The sm_90a kernels' two-bucket rows (ts_two_buckets) for a stretch of gaps between
// `smallest` and `largest`: whether it spans at most two buckets, those buckets, and each of
// `gaps` bucketed as the kernels do there: lower + (gap >= split) (the backward), and with a
// row time offset `row_offset`, lower + (o_j <= ts_last_upper_offset) for the column offsets
// o_j = row_offset - gap (the forward); for CPU tests.
py::dict hstu_ts_two_buckets(int32_t smallest, int32_t largest, const std::vector<int32_t>& gaps,
                             int num_buckets, std::optional<int32_t> row_offset) {
  using namespace freescale::attention;
  TsBucketTables tables;
  fill_ts_bucket_tables(num_buckets, &tables);
  const TsTwoBuckets row = ts_two_buckets(smallest, largest, tables.cells, tables.thresholds);
  py::list buckets;
  py::list buckets_by_offset;
  for (const int32_t gap : gaps) {
    buckets.append(row.lower + (gap >= row.split ? 1 : 0));
    if (!row_offset) continue;
    const int64_t offset = static_cast<int64_t>(*row_offset) - gap;
    if (offset <= -kSmallTsSpan || offset >= kSmallTsSpan) {
      throw std::invalid_argument("row_offset - gap must lie within +-2^30 (small_ts_offset)");
    }
    const int32_t last_upper = ts_last_upper_offset(*row_offset, row.split);
    buckets_by_offset.append(row.lower + (offset <= last_upper ? 1 : 0));
  }
  py::dict out;
  out["two"] = row.two;
  out["lower"] = row.lower;
  out["upper"] = row.upper;
  out["buckets"] = buckets;
  out["buckets_by_offset"] = buckets_by_offset;
  return out;
}

#ifdef FREESCALE_WITH_CUDA
// The sm_90a kernels' tile-list plan for a batch of `total_len` tokens in `batch_size`
// sequences (hopper/tile_list.h): whether a list applies, whether it pays for its builder's
// launch, the entries it can hold and the workspace bytes the op allocates; for CPU tests.
py::dict hstu_tile_list_plan(int64_t total_len, int batch_size, int max_seq_len, int num_heads,
                             int tile) {
  using namespace freescale::attention;
  if (total_len < 0 || batch_size < 1 || max_seq_len < 1 || num_heads < 1 || tile < 1) {
    throw std::invalid_argument("total_len >= 0 and batch_size, max_seq_len, num_heads, tile >= 1");
  }
  HstuParams p;
  p.total_len = total_len;
  p.batch_size = batch_size;
  p.max_seq_len = max_seq_len;
  p.num_heads = num_heads;
  py::dict out;
  out["applies"] = hopper::tile_list_applies(p, tile);
  out["pays"] = hopper::tile_list_pays(p, tile);
  out["capacity"] = hopper::tile_list_capacity(p, tile);
  out["workspace_bytes"] = hopper::tile_list_workspace_bytes(p, tile);
  return out;
}
#endif

}  // namespace

PYBIND11_MODULE(_C, m) {
  m.doc() = "FreeScale native code: HSTU attention ops (torch.ops.freescale), runtimes";
  m.def("build_info", &build_info, "How this extension was built (CUDA on/off, archs)");
  m.def("cuda_archs_run_on", &freescale::ops::cuda_archs_run_on, py::arg("archs"), py::arg("major"),
        py::arg("minor"),
        "Whether GPU code built for `archs` (as FREESCALE_CUDA_ARCHS: \"90a;80+PTX\") runs on a "
        "GPU of compute capability major.minor");
  m.def("cuda_missing_code_hint", &freescale::ops::missing_code_hint, py::arg("archs"),
        py::arg("major"), py::arg("minor"),
        "What a 'no kernel image' error adds for a build of `archs` on a GPU of major.minor");
  m.def("capacity_lpt", &capacity_lpt, py::arg("costs"), py::arg("num_parts"),
        py::arg("refine_rounds") = 0,
        "Capacity-LPT partition of samples by cost into parts of n/p (+1) samples each");
  m.def("hstu_mask_tiles", &hstu_mask_tiles, py::arg("length"), py::arg("contextual_len"),
        py::arg("num_targets"), py::arg("max_attn_len"), py::arg("tile"),
        "The CUDA kernels' HSTU mask and per-tile column ranges (num_targets < 0: none)");
  m.def("hstu_ts_buckets", &hstu_ts_buckets, py::arg("deltas"), py::arg("num_buckets"),
        py::arg("weights") = py::none(),
        "Time buckets of gaps: float64 logarithm, threshold and cell tables (the sm_90a "
        "kernels'), and with weights the cell table's (bucket, weight)");
  m.def("hstu_ts_two_buckets", &hstu_ts_two_buckets, py::arg("smallest"), py::arg("largest"),
        py::arg("gaps"), py::arg("num_buckets"), py::arg("row_offset") = py::none(),
        "The sm_90a kernels' two-bucket split of a stretch of gaps, and its buckets of `gaps`");
#ifdef FREESCALE_WITH_CUDA
  m.def(
      "compressed_shared_memory_bytes",
      [](int head_dim) {
        if (head_dim < 1 || head_dim > freescale::attention::kCompressedMaxHeadDim) {
          throw std::invalid_argument("head_dim must be 1.." +
                                      std::to_string(freescale::attention::kCompressedMaxHeadDim));
        }
        return std::max(freescale::attention::compressed_forward_shared_bytes(head_dim),
                        freescale::attention::compressed_backward_shared_bytes(head_dim));
      },
      py::arg("head_dim"),
      "Shared memory per block the compressed-attention kernels take at this head dim (the "
      "larger of the forward's and the backward's)");
  m.def("hstu_tile_list_plan", &hstu_tile_list_plan, py::arg("total_len"), py::arg("batch_size"),
        py::arg("max_seq_len"), py::arg("num_heads"), py::arg("tile"),
        "The sm_90a kernels' tile list for a batch: applies, pays, capacity, workspace bytes");
#endif
  py::module_ comm = freescale::comm::bind_comm(m);
#ifdef FREESCALE_WITH_CUDA
  freescale::ops::bind_comm_runtime(comm);
#endif
}
