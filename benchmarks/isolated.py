"""Runs a benchmark row in a worker process of its own, so that a fault there cannot end the run.

A kernel's illegal memory access makes the CUDA context of its process unusable: every later
CUDA call raises it again. When the Triton peer faulted on the jagged batch (docs/hstu_sm90/
36.md), the rows after it, SDPA's and the ML-1M shape's, were lost with it. A peer's rows run
in a spawned worker (one, kept across rows: CUDA, torch and Triton start once); a fault there
raises in the caller, the worker is replaced, and the caller's own context stays clean.
"""

from __future__ import annotations

import multiprocessing
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from typing import Any


class IsolatedWorker:
    """call(fn, *args) runs fn(*args) in the worker process (fn and args picklable: top-level
    functions, dataclasses) and returns its result or raises its error; after an error, or a
    worker that died, the next call starts a new worker."""

    def __init__(self) -> None:
        self._pool: ProcessPoolExecutor | None = None

    def call(self, fn: Callable[..., Any], *args: Any) -> Any:
        if self._pool is None:
            self._pool = ProcessPoolExecutor(
                max_workers=1, mp_context=multiprocessing.get_context("spawn")
            )
        try:
            return self._pool.submit(fn, *args).result()
        except Exception:
            # (BrokenProcessPool where the worker died; else its CUDA context may be unusable)
            self.close()
            raise
        except BaseException:
            # The caller was interrupted (KeyboardInterrupt, or SystemExit from a SIGTERM
            # handler such as the benchmark's under `timeout`) while the worker ran: stop it now,
            # or it would finish its row on the GPU beside whatever runs next.
            self.close(terminate=True)
            raise

    def close(self, terminate: bool = False) -> None:
        if self._pool is not None:
            if terminate:
                # (ProcessPoolExecutor has no public way to stop a running task before 3.14)
                for process in list(getattr(self._pool, "_processes", {}).values()):
                    process.terminate()
            self._pool.shutdown(wait=True, cancel_futures=True)
            self._pool = None

    def __enter__(self) -> IsolatedWorker:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, *exc: object) -> None:
        self.close(terminate=exc_type is not None and not issubclass(exc_type, Exception))
