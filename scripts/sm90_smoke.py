"""First look at the sm_90a HSTU kernels on a GPU: the sm_90a kernels pinned against the simple
kernels on small cases, output and every gradient (bias tables
included), with a bad tensor's error laid out by position so that a layout bug shows its
pattern (rows of a sequence mod 64 in groups of 8, head-dim columns mod 64 by 8-column chunk)
instead of a single number. Run it before the tests when the kernels change (exit status 1
where a case failed or a tensor was BAD):

    timeout 120 python scripts/sm90_smoke.py
"""

from __future__ import annotations

import os
import sys

import torch

import freescale_ext  # noqa: F401  (registers torch.ops.freescale)


def pinned(forward: str, backward: str) -> None:
    os.environ["FREESCALE_HSTU_FORWARD"] = forward
    os.environ["FREESCALE_HSTU_BACKWARD"] = backward


def run(q, k, v, dout, offsets, n, alpha, bias, forward: str, backward: str):
    """Output, dq, dk, dv and the bias tables' gradients (empty where off) of the pinned
    kernels."""
    pinned(forward, backward)
    args = (offsets, n, alpha, None, 0, 0, *bias)
    out = torch.ops.freescale.hstu_attention(q, k, v, *args)
    grads = torch.ops.freescale.hstu_attention_backward(dout, q, k, v, *args)
    torch.cuda.synchronize()
    return [out, *grads]


def error_pattern(got: torch.Tensor, want: torch.Tensor, offsets: torch.Tensor) -> str:
    """Max |error| per (row in its sequence mod 64) // 8 x (column mod 64) // 8 cell, relative
    to max |want|: 8 x 8 cells, rows by warp-sized groups, columns by 8-column chunks."""
    err = (got.float() - want.float()).abs().amax(dim=1)  # [T, d]
    token = torch.arange(err.shape[0], device=err.device)
    starts = offsets[torch.searchsorted(offsets, token, right=True) - 1]
    rows = (token - starts) % 64 // 8
    cols = torch.arange(err.shape[1], device=err.device) % 64 // 8
    scale = want.float().abs().max().clamp_min(1e-30)
    grid = torch.zeros(8, 8, device=err.device)
    for r in range(8):
        for c in range(8):
            cell = err[rows == r][:, cols == c]
            grid[r, c] = cell.max() / scale if cell.numel() else 0
    return "\n".join("    " + " ".join(f"{x:7.1e}" for x in row) for row in grid.tolist())


def main() -> None:
    # The kernels' tile list, the full grid it replaces, the overlapped forward loops and the
    # backward's dQ atomics (the default: bulk dQ reductions).
    settings = (
        ("1", "plain", "bulk"),
        ("0", "plain", "bulk"),
        ("1", "overlap", "bulk"),
        ("1", "pingpong", "bulk"),
        ("1", "plain", "atomic"),
    )
    names = ("FREESCALE_HSTU_TILE_LIST", "FREESCALE_HSTU_SM90_LOOP", "FREESCALE_HSTU_SM90_DQ")
    bad = 0
    for values in settings:
        os.environ.update(zip(names, values, strict=True))
        print("--- " + " ".join(f"{n}={v}" for n, v in zip(names, values, strict=True)))
        bad += check_every_case()
    for name in names:
        del os.environ[name]
    if bad:
        print(f"{bad} bad tensors or failed cases")
        sys.exit(1)


def check_every_case() -> int:
    """Runs every case under the current settings; the number of failed cases and BAD
    tensors."""
    bad = 0
    torch.manual_seed(0)
    for dim in (64, 128, 256):
        # The last: 150 sequences, ~870 work items over both heads, so that the persistent
        # forward's blocks walk several items each.
        many = torch.randint(0, 601, (150,), generator=torch.Generator().manual_seed(1)).tolist()
        for lengths in ([256], [130, 7, 300], many):
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
                backward = "sm90"
                shown = lengths if len(lengths) < 10 else f"<{len(lengths)} sequences>"
                case = f"d={dim} lengths={shown} bias={with_bias} (backward {backward})"
                want = run(q, k, v, dout, offsets, n, alpha, bias, "simple", "simple")
                try:
                    got = run(q, k, v, dout, offsets, n, alpha, bias, "sm90", backward)
                except RuntimeError as err:
                    print(f"{case}: FAILED {err}")
                    bad += 1
                    continue
                names = ("out", "dq", "dk", "dv", "dpos", "dts")
                for name, g, w in zip(names, got, want, strict=True):
                    if w.numel() == 0:
                        continue
                    rel = ((g.float() - w.float()).abs().max() / w.float().abs().max()).item()
                    flag = "ok" if rel < 2e-2 and g.isfinite().all() else "BAD"
                    print(f"{case} {name}: rel {rel:.2e} {flag}")
                    bad += flag == "BAD"
                    if flag == "BAD" and g.dim() == 3:
                        print(error_pattern(g, w, offsets))
    pinned("simple", "simple")
    return bad


if __name__ == "__main__":
    main()
