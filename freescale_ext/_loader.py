"""Loads the compiled extension once, with an error that says how to fix a missing build."""

from __future__ import annotations

import functools

import torch  # noqa: F401  (torch must be loaded before _C: _C links against libtorch)

try:
    from freescale_ext import _C
except ImportError as exc:  # pragma: no cover - exercised only on a broken install
    raise ImportError(
        "freescale_ext._C is missing or failed to load. Build it with `pip install -e .` from "
        f"the repository root (original error: {exc})"
    ) from exc


def build_info() -> dict:
    """How `_C` was built: {'cuda': bool, 'cuda_archs': str, 'compiler': str}."""
    return dict(_C.build_info())


def cuda_compiled() -> bool:
    """True when the CUDA kernels were compiled into `_C`."""
    return bool(_C.build_info()["cuda"])


@functools.cache
def compiled_for(capability: tuple[int, int]) -> bool:
    """Whether `_C` holds GPU code that a device of this compute capability runs: its build's
    FREESCALE_CUDA_ARCHS by CUDA's binary compatibility (sm_80 code runs on 8.6 and 8.9, sm_90a
    code on 9.0 only, PTX on anything newer). Cached: the ops ask on every call."""
    info = build_info()
    return bool(info["cuda"]) and _C.cuda_archs_run_on(info["cuda_archs"], *capability)
