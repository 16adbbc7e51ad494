"""Replaying a function as a CUDA graph, one graph per call signature.

Serving a small batch launches a few hundred small kernels; launched one by one from Python,
their launch cost is most of the latency. `GraphedFunction` captures the function once per
signature (the static keyword arguments and every tensor argument's shape, dtype and device)
and replays the graph after copying the call's tensors into the captured inputs: the pattern
of vLLM's and torch's CUDA-graph runners.

The function must not read device values on the host (no `.item()`, no data-dependent
shapes), and everything it launches must depend only on the signature.
"""

from __future__ import annotations

from collections.abc import Callable

import torch


class GraphedFunction:
    """fn(*tensors, **static) -> a tensor or a tuple of tensors, replayed from CUDA graphs.

    The returned tensors are the graph's own output buffers: the next call with the same
    signature overwrites them (clone what must outlive it). Graphs share one memory pool.
    """

    def __init__(self, fn: Callable, warmup: int = 2) -> None:
        self.fn = fn
        self.warmup = warmup
        self._graphs: dict[tuple, tuple] = {}
        self._pool = None

    def __len__(self) -> int:
        return len(self._graphs)

    def __call__(self, *tensors: torch.Tensor, **static):
        key = (
            tuple(sorted(static.items())),
            tuple((tuple(t.shape), t.dtype, t.device) for t in tensors),
        )
        entry = self._graphs.get(key)
        if entry is None:
            entry = self._graphs[key] = self._capture(tensors, static)
        inputs, graph, outputs = entry
        for dst, src in zip(inputs, tensors, strict=True):
            dst.copy_(src)
        graph.replay()
        return outputs

    def _capture(self, tensors: tuple[torch.Tensor, ...], static: dict) -> tuple:
        if any(t.device.type != "cuda" for t in tensors):
            raise ValueError("GraphedFunction captures CUDA work: every tensor must be on a GPU")
        inputs = [t.clone() for t in tensors]
        # Warm up on a side stream (lazy initialization, allocator), as torch.cuda.graphs asks.
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            for _ in range(self.warmup):
                self.fn(*inputs, **static)
        torch.cuda.current_stream().wait_stream(side)
        if self._pool is None:
            self._pool = torch.cuda.graph_pool_handle()
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph, pool=self._pool):
            outputs = self.fn(*inputs, **static)
        return inputs, graph, outputs
