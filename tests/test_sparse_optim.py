"""Sparse optimizer updates: the fused CUDA kernels against the float64 PyTorch references, and
the wrappers' validation."""

from __future__ import annotations

import pytest
import torch

from freescale_ext.sparse_optim import (
    has_kernel,
    reference_rowwise_adagrad_,
    reference_sparse_adam_,
    rowwise_adagrad_,
    sparse_adam_,
)


def make_update(num_rows: int, dim: int, touched: int, *, device="cpu", dtype=torch.float64):
    """A table, its states, and `touched` unique random rows with their gradients."""
    g = torch.Generator().manual_seed(num_rows * 1000 + dim * 10 + touched)
    table = torch.randn(num_rows, dim, generator=g, dtype=torch.float64)
    exp_avg = torch.randn(num_rows, dim, generator=g, dtype=torch.float64) * 0.1
    exp_avg_sq = torch.rand(num_rows, dim, generator=g, dtype=torch.float64) * 0.01
    sum_sq = torch.rand(num_rows, generator=g, dtype=torch.float64)
    rows = torch.randperm(num_rows, generator=g)[:touched]
    grads = torch.randn(touched, dim, generator=g, dtype=torch.float64)
    state = dict(
        table=table, exp_avg=exp_avg, exp_avg_sq=exp_avg_sq, sum_sq=sum_sq, rows=rows, grads=grads
    )
    return {
        k: v.to(device) if k == "rows" else v.to(device, dtype) for k, v in state.items()
    }, state


def test_updates_validate_rows_and_shapes():
    s, _ = make_update(10, 4, 3)
    dup = torch.tensor([1, 1, 2])
    with pytest.raises(ValueError, match="unique"):
        rowwise_adagrad_(s["table"], s["sum_sq"], dup, s["grads"], lr=0.1)
    with pytest.raises(ValueError, match=r"in \[0, 10\)"):
        sparse_adam_(
            s["table"], s["exp_avg"], s["exp_avg_sq"], torch.tensor([0, 10, 2]), s["grads"],
            step=1, lr=0.1,
        )  # fmt: skip
    with pytest.raises(ValueError, match="int64"):
        rowwise_adagrad_(s["table"], s["sum_sq"], s["rows"].int(), s["grads"], lr=0.1)
    with pytest.raises(ValueError, match="grads"):
        rowwise_adagrad_(s["table"], s["sum_sq"], s["rows"], s["grads"][:, :2], lr=0.1)


def test_cpu_tables_take_the_reference():
    s, ref = make_update(50, 6, 20)
    assert not has_kernel(s["table"])
    rowwise_adagrad_(s["table"], s["sum_sq"], s["rows"], s["grads"], lr=0.3)
    reference_rowwise_adagrad_(ref["table"], ref["sum_sq"], ref["rows"], ref["grads"], lr=0.3)
    assert torch.equal(s["table"], ref["table"]) and torch.equal(s["sum_sq"], ref["sum_sq"])


# -- GPU: fused kernels ------------------------------------------------------------------------
SHAPES = [(1, 1, 1), (100, 7, 0), (100, 33, 1), (1000, 64, 999), (5000, 128, 1234), (300, 257, 77)]


@pytest.mark.gpu
@pytest.mark.parametrize("num_rows,dim,touched", SHAPES)
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_rowwise_adagrad_kernel_matches_the_reference(num_rows, dim, touched, dtype):
    s, ref = make_update(num_rows, dim, touched, device="cuda", dtype=dtype)
    untouched = torch.ones(num_rows, dtype=torch.bool)
    untouched[ref["rows"]] = False
    before = s["table"].clone()
    for _ in range(3):  # the accumulator carries over steps
        rowwise_adagrad_(s["table"], s["sum_sq"], s["rows"], s["grads"], lr=0.05, eps=1e-8)
        reference_rowwise_adagrad_(ref["table"], ref["sum_sq"], ref["rows"], ref["grads"], lr=0.05)
    tol = dict(rtol=1e-12, atol=1e-12) if dtype == torch.float64 else dict(rtol=2e-6, atol=2e-6)
    torch.testing.assert_close(s["table"].cpu().double(), ref["table"], **tol)
    torch.testing.assert_close(s["sum_sq"].cpu().double(), ref["sum_sq"], **tol)
    assert torch.equal(s["table"].cpu()[untouched], before.cpu()[untouched])


