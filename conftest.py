"""Shared pytest setup for tests/ and benchmarks/.

- `gpu` tests skip, with the reason, where there is no CUDA GPU or no CUDA build of _C;
  `multi_gpu` tests also need 2+ GPUs.
- `benchmark` items (benchmarks/) run only with --run-benchmarks: performance is measured
  there, never asserted in the test suite.
"""

from __future__ import annotations

import pytest
import torch


def pytest_addoption(parser):
    parser.addoption(
        "--run-benchmarks",
        action="store_true",
        default=False,
        help="run the microbenchmarks in benchmarks/ (GPU)",
    )


def cuda_skip_reason() -> str | None:
    if not torch.cuda.is_available():
        return "no CUDA GPU on this machine"
    import freescale_ext

    if not freescale_ext.cuda_compiled():
        return "freescale_ext._C was built without CUDA kernels"
    return None


def pytest_collection_modifyitems(config, items):
    reason = cuda_skip_reason()
    gpus = torch.cuda.device_count() if reason is None else 0
    run_benchmarks = config.getoption("--run-benchmarks")
    for item in items:
        if "benchmark" in item.keywords and not run_benchmarks:
            item.add_marker(pytest.mark.skip(reason="benchmark: pass --run-benchmarks"))
        if "gpu" in item.keywords and reason is not None:
            item.add_marker(pytest.mark.skip(reason=reason))
        if "multi_gpu" in item.keywords and gpus < 2:
            item.add_marker(pytest.mark.skip(reason=f"needs 2+ GPUs, found {gpus}"))
