"""Host-side plans of PerSRec passes: every index array a pass needs, packed into one int64
buffer.

A plan is pure numpy. `device_buffer` moves it to the device with one (pinned, asynchronous)
copy, and the pass splits the buffer by `sizes`. So a pass over a planned batch reads no host
value: it launches the same kernels for every batch of the same `signature`, which lets
serving replay it as a CUDA graph (`freescale.cuda_graph`).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from freescale.data.csr import offsets_from_lengths
from freescale.data.persrec_layout import PerSRecLayout


@dataclass(frozen=True)
class Plan:
    """Named int64 arrays packed back to back."""

    packed: np.ndarray  # int64, the arrays concatenated
    names: tuple[str, ...]
    sizes: tuple[int, ...]
    max_len: int  # longest sequence the pass attends over (its padded width)

    @classmethod
    def pack(cls, arrays: dict[str, np.ndarray], max_len: int) -> Plan:
        parts = [np.asarray(a, dtype=np.int64).ravel() for a in arrays.values()]
        return cls(
            np.concatenate(parts) if parts else np.zeros(0, np.int64),
            tuple(arrays),
            tuple(p.size for p in parts),
            int(max_len),
        )

    @property
    def signature(self) -> tuple:
        """What the pass's kernels depend on besides the buffers' contents."""
        return (self.names, self.sizes, self.max_len)

    def device_buffer(
        self, device: torch.device | str, staging: PinnedStaging | None = None
    ) -> torch.Tensor:
        """The packed arrays on `device`: through `staging` (a reused pinned buffer) when
        given, else through a freshly pinned copy."""
        host = torch.from_numpy(self.packed)
        device = torch.device(device)
        if device.type != "cuda":
            return host.to(device)
        if staging is not None:
            return staging.upload(self.packed, device)
        # The copy is asynchronous; the caching host allocator keeps the pinned block until it
        # has run.
        return host.pin_memory().to(device, non_blocking=True)


class PinnedStaging:
    """One pinned host buffer reused for every upload (a server's per-request path): a copy
    into it, then an asynchronous copy to the device, instead of pinning fresh memory per call.
    An event guards the buffer until its last upload has run."""

    def __init__(self) -> None:
        self._host: torch.Tensor | None = None
        self._done: torch.cuda.Event | None = None

    def upload(self, packed: np.ndarray, device: torch.device) -> torch.Tensor:
        n = packed.size
        if self._host is None or self._host.numel() < n:
            self._host = torch.empty(max(n, 2 * (0 if self._host is None else self._host.numel())),
                                     dtype=torch.int64, pin_memory=True)  # fmt: skip
        elif self._done is not None:
            self._done.synchronize()  # the previous upload still reads the buffer
        host = self._host[:n]
        host.numpy()[:] = packed
        out = torch.empty(n, dtype=torch.int64, device=device)
        out.copy_(host, non_blocking=True)
        self._done = torch.cuda.Event()
        self._done.record()
        return out


def unpack(buffer: torch.Tensor, names: tuple[str, ...], sizes: tuple[int, ...]) -> dict:
    """The named views of a plan's device buffer."""
    return dict(zip(names, torch.split(buffer, list(sizes)), strict=True))


def rows_arrays(layout: PerSRecLayout) -> dict[str, np.ndarray]:
    """What building a layout's input rows needs: item and token indices, positions."""
    return {
        "item_index": layout.item_index,
        "token_index": layout.token_index,
        "position": layout.position,
    }


def encode_plan(layout: PerSRecLayout) -> Plan:
    """The full masked pass over `layout`."""
    arrays = {
        "seq_offsets": layout.seq_offsets,
        "region": layout.region,
        "is_token": layout.is_token,
        **rows_arrays(layout),
    }
    return Plan.pack(arrays, layout.max_len)


def joint_order(cached_offsets: np.ndarray, new_offsets: np.ndarray):
    """Per user [cached rows | new rows]: (joint offsets, order, new_rows) where
    order[joint row] is the row of cat([cached, new]) and new_rows the joint rows of the new."""
    cached_lens, new_lens = np.diff(cached_offsets), np.diff(new_offsets)
    cached = int(cached_offsets[-1])
    joint = offsets_from_lengths(cached_lens + new_lens)
    user_c = np.repeat(np.arange(cached_lens.size), cached_lens)
    user_n = np.repeat(np.arange(new_lens.size), new_lens)
    cached_rows = joint[user_c] + (np.arange(cached) - cached_offsets[user_c])
    new_rows = joint[user_n] + cached_lens[user_n] + (np.arange(len(user_n)) - new_offsets[user_n])
    order = np.empty(int(joint[-1]), np.int64)
    order[cached_rows] = np.arange(cached)
    order[new_rows] = cached + np.arange(len(new_rows))
    return joint, order, new_rows


def extend_plan(cached_offsets: np.ndarray, layout: PerSRecLayout) -> Plan:
    """New rows `layout` attending to [cached token rows | new rows] of every user."""
    cached = int(cached_offsets[-1])
    joint, order, new_rows = joint_order(cached_offsets, layout.seq_offsets)
    region = np.concatenate([np.full(cached, -1, np.int64), layout.region])[order]
    is_token = np.concatenate([np.ones(cached, bool), layout.is_token])[order]
    arrays = {
        "joint_offsets": joint,
        "order": order,
        "new_rows": new_rows,
        "region": region,
        "is_token": is_token,
        "token_rows": np.flatnonzero(layout.is_token),
        "last_rows": layout.seq_offsets[1:] - 1,  # each user's last new row (if any)
        **rows_arrays(layout),
    }
    return Plan.pack(arrays, int(np.diff(joint).max(initial=0)))
