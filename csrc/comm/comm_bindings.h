// Python bindings of the communication runtime's host-side planning (freescale_ext._C.comm).
#pragma once

#include <pybind11/pybind11.h>

namespace freescale::comm {

void bind_comm(pybind11::module_& parent);

}  // namespace freescale::comm
