"""The CPU-only build: what `pip install -e .` makes where there is no CUDA toolkit or only a CPU
build of torch, so what the README's quickstart runs on most machines without a GPU. CI's own
build compiles the CUDA code (its machine has nvcc), so this test builds the other one in a
temporary folder (about a minute on two cores) and runs the ops from it in a fresh process."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pybind11
import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]

# Run by the CPU-only extension: its build, the HSTU and compressed ops on CPU against the
# float64 references, and the comm module without its GPU runtime.
SMOKE = textwrap.dedent(
    """
    import torch
    import freescale_ext
    from freescale_ext import _C
    from freescale_ext.reference import hstu_attention_reference

    assert freescale_ext.__file__.startswith(PACKAGE), freescale_ext.__file__
    assert freescale_ext.build_info()["cuda"] is False
    assert not freescale_ext.cuda_compiled() and not hasattr(_C.comm, "PeerRuntime")
    gen = torch.Generator().manual_seed(0)
    offsets = torch.tensor([0, 1, 6, 6, 19])
    q, k, v = (torch.randn(19, 2, 8, generator=gen, dtype=torch.float64) for _ in range(3))
    for x in (q, k, v):
        x.requires_grad_(True)
    out = freescale_ext.hstu_attention(q, k, v, offsets, 13, alpha=0.5)
    want = hstu_attention_reference(q, k, v, offsets, 13, alpha=0.5)
    torch.testing.assert_close(out, want)
    grads = torch.autograd.grad(out.sum(), (q, k, v))
    want_grads = torch.autograd.grad(want.sum(), (q, k, v))
    for got, expected in zip(grads, want_grads, strict=True):
        torch.testing.assert_close(got, expected)
    print("cpu-only build ok")
    """
)


def _tool(name: str) -> str | None:
    """`name` from this Python's environment (where the `test` extra and the dependencies put
    cmake and ninja), else PATH."""
    search = os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")])
    return shutil.which(name, path=search)


def _cmake() -> str | None:
    """A cmake of at least the 3.26 that CMakeLists.txt asks for."""
    cmake = _tool("cmake")
    if cmake is None:
        return None
    version = subprocess.run([cmake, "--version"], capture_output=True, text=True).stdout
    found = re.search(r"(\d+)\.(\d+)", version)
    return cmake if found and (int(found[1]), int(found[2])) >= (3, 26) else None


@pytest.mark.slow
def test_cpu_only_build_compiles_and_runs(tmp_path):
    cmake, ninja = _cmake(), _tool("ninja")
    if cmake is None or ninja is None:
        pytest.skip("needs cmake >= 3.26 and ninja (pip install -e '.[test]')")
    package = tmp_path / "site" / "freescale_ext"
    shutil.copytree(ROOT / "freescale_ext", package, ignore=shutil.ignore_patterns("_C*", "__py*"))
    build = tmp_path / "build"
    configure = [
        cmake, "-S", str(ROOT), "-B", str(build), "-G", "Ninja",
        f"-DCMAKE_MAKE_PROGRAM={ninja}", "-DCMAKE_BUILD_TYPE=Release",
        "-DFREESCALE_WITH_CUDA=OFF",
        f"-DFREESCALE_OUTPUT_DIR={package}",
        f"-DPython_EXECUTABLE={sys.executable}",
        f"-DCMAKE_PREFIX_PATH={torch.utils.cmake_prefix_path};{pybind11.get_cmake_dir()}",
        f"-DTORCH_CXX11_ABI={int(torch._C._GLIBCXX_USE_CXX11_ABI)}",
    ]  # fmt: skip
    for command in (configure, [cmake, "--build", str(build), "-j", str(os.cpu_count() or 1)]):
        result = subprocess.run(command, capture_output=True, text=True)
        assert result.returncode == 0, f"{command[:3]}:\n{result.stdout[-3000:]}{result.stderr}"
    env = {**os.environ, "PYTHONPATH": str(package.parent)}
    script = f"PACKAGE = {str(package)!r}\n{SMOKE}"
    result = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, env=env, cwd=tmp_path
    )
    assert result.returncode == 0 and "cpu-only build ok" in result.stdout, result.stderr[-3000:]
