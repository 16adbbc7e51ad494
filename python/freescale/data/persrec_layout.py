"""PerSRec row layouts (DESIGN §5): a user's rows are [segment | token group | ... | recent].

Pure host-side index arithmetic: which row holds which item (or which of the K shared tokens),
its region (segment id; a token group takes the id of the segment before it, recent items get
their own) and its position in the user's whole layout.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from freescale.data.csr import offsets_from_lengths


@dataclass
class PerSRecLayout:
    """Rows of a batch of users (host arrays), for items given packed per user."""

    seq_offsets: np.ndarray  # int64 [B+1] rows per user
    item_index: np.ndarray  # int64 [T] index into the packed item ids, -1 at token rows
    token_index: np.ndarray  # int64 [T] which of the K tokens, -1 at item rows
    region: np.ndarray  # int32 [T]
    position: np.ndarray  # int64 [T] position in the user's whole layout
    next_position: np.ndarray  # int64 [B] position of each user's next row
    next_region: np.ndarray  # int64 [B] region of each user's next segment

    @property
    def is_token(self) -> np.ndarray:
        return self.token_index >= 0

    @property
    def max_len(self) -> int:
        return int(np.diff(self.seq_offsets).max(initial=0))


def build_layout(
    item_counts: np.ndarray,
    num_tokens: int,
    segment_len: int,
    *,
    compress: bool,
    start_position: np.ndarray | None = None,
    start_region: np.ndarray | None = None,
) -> PerSRecLayout:
    """Layout of `item_counts[u]` new items per user, packed per user in order.

    compress=True: the items are history, cut into segments of `segment_len` (0: one segment),
    each followed by a token group. compress=False: recent items, one region, no tokens.
    start_position/start_region continue a user's earlier rows (cached ones).
    """
    counts = np.asarray(item_counts, dtype=np.int64)
    users = counts.size
    pos0 = np.zeros(users, np.int64) if start_position is None else np.asarray(start_position)
    reg0 = np.zeros(users, np.int64) if start_region is None else np.asarray(start_region)
    # Per user: segments of `size` items (the last one shorter), each followed by k tokens when
    # compressing; recent items are one token-less segment. Vectorized over rows: serving
    # builds a layout per request batch, so this is on the latency path.
    active = counts > 0
    if compress:
        size = np.where(active, segment_len if segment_len > 0 else counts, 1)
        groups = np.where(active, -(-counts // size), 0)
        k = num_tokens
    else:
        size, groups, k = np.maximum(counts, 1), active.astype(np.int64), 0
    rows = counts + groups * k
    seq_offsets = offsets_from_lengths(rows)
    user = np.repeat(np.arange(users), rows)
    r = np.arange(int(seq_offsets[-1]), dtype=np.int64) - seq_offsets[user]
    size_u, groups_u = size[user], groups[user]
    seg = np.minimum(r // (size_u + k), np.maximum(groups_u - 1, 0))
    off = r - seg * (size_u + k)
    seg_len = np.where(seg < groups_u - 1, size_u, counts[user] - seg * size_u)
    is_token = off >= seg_len
    item_base = offsets_from_lengths(counts)
    return PerSRecLayout(
        seq_offsets=seq_offsets,
        item_index=np.where(is_token, -1, item_base[user] + seg * size_u + off),
        token_index=np.where(is_token, off - seg_len, -1),
        region=(reg0[user] + seg).astype(np.int32),
        position=pos0[user] + r,
        next_position=pos0.astype(np.int64) + rows,
        next_region=reg0.astype(np.int64) + (groups if compress else 0),
    )


def build_sequence_layout(
    chunks: list[tuple[np.ndarray, bool]], num_tokens: int, segment_len: int
) -> PerSRecLayout:
    """One layout of consecutive chunks per user, e.g. [(history, True), (recent, False)]: each
    chunk is `build_layout(counts, compress=...)` continuing the previous one. Items are packed
    per user, chunk after chunk: user u's items of chunk c follow its items of chunks < c."""
    counts = np.stack([np.asarray(c, dtype=np.int64) for c, _ in chunks])  # [C, U]
    users = counts.shape[1]
    user_start = offsets_from_lengths(counts.sum(axis=0))
    before = np.cumsum(counts, axis=0) - counts  # items of earlier chunks, per user
    parts, position, region = [], None, None
    for c, (_, compress) in enumerate(chunks):
        lay = build_layout(
            counts[c],
            num_tokens,
            segment_len,
            compress=compress,
            start_position=position,
            start_region=region,
        )
        position, region = lay.next_position, lay.next_region
        rows = np.diff(lay.seq_offsets)
        user = np.repeat(np.arange(users), rows)
        chunk_start = offsets_from_lengths(counts[c])
        is_item = lay.item_index >= 0
        item_index = np.where(
            is_item,
            user_start[user] + before[c, user] + (lay.item_index - chunk_start[user]),
            -1,
        )
        parts.append((user, np.full(len(user), c), item_index, lay))
    user = np.concatenate([p[0] for p in parts])
    order = np.lexsort((np.concatenate([p[1] for p in parts]), user))  # by user, then chunk
    cat = lambda name: np.concatenate([getattr(p[3], name) for p in parts])[order]  # noqa: E731
    return PerSRecLayout(
        seq_offsets=offsets_from_lengths(np.bincount(user, minlength=users).astype(np.int64)),
        item_index=np.concatenate([p[2] for p in parts])[order],
        token_index=cat("token_index"),
        region=cat("region"),
        position=cat("position"),
        next_position=position,
        next_region=region,
    )
