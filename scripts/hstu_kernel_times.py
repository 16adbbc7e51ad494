"""Where a short HSTU attention call's time goes: each kernel's (and memset's) GPU time and the
span from the first one's start to the last one's end (GPU work plus the gaps between), per call,
from the PyTorch profiler, with and without the sm_90a kernels' tile list.

At ML-1M's shapes (tens of microseconds per call) the default was about 23 us slower than the
full grid (FREESCALE_HSTU_TILE_LIST=0; docs/hstu_sm90/13.md); this found it was the list's
builder kernel (22 us on an H200, the attention kernels the same either way), and that the
head-dim padding's copies took as long as the attention kernels (docs/hstu_sm90/14.md):

    python3 scripts/hstu_kernel_times.py --shapes ml1m [--bias] [--calls 20]

The shapes, inputs, kernel pins and variant switches are benchmarks/bench_hstu_attention.py's
(its default sm_90a row and its `full grid` row). Each call is profiled alone (synchronized
before and after), and the table gives medians over the calls.
"""

from __future__ import annotations

import argparse
import functools
import statistics
import sys
from collections.abc import Callable, Iterable
from pathlib import Path

# The benchmark's sm_90a variants compared (SM90_VARIANTS keys), by the label of the rows.
VARIANTS = {"tile list": "", "full grid": "full grid"}


def call_kernel_times(events: Iterable) -> tuple[dict[str, float], float]:
    """One profiled call's GPU kernels: (microseconds per kernel name, summed over its
    launches; the span in microseconds from the first kernel's start to the last one's end).
    `events` are the profiler's FunctionEvents (or anything with name, device_type and
    time_range.start / .end in microseconds); only CUDA ones count."""
    per_kernel: dict[str, float] = {}
    first, last = None, None
    for event in events:
        if getattr(event.device_type, "name", str(event.device_type)) != "CUDA":
            continue
        start, end = event.time_range.start, event.time_range.end
        per_kernel[event.name] = per_kernel.get(event.name, 0.0) + (end - start)
        first = start if first is None else min(first, start)
        last = end if last is None else max(last, end)
    span = 0.0 if first is None else last - first
    return per_kernel, span


def median_table(calls: list[tuple[dict[str, float], float]]) -> tuple[dict[str, float], float]:
    """Per kernel name, the median over `calls` of its time (0 in a call that lacks it), and the
    median span."""
    names = sorted({name for per_kernel, _ in calls for name in per_kernel})
    medians = {n: statistics.median(c[0].get(n, 0.0) for c in calls) for n in names}
    return medians, statistics.median(span for _, span in calls)


def short_name(name: str, width: int = 60) -> str:
    """A kernel's function name and template arguments, cut to `width` characters.

    Its return type, namespaces and argument list go first: cutting the whole demangled name
    left only "freescale::attention::hopper::" of a kernel in an anonymous namespace.
    """
    name = name.replace("(anonymous namespace)::", "").removeprefix("void ")
    depth = 0
    for i, c in enumerate(name):
        depth += {"<": 1, ">": -1}.get(c, 0)
        if c == "(" and depth == 0:
            name = name[:i]
            break
    function, bracket, template_args = name.partition("<")
    name = function.rsplit("::", 1)[-1] + bracket + template_args
    return name if len(name) <= width else name[: width - 3] + "..."


def format_rows(label: str, medians: dict[str, float], span: float) -> list[str]:
    """Markdown rows: one per kernel, then the span and what the kernels leave of it."""
    rows = [f"| {label} | {short_name(n)} | {us:.1f} |" for n, us in medians.items()]
    busy = sum(medians.values())
    rows.append(f"| {label} | span, first start to last end | {span:.1f} |")
    rows.append(f"| {label} | gaps (span - kernels) | {span - busy:.1f} |")
    return rows


def profile_calls(fn: Callable[[], object], calls: int) -> list[tuple[dict[str, float], float]]:
    """`fn` profiled `calls` times, one profiler session per call."""
    import torch

    fn()
    torch.cuda.synchronize()
    out = []
    for _ in range(calls):
        with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CUDA]) as prof:
            fn()
            torch.cuda.synchronize()
        out.append(call_kernel_times(prof.events()))
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--shapes", nargs="+", default=["ml1m"], help="substrings of shape names")
    parser.add_argument("--bias", action="store_true")
    parser.add_argument("--calls", type=int, default=20)
    args = parser.parse_args()

    import torch

    import freescale_ext  # noqa: F401  (registers torch.ops.freescale)

    sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "benchmarks"))
    from bench_hstu_attention import (
        SM90_VARIANTS,
        bench_tokens,
        environment,
        freescale_inputs,
        make_shapes,
        pinned_kernels,
    )

    gen = torch.Generator(device="cuda").manual_seed(0)
    print("| shape, pass, variant | kernel | median us |")
    print("|---|---|---:|")
    for shape in make_shapes(bench_tokens()):
        if not any(s in shape.name for s in args.shapes):
            continue
        q, k, v, dout, op_args = freescale_inputs(shape, args.bias, gen)
        passes = {
            "fwd": functools.partial(torch.ops.freescale.hstu_attention, q, k, v, *op_args),
            "bwd": functools.partial(
                torch.ops.freescale.hstu_attention_backward, dout, q, k, v, *op_args
            ),
        }
        for pass_name, fn in passes.items():
            for label, variant in VARIANTS.items():
                with pinned_kernels("sm90"), environment(**SM90_VARIANTS[variant]):
                    medians, span = median_table(profile_calls(fn, args.calls))
                rows = format_rows(f"{shape.name}, {pass_name}, {label}", medians, span)
                print("\n".join(rows), flush=True)


if __name__ == "__main__":
    main()
