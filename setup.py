"""Build driver: setuptools hands the native build to CMake + Ninja (CMakeLists.txt).

`pip install -e .` builds `freescale_ext/_C`. CUDA kernels are compiled whenever a CUDA
toolkit and a CUDA build of torch are present; otherwise a CPU-only `_C` is built and the
CUDA ops say clearly that they were not compiled in.

Environment knobs:
  FREESCALE_CUDA_ARCHS   CUDA architectures, e.g. "90a" or "90a;80+PTX"; unset: torch's
                         TORCH_CUDA_ARCH_LIST, else the GPUs visible now, else "90a"
                         (build_support/cuda_archs.py)
  FREESCALE_WITH_CUDA    "0" forces a CPU-only build, "1" requires CUDA
  CUDA_HOME / CUDA_PATH  the toolkit; otherwise /usr/local/cuda, then nvcc on PATH
  MAX_JOBS               parallel compile jobs (default: number of cores)
  FREESCALE_BUILD_TYPE   CMake build type (default Release)
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

from setuptools import Extension, find_packages, setup
from setuptools.command.build_ext import build_ext

ROOT = Path(__file__).resolve().parent
sys.path.insert(0, str(ROOT / "build_support"))
from cuda_archs import resolve_cuda_archs  # noqa: E402  (a file beside this one, not a package)


def _toolkit_root(candidate: Path) -> Path | None:
    if (candidate / "include" / "cuda.h").exists() and (candidate / "bin" / "nvcc").exists():
        return candidate
    return None


def detect_cuda_home() -> Path | None:
    """Find the CUDA toolkit.

    torch guesses CUDA_HOME from the directory of `nvcc` on PATH; on machines where nvcc is a
    wrapper script in /usr/local/bin that guess is wrong, so we check for the real toolkit
    layout (include/cuda.h next to bin/nvcc) instead.
    """
    for var in ("CUDA_HOME", "CUDA_PATH"):
        if os.environ.get(var):
            root = _toolkit_root(Path(os.environ[var]))
            if root:
                return root
    root = _toolkit_root(Path("/usr/local/cuda"))
    if root:
        return root
    nvcc = shutil.which("nvcc")
    if nvcc:
        root = _toolkit_root(Path(nvcc).resolve().parent.parent)
        if root:
            return root
        # A wrapper script: ask it where the compiler lives.
        try:
            out = subprocess.run(
                [nvcc, "-dryrun", "--version"], capture_output=True, text=True, timeout=30
            ).stderr
            for line in out.splitlines():
                if "TOP=" in line:
                    root = _toolkit_root(Path(line.split("TOP=", 1)[1].strip()))
                    if root:
                        return root
        except (OSError, subprocess.SubprocessError):
            pass
    return None


def torch_cuda_major() -> int | None:
    try:
        import torch
    except ImportError:
        return None
    return int(torch.version.cuda.split(".")[0]) if torch.version.cuda else None


def visible_gpu_capabilities(torch) -> list[tuple[int, int]]:
    """Compute capabilities of the GPUs this process sees (none without a driver or a GPU)."""
    try:
        if not torch.cuda.is_available():
            return []
        return [torch.cuda.get_device_capability(i) for i in range(torch.cuda.device_count())]
    except RuntimeError:  # a driver too old for torch's CUDA, a GPU in a bad state
        return []


class CMakeExtension(Extension):
    def __init__(self, name: str) -> None:
        super().__init__(name, sources=[])


class CMakeBuild(build_ext):
    def build_extension(self, ext: Extension) -> None:
        import pybind11
        import torch

        out_path = Path(self.get_ext_fullpath(ext.name)).resolve()
        out_dir = out_path.parent
        build_type = os.environ.get("FREESCALE_BUILD_TYPE", "Release")

        want_cuda = os.environ.get("FREESCALE_WITH_CUDA")
        cuda_home = detect_cuda_home() if want_cuda != "0" else None
        with_cuda = cuda_home is not None and torch.version.cuda is not None
        if want_cuda == "1" and not with_cuda:
            raise RuntimeError(
                "FREESCALE_WITH_CUDA=1 but no CUDA toolkit (CUDA_HOME) or no CUDA build of torch "
                f"was found (torch {torch.__version__}, cuda {torch.version.cuda})"
            )

        args = {
            "CMAKE_BUILD_TYPE": build_type,
            "Python_EXECUTABLE": sys.executable,
            "CMAKE_PREFIX_PATH": f"{torch.utils.cmake_prefix_path};{pybind11.get_cmake_dir()}",
            "FREESCALE_OUTPUT_DIR": str(out_dir),
            "FREESCALE_OUTPUT_NAME": out_path.name,
            "FREESCALE_WITH_CUDA": "ON" if with_cuda else "OFF",
            "TORCH_CXX11_ABI": "1" if torch._C._GLIBCXX_USE_CXX11_ABI else "0",
        }
        if with_cuda:
            args["CUDAToolkit_ROOT"] = str(cuda_home)
            args["CMAKE_CUDA_COMPILER"] = str(cuda_home / "bin" / "nvcc")
            archs, source = resolve_cuda_archs(os.environ, visible_gpu_capabilities(torch))
            print(f"[freescale] CUDA archs: {archs} (from {source})", flush=True)
            args["FREESCALE_CUDA_ARCHS"] = archs

        tag = f"{sys.implementation.cache_tag}-torch{torch.__version__.split('+')[0]}"
        build_dir = ROOT / "build" / f"cmake-{tag}-{build_type.lower()}"
        build_dir.mkdir(parents=True, exist_ok=True)
        # Isolated pip builds put torch in a fresh temp dir each time: a cache that names
        # another torch would fail to configure, so configure afresh when the environment changes.
        # Only the cache goes: the objects stay, and Ninja recompiles exactly those whose
        # command lines changed. The output dir is pip's temp dir, new every time: not compared.
        stamp = build_dir / "freescale-configure.json"
        environment = {k: v for k, v in args.items() if k != "FREESCALE_OUTPUT_DIR"}
        environment["CXX"] = os.environ.get("CXX", "")
        if stamp.exists() and json.loads(stamp.read_text()) != environment:
            (build_dir / "CMakeCache.txt").unlink(missing_ok=True)

        cmake = shutil.which("cmake") or "cmake"
        configure = [cmake, "-S", str(ROOT), "-B", str(build_dir), "-G", "Ninja"]
        configure += [f"-D{k}={v}" for k, v in args.items()]
        print(f"[freescale] CUDA: {'on, ' + str(cuda_home) if with_cuda else 'off'}", flush=True)
        subprocess.run(configure, check=True)
        stamp.write_text(json.dumps(environment))
        jobs = os.environ.get("MAX_JOBS") or str(os.cpu_count() or 1)
        subprocess.run([cmake, "--build", str(build_dir), "-j", jobs], check=True)
        if not out_path.exists():
            raise RuntimeError(f"CMake build finished but {out_path} was not produced")


def bench_extras() -> dict[str, list[str]]:
    major = torch_cuda_major()
    cupy = [f"cupy-cuda{major}x"] if major in (12, 13) else []
    return {
        "test": ["pytest>=7", "ruff", "cmake>=3.26"],  # cmake: tests/test_cpu_only_build.py
        "bench": cupy,
        "bench-cu12": ["cupy-cuda12x"],
        "bench-cu13": ["cupy-cuda13x"],
        "parquet": ["pyarrow"],
    }


setup(
    packages=find_packages(where="python")
    + find_packages(include=["freescale_ext", "freescale_ext.*"]),
    package_dir={"freescale": "python/freescale", "freescale_ext": "freescale_ext"},
    ext_modules=[CMakeExtension("freescale_ext._C")],
    cmdclass={"build_ext": CMakeBuild},
    extras_require=bench_extras(),
    zip_safe=False,
)
