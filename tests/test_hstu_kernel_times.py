"""scripts/hstu_kernel_times.py's arithmetic on profiler events shaped like PyTorch's (no GPU
here): per-kernel times summed over launches, CPU events ignored, the span from the first start
to the last end, medians over calls (a kernel missing from a call counts 0), and the rows."""

from __future__ import annotations

from types import SimpleNamespace

import repo_modules

kernel_times = repo_modules.load("scripts/hstu_kernel_times.py")

CUDA = SimpleNamespace(name="CUDA")
CPU = SimpleNamespace(name="CPU")


def event(name: str, start: float, end: float, device=CUDA) -> SimpleNamespace:
    return SimpleNamespace(
        name=name, device_type=device, time_range=SimpleNamespace(start=start, end=end)
    )


def test_one_call_sums_launches_and_spans_first_start_to_last_end():
    events = [
        event("aten::empty", 0.0, 500.0, CPU),  # host time: not a kernel
        event("build_tile_list_kernel(HstuParams, int)", 100.0, 104.5),
        event("hstu_forward_sm90_kernel<bf16, 64>(CUtensorMap_st)", 110.0, 150.0),
        event("build_tile_list_kernel(HstuParams, int)", 160.0, 162.0),
    ]
    per_kernel, span = kernel_times.call_kernel_times(events)
    assert per_kernel == {
        "build_tile_list_kernel(HstuParams, int)": 6.5,
        "hstu_forward_sm90_kernel<bf16, 64>(CUtensorMap_st)": 40.0,
    }
    assert span == 62.0


def test_a_call_without_kernels_spans_nothing():
    assert kernel_times.call_kernel_times([event("aten::add", 0.0, 9.0, CPU)]) == ({}, 0.0)


def test_medians_count_a_missing_kernel_as_zero():
    calls = [({"a": 1.0, "b": 4.0}, 10.0), ({"a": 3.0}, 30.0), ({"a": 2.0, "b": 6.0}, 20.0)]
    medians, span = kernel_times.median_table(calls)
    assert medians == {"a": 2.0, "b": 4.0}
    assert span == 20.0


def test_rows_name_kernels_without_arguments_and_give_the_gaps():
    long_name = "k" * 70 + "(int)"
    rows = kernel_times.format_rows("s, fwd, tile list", {"a(int)": 4.0, long_name: 40.0}, 50.0)
    assert rows == [
        "| s, fwd, tile list | a | 4.0 |",
        f"| s, fwd, tile list | {'k' * 57}... | 40.0 |",
        "| s, fwd, tile list | span, first start to last end | 50.0 |",
        "| s, fwd, tile list | gaps (span - kernels) | 6.0 |",
    ]


def test_names_keep_the_function_of_a_namespaced_kernel():
    anonymous = "freescale::attention::hopper::(anonymous namespace)::build_list(HstuParams, int)"
    template = "void freescale::hopper::fwd_kernel<Traits<(int)64, true>>(HstuParams)"
    assert kernel_times.short_name(anonymous) == "build_list"
    assert kernel_times.short_name(template) == "fwd_kernel<Traits<(int)64, true>>"
    assert kernel_times.short_name(template, width=14) == "fwd_kernel<..."


def test_the_variants_are_the_benchmarks_default_and_full_grid_rows():
    # (a name the benchmark lacks would fail only on the GPU machine, after the build)
    variants = repo_modules.load("benchmarks/bench_hstu_attention.py").SM90_VARIANTS
    switches = {label: variants[name] for label, name in kernel_times.VARIANTS.items()}
    assert switches["full grid"] == {"FREESCALE_HSTU_TILE_LIST": "0"}
    assert "FREESCALE_HSTU_TILE_LIST" not in switches["tile list"]
