"""NVTX ranges for Nsight timelines (DESIGN §9): every pipeline stage is wrapped in one, so a
timeline reads like the pipeline diagram. Costs nothing measurable when no profiler listens."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch

try:  # the `nvtx` package also works on machines where torch has no CUDA
    import nvtx as _nvtx
except ImportError:  # pragma: no cover - depends on the environment
    _nvtx = None


@contextlib.contextmanager
def nvtx_range(name: str) -> Iterator[None]:
    if torch.cuda.is_available():
        torch.cuda.nvtx.range_push(name)
        try:
            yield
        finally:
            torch.cuda.nvtx.range_pop()
    elif _nvtx is not None:
        with _nvtx.annotate(name, domain="freescale"):
            yield
    else:
        yield
