"""First look at the sm_90a HSTU kernels on a GPU: each kernel pinned against the simple kernels
on small cases, with the error laid out by position so that a layout bug shows its pattern
(rows mod 64 by warp and lane group, head-dim columns mod 64 by 8-column chunk) instead of a
single number. Run it before the tests when the kernels change:

    timeout 120 python scripts/sm90_smoke.py
"""

from __future__ import annotations

import os

import torch

import freescale_ext  # noqa: F401  (registers torch.ops.freescale)


def pinned(kernel: str) -> None:
    os.environ["FREESCALE_HSTU_FORWARD"] = os.environ["FREESCALE_HSTU_BACKWARD"] = kernel


def run(q, k, v, dout, offsets, n, alpha, bias, kernel: str):
    pinned(kernel)
    args = (offsets, n, alpha, None, 0, 0, *bias)
    out = torch.ops.freescale.hstu_attention(q, k, v, *args)
    grads = torch.ops.freescale.hstu_attention_backward(dout, q, k, v, *args)
    torch.cuda.synchronize()
    return [out, *grads[:3]]


def error_pattern(got: torch.Tensor, want: torch.Tensor) -> str:
    """Max |error| per (row mod 64) // 8 x (column mod 64) // 8 cell, relative to max |want|."""
    err = (got.float() - want.float()).abs().amax(dim=1)  # [T, d]
    rows = torch.arange(err.shape[0], device=err.device) % 64 // 8
    cols = torch.arange(err.shape[1], device=err.device) % 64 // 8
    scale = want.float().abs().max().clamp_min(1e-30)
    grid = torch.zeros(8, 8, device=err.device)
    for r in range(8):
        for c in range(8):
            cell = err[rows == r][:, cols == c]
            grid[r, c] = cell.max() / scale if cell.numel() else 0
    return "\n".join("    " + " ".join(f"{x:7.1e}" for x in row) for row in grid.tolist())


def main() -> None:
    torch.manual_seed(0)
    for dim in (64, 128, 256):
        for lengths in ([256], [130, 7, 300]):
            for with_bias in (False, True):
                total, heads = sum(lengths), 2
                n = max(lengths) + 5
                q, k, v, dout = (
                    torch.randn(total, heads, dim, device="cuda", dtype=torch.bfloat16)
                    for _ in range(4)
                )
                offsets = torch.tensor([0, *lengths], device="cuda").cumsum(0).int()
                bias = (None, None, None)
                if with_bias:
                    stamps = torch.randint(0, 10**5, (total,), device="cuda").cumsum(0)
                    bias = (
                        torch.randn(2 * n - 1, device="cuda") * 0.5,
                        torch.randn(129, device="cuda") * 0.5,
                        stamps,
                    )
                alpha = dim**-0.5
                want = run(q, k, v, dout, offsets, n, alpha, bias, "simple")
                try:
                    got = run(q, k, v, dout, offsets, n, alpha, bias, "auto")
                except RuntimeError as err:
                    print(f"d={dim} lengths={lengths} bias={with_bias}: FAILED {err}")
                    continue
                for name, g, w in zip(("out", "dq", "dk", "dv"), got, want, strict=True):
                    rel = ((g.float() - w.float()).abs().max() / w.float().abs().max()).item()
                    flag = "ok" if rel < 2e-2 and g.isfinite().all() else "BAD"
                    print(
                        f"d={dim} lengths={lengths} bias={with_bias} {name}: rel {rel:.2e} {flag}"
                    )
                    if flag == "BAD":
                        print(error_pattern(g, w))
    pinned("simple")


if __name__ == "__main__":
    main()
