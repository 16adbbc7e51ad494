"""Negatives drawn by hashing, so that they depend on the sample and not on the process.

A sampled-softmax negative drawn from a device generator depends on which rank computed the
position and in which order; after batch balancing moves a sample to another rank, its
negatives would change and balanced training would no longer equal unbalanced training. Here
the negatives of a position are a hash of (salt, key, k), where the key names the position in
the dataset and the salt names the optimizer step: any rank, any batch layout, same negatives.

The hash is the "lowbias32" integer mixer evaluated in int64 torch arithmetic. Values stay in
[0, 2^32) and each 32x32-bit product is split into two products below 2^48, so nothing
overflows on CPU or GPU and both give the same bits.
"""

from __future__ import annotations

import torch

_MASK32 = 0xFFFFFFFF
_MASK16 = 0xFFFF
_GOLDEN = 0x9E3779B1


def _mul32(x: torch.Tensor, c: int) -> torch.Tensor:
    """x * c mod 2^32 for x in [0, 2^32): low and high 16 bits of c separately."""
    high = ((x * (c >> 16)) & _MASK16) << 16
    return (x * (c & _MASK16) + high) & _MASK32


def _mix32(x: torch.Tensor) -> torch.Tensor:
    x = x ^ (x >> 16)
    x = _mul32(x, 0x7FEB352D)
    x = x ^ (x >> 15)
    x = _mul32(x, 0x846CA68B)
    return x ^ (x >> 16)


def mix_salt(*parts: int) -> int:
    """A 32-bit salt from non-negative integers (e.g. seed and step), on the host."""
    h = 0
    for part in parts:
        h = int(_mix32(torch.tensor([(h ^ (part & _MASK32)) & _MASK32]))[0])
        h = int(_mix32(torch.tensor([(h ^ ((part >> 32) & _MASK32)) & _MASK32]))[0])
    return h


def hashed_negatives(
    keys: torch.Tensor, salt: int, num_negatives: int, num_items: int
) -> torch.Tensor:
    """[N, num_negatives] item ids in 1..num_items, a function of (salt, key, column) only.

    keys: int64 [N], non-negative (e.g. each target's index in the dataset's item array).
    """
    if keys.dtype != torch.int64:
        raise TypeError(f"keys must be int64, got {keys.dtype}")
    if num_items < 1 or num_items > _MASK32:
        raise ValueError(f"num_items must be in 1..2^32-1, got {num_items}")
    h = _mix32((keys & _MASK32) ^ (salt & _MASK32))
    h = _mix32(h ^ ((keys >> 32) & _MASK32))
    columns = (torch.arange(num_negatives, device=keys.device) * _GOLDEN) & _MASK32
    return 1 + _mix32(h[:, None] ^ columns[None, :]) % num_items
