"""A small HSTU attention case for compute-sanitizer (memcheck, racecheck, synccheck): every mask
feature and both bias tables, forward and backward, each supported dtype and head-dim bucket,
through the simple kernels and then the sm_90a kernels (on an sm_90 GPU; lengths that straddle
their tiles; the forward's three loops)."""

import os

import torch

import freescale_ext


def run_case(
    dtype: torch.dtype, dim: int, lengths: list[int], bias: bool = True, masks: bool = True
) -> None:
    """masks=False: plain causal, so the kernels' fully-visible fast path runs too."""
    gen = torch.Generator().manual_seed(dim)
    offsets = torch.tensor([0, *torch.tensor(lengths).cumsum(0).tolist()], dtype=torch.int32)
    total, heads, n = int(offsets[-1]), 2, max(lengths) + 8

    def rand(*shape):
        return torch.randn(*shape, generator=gen).to("cuda", dtype).requires_grad_()

    q, k, v = rand(total, heads, dim), rand(total, heads, dim), rand(total, heads, dim)
    timestamps = torch.randint(0, 10**6, (total,), generator=gen).cumsum(0).cuda()
    pos = torch.randn(2 * n - 1, device="cuda", requires_grad=True)
    ts = torch.randn(129, device="cuda", requires_grad=True)
    out = freescale_ext.hstu_attention(
        q,
        k,
        v,
        offsets.cuda(),
        n,
        alpha=0.5,
        num_targets=torch.tensor([i % 4 for i in range(len(lengths))], dtype=torch.int32).cuda(),
        contextual_len=2 if masks else 0,
        max_attn_len=9 if masks else 0,
        pos_weight=pos if bias else None,
        ts_weight=ts if bias else None,
        timestamps=timestamps if bias else None,
    )
    out.backward(torch.randn_like(out))
    torch.cuda.synchronize()


if __name__ == "__main__":
    os.environ["FREESCALE_HSTU_FORWARD"] = os.environ["FREESCALE_HSTU_BACKWARD"] = "simple"
    for dtype in (torch.float32, torch.bfloat16, torch.float16):
        for dim in (25, 64, 128, 256):
            run_case(dtype, dim, [0, 1, 17, 40, 5])
    if torch.cuda.get_device_capability()[0] == 9:
        os.environ["FREESCALE_HSTU_FORWARD"] = "sm90"
        for dtype in (torch.bfloat16, torch.float16):
            for dim in (64, 128, 256):
                run_case(dtype, dim, [0, 1, 130, 5, 300])
        os.environ["FREESCALE_HSTU_BACKWARD"] = "sm90"
        for dtype in (torch.bfloat16, torch.float16):
            for dim in (64, 128, 256):
                for bias in (True, False):
                    run_case(dtype, dim, [0, 1, 130, 5, 300], bias=bias)
                run_case(dtype, dim, [0, 1, 130, 5, 300], bias=False, masks=False)
        # The forward's overlapped and ping-pong loops (named barriers), without the bias.
        for loop in ("overlap", "pingpong"):
            os.environ["FREESCALE_HSTU_SM90_LOOP"] = loop
            for dim in (64, 128, 256):
                run_case(torch.bfloat16, dim, [0, 1, 130, 5, 300], bias=False)
        del os.environ["FREESCALE_HSTU_SM90_LOOP"]
        # The backward's dQ atomics (d = 64 and 128, and d = 256's plain kernel; the bulk
        # reductions are the default), bias on and off; and a batch of more work items than SMs,
        # so that persistent blocks walk several.
        os.environ["FREESCALE_HSTU_SM90_DQ"] = "atomic"
        for dim in (64, 128):
            for bias in (True, False):
                run_case(torch.bfloat16, dim, [0, 1, 130, 5, 300], bias=bias)
        run_case(torch.bfloat16, 256, [0, 1, 130, 5, 300], bias=False)
        del os.environ["FREESCALE_HSTU_SM90_DQ"]
        run_case(torch.bfloat16, 128, [130, 5, 300, 64] * 60, bias=True)
    print("sanitize cases ran")
