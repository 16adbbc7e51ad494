#include "ops/cuda_archs.h"

#include <algorithm>
#include <charconv>
#include <stdexcept>
#include <string>

namespace freescale::ops {

namespace {

struct CudaArch {
  int major = 0;
  int minor = 0;
  bool specific = false;  // "a": the arch-specific target, that one GPU generation only
  bool ptx = false;       // "+PTX": PTX beside the SASS
};

// "90a+PTX" -> {9, 0, specific, ptx}: the last digit is the minor version, as nvcc spells it.
CudaArch parse_arch(std::string_view entry) {
  CudaArch arch;
  std::string_view rest = entry;
  if (rest.size() > 4 && rest.substr(rest.size() - 4) == "+PTX") {
    arch.ptx = true;
    rest.remove_suffix(4);
  }
  if (!rest.empty() && rest.back() == 'a') {
    arch.specific = true;
    rest.remove_suffix(1);
  }
  int number = 0;
  const auto [end, error] = std::from_chars(rest.data(), rest.data() + rest.size(), number);
  if (rest.size() < 2 || error != std::errc() || end != rest.data() + rest.size()) {
    throw std::invalid_argument("CUDA arch '" + std::string(entry) +
                                "' is not of the form 90a, 80 or 80+PTX");
  }
  arch.major = number / 10;
  arch.minor = number % 10;
  return arch;
}

bool runs_on(const CudaArch& arch, int major, int minor) {
  if (arch.major == major && arch.minor == minor) return true;
  if (arch.specific) return false;
  const bool newer = major > arch.major || (major == arch.major && minor > arch.minor);
  return newer && (arch.ptx || major == arch.major);
}

}  // namespace

bool cuda_archs_run_on(std::string_view archs, int major, int minor) {
  bool runs = false;
  while (!archs.empty()) {
    const size_t end = archs.find_first_of(";,");
    const std::string_view entry = archs.substr(0, end);
    if (!entry.empty()) runs |= runs_on(parse_arch(entry), major, minor);
    archs = end == std::string_view::npos ? std::string_view() : archs.substr(end + 1);
  }
  return runs;
}

std::string missing_code_hint(std::string_view archs, int major, int minor) {
  if (cuda_archs_run_on(archs, major, minor)) return {};
  const int number = major * 10 + minor;
  const std::string arch = std::to_string(number) + (major == 9 ? "a" : "");
  std::string list(archs);
  std::replace(list.begin(), list.end(), ',', ';');
  const std::string built = ". This extension was built with GPU code for FREESCALE_CUDA_ARCHS=\"" +
                            list + "\", none of which runs on this sm_" + arch + " GPU";
  if (number < 80) return built + "; FreeScale's GPU kernels need sm_80 or newer";
  return built + ": reinstall with FREESCALE_CUDA_ARCHS=" + arch +
         " (or with it unset, on a machine with this GPU)";
}

}  // namespace freescale::ops
