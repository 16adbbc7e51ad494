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
    item_base = offsets_from_lengths(counts)
    items, tokens, regions, positions, lengths = [], [], [], [], []
    next_position, next_region = pos0.astype(np.int64).copy(), reg0.astype(np.int64).copy()
    for u in range(users):
        n = int(counts[u])
        if compress and n > 0:
            size = segment_len if segment_len > 0 else n
            starts = np.arange(0, n, size)
            seg_lens = np.minimum(size, n - starts)
        else:
            starts, seg_lens = np.array([0]), np.array([n])
        rows_items, rows_tokens, rows_region = [], [], []
        region = int(reg0[u])
        for start, seg in zip(starts, seg_lens, strict=True):
            rows_items.append(item_base[u] + start + np.arange(seg))
            rows_tokens.append(np.full(seg, -1))
            rows_region.append(np.full(seg, region))
            if compress and seg > 0:
                rows_items.append(np.full(num_tokens, -1))
                rows_tokens.append(np.arange(num_tokens))
                rows_region.append(np.full(num_tokens, region))
                region += 1
        row_count = int(sum(len(r) for r in rows_items))
        items += rows_items
        tokens += rows_tokens
        regions += rows_region
        positions.append(pos0[u] + np.arange(row_count))
        lengths.append(row_count)
        next_position[u] += row_count
        next_region[u] = region
    cat = lambda parts, dtype: np.concatenate(parts).astype(dtype) if parts else np.zeros(0, dtype)  # noqa: E731
    return PerSRecLayout(
        seq_offsets=offsets_from_lengths(np.array(lengths, np.int64)),
        item_index=cat(items, np.int64),
        token_index=cat(tokens, np.int64),
        region=cat(regions, np.int32),
        position=cat(positions, np.int64),
        next_position=next_position,
        next_region=next_region,
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
