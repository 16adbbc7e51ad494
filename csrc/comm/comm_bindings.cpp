#include "comm/comm_bindings.h"

#include <pybind11/numpy.h>
#include <pybind11/stl.h>

#include <stdexcept>
#include <string>
#include <vector>

#include "comm/transfer_plan.h"

namespace py = pybind11;

namespace freescale::comm {
namespace {

using Int64Array = py::array_t<int64_t, py::array::c_style | py::array::forcecast>;
constexpr int kCopyFields = 5;  // src, dst, src_offset, dst_offset, bytes

AllToAllLayout layout_from(int32_t world, const Int64Array& splits) {
  if (splits.ndim() != 2 || splits.shape(0) != world || splits.shape(1) != world) {
    throw std::invalid_argument("all-to-all: splits must be a [world, world] array (world = " +
                                std::to_string(world) + ")");
  }
  return AllToAllLayout(world, std::vector<int64_t>(splits.data(), splits.data() + splits.size()));
}

Int64Array to_array(const std::vector<Copy>& copies) {
  Int64Array out({static_cast<py::ssize_t>(copies.size()), static_cast<py::ssize_t>(kCopyFields)});
  int64_t* p = out.mutable_data();
  for (const Copy& c : copies) {
    *p++ = c.src;
    *p++ = c.dst;
    *p++ = c.src_offset;
    *p++ = c.dst_offset;
    *p++ = c.bytes;
  }
  return out;
}

py::tuple offsets(int32_t world, const Int64Array& splits) {
  const AllToAllLayout layout = layout_from(world, splits);
  Int64Array send({world, world}), recv({world, world});
  for (int32_t a = 0; a < world; ++a) {
    for (int32_t b = 0; b < world; ++b) {
      send.mutable_at(a, b) = layout.send_offset(a, b);
      recv.mutable_at(a, b) = layout.recv_offset(a, b);
    }
  }
  return py::make_tuple(send, recv);
}

}  // namespace

py::module_ bind_comm(py::module_& parent) {
  py::module_ m = parent.def_submodule(
      "comm", "Host-side planning of the SM-free communication runtime (DESIGN §6)");
  m.def("all_to_all_offsets", &offsets, py::arg("world"), py::arg("splits"),
        "(send_offsets[s, d], recv_offsets[d, s]) of an all-to-all-v with splits[s, d] bytes "
        "from rank s to rank d");
  using CopyPlanner = std::vector<Copy> (*)(const AllToAllLayout&, int32_t, Cutting);
  const auto def_copies = [&m](const char* name, CopyPlanner plan, const char* doc) {
    m.def(
        name,
        [plan](int32_t world, const Int64Array& splits, int32_t rank, int64_t max_piece,
               int64_t align) {
          return to_array(plan(layout_from(world, splits), rank, {max_piece, align}));
        },
        py::arg("world"), py::arg("splits"), py::arg("rank"), py::arg("max_piece") = 0,
        py::arg("align") = 1, doc);
  };
  def_copies("pull_copies", &pull_copies,
             "[n, 5] copies (src, dst, src_offset, dst_offset, bytes) `rank` issues to pull its "
             "receive buffer, in issue order");
  def_copies("push_copies", &push_copies,
             "The same for pushing `rank`'s chunks into the peers' buffers");
  return m;
}

}  // namespace freescale::comm