@pytest.mark.gpu
@pytest.mark.parametrize("num_rows,dim,touched", SHAPES)
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_adam_kernel_matches_the_reference(num_rows, dim, touched, dtype):
    s, ref = make_update(num_rows, dim, touched, device="cuda", dtype=dtype)
    untouched = torch.ones(num_rows, dtype=torch.bool)
    untouched[ref["rows"]] = False
    before = [s[k].clone() for k in ("table", "exp_avg", "exp_avg_sq")]
    for step in range(1, 4):
        kw = dict(step=step, lr=0.01, betas=(0.8, 0.99), eps=1e-6)
        sparse_adam_(s["table"], s["exp_avg"], s["exp_avg_sq"], s["rows"], s["grads"], **kw)
        reference_sparse_adam_(
            ref["table"], ref["exp_avg"], ref["exp_avg_sq"], ref["rows"], ref["grads"], **kw
        )
    tol = dict(rtol=1e-12, atol=1e-12) if dtype == torch.float64 else dict(rtol=2e-6, atol=2e-6)
    for i, k in enumerate(("table", "exp_avg", "exp_avg_sq")):
        torch.testing.assert_close(s[k].cpu().double(), ref[k], **tol)
        assert torch.equal(s[k].cpu()[untouched], before[i].cpu()[untouched])


@pytest.mark.gpu
def test_kernels_take_strided_grads_and_table_rows_on_the_current_stream():
    s, ref = make_update(200, 40, 50, device="cuda", dtype=torch.float32)
    wide = torch.zeros(200, 64, device="cuda")
    wide[:, :40] = s["table"]
    table = wide[:, :40]  # row stride 64
    grads_t = s["grads"].t().contiguous().t()  # column-major: copied to contiguous rows
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        rowwise_adagrad_(table, s["sum_sq"], s["rows"], grads_t, lr=0.1, validate=False)
    torch.cuda.current_stream().wait_stream(stream)
    reference_rowwise_adagrad_(ref["table"], ref["sum_sq"], ref["rows"], ref["grads"], lr=0.1)
    torch.testing.assert_close(table.cpu().double(), ref["table"], rtol=2e-6, atol=2e-6)
    assert torch.equal(wide[:, 40:].cpu(), torch.zeros(200, 24))


@pytest.mark.gpu
def test_kernels_reject_bad_input_with_clear_errors():
    s, _ = make_update(20, 8, 5, device="cuda", dtype=torch.float32)
    op = torch.ops.freescale
    with pytest.raises(RuntimeError, match="sum_sq must be"):
        op.sparse_rowwise_adagrad_(s["table"], s["sum_sq"][:5], s["rows"], s["grads"], 0.1, 0.0)
    with pytest.raises(RuntimeError, match="exp_avg must be"):
        op.sparse_adam_(
            s["table"], s["exp_avg"].double(), s["exp_avg_sq"], s["rows"], s["grads"],
            1, 0.1, 0.9, 0.99, 1e-8,
        )  # fmt: skip
    with pytest.raises(RuntimeError, match="step counts updates from 1"):
        op.sparse_adam_(
            s["table"], s["exp_avg"], s["exp_avg_sq"], s["rows"], s["grads"],
            0, 0.1, 0.9, 0.99, 1e-8,
        )  # fmt: skip
    with pytest.raises(RuntimeError, match="rows must be a 1-D int64 tensor"):
        op.sparse_rowwise_adagrad_(s["table"], s["sum_sq"], s["rows"].cpu(), s["grads"], 0.1, 0.0)
    with pytest.raises(RuntimeError, match="float32 or float64"):
        op.sparse_rowwise_adagrad_(
            s["table"].half(), s["sum_sq"].half(), s["rows"], s["grads"].half(), 0.1, 0.0
        )


@pytest.mark.gpu
def test_sparse_optimizer_ops_pass_opcheck():
    s, _ = make_update(64, 16, 10, device="cuda", dtype=torch.float32)
    args = (s["table"], s["sum_sq"], s["rows"], s["grads"], 0.1, 1e-8)
    torch.library.opcheck(torch.ops.freescale.sparse_rowwise_adagrad_.default, args)
    args = (
        s["table"],
        s["exp_avg"],
        s["exp_avg_sq"],
        s["rows"],
        s["grads"],
        2,
        0.1,
        0.9,
        0.99,
        1e-8,
    )
    torch.library.opcheck(torch.ops.freescale.sparse_adam_.default, args)
