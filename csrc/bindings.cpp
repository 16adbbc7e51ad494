// The one pybind11 module. Loading it also registers the freescale ops (TORCH_LIBRARY).
#include <pybind11/pybind11.h>

#include <string>

namespace py = pybind11;

namespace {

py::dict build_info() {
  py::dict info;
#ifdef FREESCALE_WITH_CUDA
  info["cuda"] = true;
  info["cuda_archs"] = std::string(FREESCALE_CUDA_ARCHS);
#else
  info["cuda"] = false;
  info["cuda_archs"] = std::string();
#endif
  info["compiler"] = std::string(__VERSION__);
  return info;
}

}  // namespace

PYBIND11_MODULE(_C, m) {
  m.doc() = "FreeScale native code: HSTU attention ops (torch.ops.freescale), runtimes";
  m.def("build_info", &build_info, "How this extension was built (CUDA on/off, archs)");
}
