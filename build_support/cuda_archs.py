"""Which GPU architectures `pip install -e .` compiles the CUDA code for (FREESCALE_CUDA_ARCHS).

In order: FREESCALE_CUDA_ARCHS as given ("90a;80+PTX", CMake's spelling); else torch's
TORCH_CUDA_ARCH_LIST ("8.0;9.0a;10.0+PTX") translated; else the GPUs visible at install time,
so that a machine with an A100, an L4 or a B200 gets code its GPU runs (the portable kernels)
and an H100 gets the sm_90a kernels; else, with no GPU (CI, a build host), sm_90a alone.
Compute capability 9.0 is always built as the arch-specific sm_90a: the fast kernels need it
(wgmma, setmaxnreg), and sm_90a code runs on every 9.0 GPU (H100, H200). "90" is refused:
sm_90 code has none of the Hopper kernels, and beside sm_90a code it would leave the choice
between the two to the driver.

Imported by setup.py and by tests/test_cuda_archs.py; needs nothing but the standard library.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence

MIN_ARCH = 80  # the kernels' mma.sync and bf16 need sm_80 (and CUDA 13 has nothing before 75)
NO_GPU_DEFAULT = "90a"
_CMAKE_ENTRY = re.compile(r"^(\d{2,3})(a?)(\+PTX)?$")
_TORCH_ENTRY = re.compile(r"^(\d+)\.(\d)(a?)(\+PTX)?$")


def _checked(entries: list[str], source: str) -> str:
    if not entries:
        raise ValueError(f"{source} names no CUDA architecture")
    for entry in entries:
        match = _CMAKE_ENTRY.match(entry)
        if match is None:
            raise ValueError(f"{source}: '{entry}' is not a CUDA arch such as 90a, 80 or 80+PTX")
        number = int(match.group(1))
        if number < MIN_ARCH:
            raise ValueError(
                f"{source} asks for sm_{number}, but FreeScale's CUDA kernels need sm_{MIN_ARCH} "
                "or newer; name newer GPUs, or set FREESCALE_WITH_CUDA=0 for a CPU-only build"
            )
        if number == 90 and not match.group(2):
            raise ValueError(
                f"{source}: write 90a, not 90 (the Hopper kernels exist only in sm_90a code, "
                "the arch-specific target)"
            )
    return ";".join(dict.fromkeys(entries))  # in order, without repeats


def _from_torch_list(value: str) -> list[str]:
    entries = []
    for item in re.split(r"[;\s]+", value.strip()):
        match = _TORCH_ENTRY.match(item)
        if match is None:
            raise ValueError(
                f"TORCH_CUDA_ARCH_LIST: '{item}' is not of the form 8.0, 9.0a or 8.6+PTX (named "
                "architectures are not read here; set FREESCALE_CUDA_ARCHS instead)"
            )
        major, minor, specific, ptx = match.groups()
        number = f"{major}{minor}"
        entries.append(number + ("a" if number == "90" else specific) + (ptx or ""))
    return entries


def _from_capabilities(capabilities: Sequence[tuple[int, int]]) -> list[str]:
    entries = []
    for major, minor in sorted(set(capabilities)):
        number = f"{major}{minor}"
        entries.append(number + ("a" if number == "90" else ""))
    return entries


def resolve_cuda_archs(
    environ: Mapping[str, str], capabilities: Sequence[tuple[int, int]]
) -> tuple[str, str]:
    """(FREESCALE_CUDA_ARCHS for CMake, where it came from) for this environment and the
    compute capabilities of the GPUs visible at install time. Raises ValueError, with what to
    set instead, on a malformed list or an architecture older than sm_80."""
    if environ.get("FREESCALE_CUDA_ARCHS", "").strip():
        entries = [e for e in environ["FREESCALE_CUDA_ARCHS"].replace(" ", ";").split(";") if e]
        return _checked(entries, "FREESCALE_CUDA_ARCHS"), "FREESCALE_CUDA_ARCHS"
    if environ.get("TORCH_CUDA_ARCH_LIST", "").strip():
        entries = _from_torch_list(environ["TORCH_CUDA_ARCH_LIST"])
        return _checked(entries, "TORCH_CUDA_ARCH_LIST"), "TORCH_CUDA_ARCH_LIST"
    if capabilities:
        names = ", ".join(f"sm_{major}{minor}" for major, minor in sorted(set(capabilities)))
        source = f"the visible GPUs ({names})"
        return _checked(_from_capabilities(capabilities), source), source
    return NO_GPU_DEFAULT, "no GPU visible: the default"
