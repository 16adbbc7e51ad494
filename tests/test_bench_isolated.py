"""benchmarks/isolated.py: a function run in the worker process returns its result or raises its
error in the caller, and a worker that died (as a process whose CUDA context faulted may) is
replaced for the next call."""

from __future__ import annotations

import math
import os
import signal
import time
from concurrent.futures.process import BrokenProcessPool

import pytest
import repo_modules

isolated = repo_modules.load("benchmarks/isolated.py")


def test_results_errors_and_a_dead_worker():
    with isolated.IsolatedWorker() as worker:
        pid = worker.call(os.getpid)
        assert pid != os.getpid()
        assert worker.call(os.getpid) == pid  # one worker, kept across calls
        assert worker.call(math.hypot, 3.0, 4.0) == 5.0
        with pytest.raises(ValueError, match="math domain error"):
            worker.call(math.sqrt, -1.0)
        after_error = worker.call(os.getpid)
        assert after_error != pid  # an error replaces the worker
        with pytest.raises(BrokenProcessPool):
            worker.call(os._exit, 3)
        assert worker.call(os.getpid) not in (pid, after_error)
        assert worker.call(math.hypot, 6.0, 8.0) == 10.0


def test_an_interrupted_caller_stops_the_worker():
    """A SystemExit in the caller (the benchmark's SIGTERM handler under `timeout`) while the
    worker runs a long call ends the worker at once, not after the call."""

    def interrupt(*_):
        raise SystemExit(143)

    worker = isolated.IsolatedWorker()
    pid = worker.call(os.getpid)
    started = time.monotonic()
    previous = signal.signal(signal.SIGALRM, interrupt)
    signal.setitimer(signal.ITIMER_REAL, 0.5)
    try:
        with pytest.raises(SystemExit):
            worker.call(time.sleep, 60.0)
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)
    assert time.monotonic() - started < 30.0
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)  # terminated, and reaped by the pool's shutdown
