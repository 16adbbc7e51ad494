// Python bindings of the communication runtime's host-side planning (freescale_ext._C.comm).
#pragma once

#include <pybind11/pybind11.h>

namespace freescale::comm {

// Adds and returns the submodule `comm` of `parent`.
pybind11::module_ bind_comm(pybind11::module_& parent);

}  // namespace freescale::comm
