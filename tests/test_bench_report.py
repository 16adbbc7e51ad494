"""The benchmark's report against the fast-kernels issue's targets
(benchmarks/bench_hstu_attention.py's target_report), from made-up rows: the default kernel's
rows against the targets and the peers, and the relative bias's against 80% of the TFLOP/s
targets (the peers run without a bias, so their factors carry no target)."""

from __future__ import annotations

import repo_modules

bench = repo_modules.load("benchmarks/bench_hstu_attention.py")


def test_the_target_report_covers_the_default_and_the_bias_rows():
    def row(shape: str, impl: str, fwd: float, bwd: float) -> object:
        return bench.Row(shape, impl, 1.0, fwd, 1.0, bwd, 1)

    rows = [bench.Row("GEMM 8192^3", "torch.matmul", 1.0, 800.0, 0.0, 0.0, 0)]
    for shape in ("full_n1024_h4_d128", "full_n2048_h4_d128", "jagged_lognormal_cap4096_h4_d128"):
        rows += [
            row(shape, "freescale sm90", 480.0, 390.0),
            row(shape, "freescale sm90 + bias", 360.0, 234.0),
            row(shape, "triton hstu", 320.0, 240.0),
            row(shape, "sdpa causal", 500.0, 400.0),
        ]
    rows.append(row("full_n4096_h4_d128", "freescale sm90", 540.0, 420.0))  # no peers, no bias
    lines = bench.target_report(rows).splitlines()
    assert lines[2:] == [
        "| full_n2048_h4_d128 | fwd | 480.0 | 107% | 60% | 1.50x (1.4x) | 0.96x |",
        "| full_n2048_h4_d128 | bwd | 390.0 | 130% | 49% | 1.62x (2.0x) | 0.97x |",
        "| full_n2048_h4_d128 | bias fwd | 360.0 | 100% of 360 | 45% | 1.12x | 0.72x |",
        "| full_n2048_h4_d128 | bias bwd | 234.0 | 98% of 240 | 29% | 0.97x | 0.58x |",
        "| full_n4096_h4_d128 | fwd | 540.0 | 120% | 68% | - (1.4x) | - |",
        "| full_n4096_h4_d128 | bwd | 420.0 | 140% | 52% | - (2.0x) | - |",
    ]
