#include "comm/comm_bindings.h"

#include <pybind11/numpy.h>
#include <pybind11/stl.h>

#include <optional>
#include <stdexcept>
#include <string>
#include <tuple>
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

std::vector<Copy> from_array(const Int64Array& a) {
  if (a.ndim() != 2 || a.shape(1) != kCopyFields) {
    throw std::invalid_argument(
        "copies must be an [n, 5] array (src, dst, src_offset, "
        "dst_offset, bytes)");
  }
  std::vector<Copy> copies(static_cast<size_t>(a.shape(0)));
  const int64_t* p = a.data();
  for (Copy& c : copies) {
    c.src = static_cast<int32_t>(p[0]);
    c.dst = static_cast<int32_t>(p[1]);
    c.src_offset = p[2];
    c.dst_offset = p[3];
    c.bytes = p[4];
    p += kCopyFields;
  }
  return copies;
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
  py::class_<IssueQueue>(m, "IssueQueue",
                         "Copies in priority classes (0 highest), issued class by class")
      .def(py::init<int32_t>(), py::arg("num_classes") = 2)
      .def(
          "submit",
          [](IssueQueue& q, const Int64Array& copies, int32_t priority, int64_t max_piece,
             int64_t align) { return q.submit(from_array(copies), priority, {max_piece, align}); },
          py::arg("copies"), py::arg("priority"), py::arg("max_piece") = 0, py::arg("align") = 1,
          "Queues [n, 5] copies in a class, cut into pieces; returns the pieces queued")
      .def(
          "next",
          [](IssueQueue& q) -> std::optional<std::tuple<int, int, int64_t, int64_t, int64_t, int>> {
            Copy c;
            int32_t priority = 0;
            if (!q.next(&c, &priority)) return std::nullopt;
            return std::make_tuple(c.src, c.dst, c.src_offset, c.dst_offset, c.bytes, priority);
          },
          "(src, dst, src_offset, dst_offset, bytes, priority) of the next copy, or None")
      .def("__len__", &IssueQueue::size);
  return m;
}

}  // namespace freescale::comm
