// Binds the copy-engine runtime's torch-facing class into freescale_ext._C.comm (CUDA builds).
#pragma once

#include <pybind11/pybind11.h>

namespace freescale::ops {

void bind_comm_runtime(pybind11::module_& comm);

}  // namespace freescale::ops
