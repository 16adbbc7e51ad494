"""A small compressed (PerSRec) attention case for compute-sanitizer (memcheck, racecheck):
segments and a single group, empty and one-row sequences, both dtypes, each head-dim bucket,
block-sparse and dense-tile modes, forward and backward."""

import torch

import freescale_ext


def run_case(dtype: torch.dtype, dim: int, skip: bool) -> None:
    gen = torch.Generator().manual_seed(dim)
    # [history 70 with a 3-token group every 30 | 9 recent], empty, one row, [5 tokens | 2 recent].
    regions, tokens, lengths = [], [], []
    for seq in ([(30, 3), (30, 3), (10, 3)], [], [(0, 1)], [(0, 5)]):
        region, token = [], []
        for s, (items, group) in enumerate(seq):
            region += [s] * (items + group)
            token += [False] * items + [True] * group
        recent = {0: 9, 3: 2}.get(len(lengths), 0)
        region += [len(seq)] * recent
        token += [False] * recent
        regions += region
        tokens += token
        lengths.append(len(region))
    offsets = torch.tensor([0, *torch.tensor(lengths).cumsum(0).tolist()], dtype=torch.int32)
    total, heads = int(offsets[-1]), 2

    def rand(*shape):
        return torch.randn(*shape, generator=gen).to("cuda", dtype).requires_grad_()

    q, k, v = rand(total, heads, dim), rand(total, heads, dim), rand(total, heads, dim)
    out = freescale_ext.compressed_attention(
        q,
        k,
        v,
        offsets.cuda(),
        torch.tensor(regions, dtype=torch.int32, device="cuda"),
        torch.tensor(tokens, device="cuda"),
        max(lengths),
        alpha=0.5,
        skip_empty_tiles=skip,
    )
    out.backward(torch.randn_like(out))
    torch.cuda.synchronize()


if __name__ == "__main__":
    for dtype in (torch.bfloat16, torch.float16):
        for dim in (25, 64, 128):
            for skip in (True, False):
                run_case(dtype, dim, skip)
    print("sanitize cases ran")
