"""The sm_90a kernels' tile-list plan (csrc/attention/hopper/tile_list.h), on the CPU: when a
list of work items applies, when it pays for its builder's launch, how many entries it holds and
what workspace the op allocates for it. The GPU tests check that the list and the full grid
agree; these pin the host's choice between them, which those cannot see."""

from __future__ import annotations

import math

import pytest

from freescale_ext import _C

pytestmark = pytest.mark.skipif(
    not hasattr(_C, "hstu_tile_list_plan"), reason="built without CUDA (no sm_90a kernels)"
)

MAX_TILE_LEVELS = 4096  # kMaxTileLevels: tiles per sequence the list can order
HEADER_INTS = 2  # kTileListHeader: the count and the persistent forward's claim counter


def expected_capacity(total_len: int, batch: int, max_seq_len: int, heads: int, tile: int) -> int:
    """(sequence, tile) pairs the tokens can make (sum of ceil(len / tile) <= ceil(T / tile) + B),
    at most the full grid's B * ceil(max_seq_len / tile), for every head."""
    by_tokens = math.ceil(total_len / tile) + batch
    by_grid = batch * math.ceil(max_seq_len / tile)
    return min(by_tokens, by_grid) * heads


def plan(total_len: int, batch: int, max_seq_len: int, heads: int, tile: int = 128) -> dict:
    return _C.hstu_tile_list_plan(total_len, batch, max_seq_len, heads, tile)


def test_ml1m_dense_short_batch_skips_the_list():
    # 128 sequences of 200 (two key tiles each): the full grid launches no more blocks than
    # the list could hold, so the builder's launch would buy nothing.
    got = plan(128 * 200, 128, 200, 2)
    assert got["applies"] and not got["pays"]
    assert got["capacity"] == expected_capacity(128 * 200, 128, 200, 2, 128)
    assert got["workspace_bytes"] == 0


def test_long_tailed_batch_takes_the_list():
    total, batch, max_len, heads = 262144, 650, 4096, 4
    got = plan(total, batch, max_len, heads)
    capacity = expected_capacity(total, batch, max_len, heads, 128)
    assert got["applies"] and got["pays"]
    assert got["capacity"] == capacity
    # int32 header, then one (sequence, head * kMaxTileLevels + tile) pair per entry
    assert got["workspace_bytes"] == 4 * (HEADER_INTS + 2 * capacity)


def test_short_sequences_under_a_long_maximum_take_the_list():
    # Two tiles per sequence allowed, but 10-token sequences fill far fewer: the list prunes.
    got = plan(128 * 10, 128, 256, 2)
    assert got["pays"]
    assert got["capacity"] == (math.ceil(1280 / 128) + 128) * 2  # the tokens bound the list


@pytest.mark.parametrize(
    ("total_len", "batch", "max_seq_len"),
    [(4 * 256, 4, 256), (1000 * 64, 1000, 64)],  # two full tiles each; one tile each
)
def test_full_batches_of_at_most_two_tiles_skip_the_list(total_len, batch, max_seq_len):
    got = plan(total_len, batch, max_seq_len, 4)
    assert got["applies"] and not got["pays"]
    assert got["workspace_bytes"] == 0


def test_three_tiles_per_sequence_take_the_list_even_when_dense():
    # With more than two tiles the heaviest-first order is worth sorting.
    got = plan(64 * 384, 64, 384, 4)
    assert got["pays"]
    assert got["workspace_bytes"] == 4 * (
        HEADER_INTS + 2 * expected_capacity(64 * 384, 64, 384, 4, 128)
    )


def test_too_many_tiles_per_sequence_fall_back_to_the_grid():
    max_len = (MAX_TILE_LEVELS + 1) * 128
    got = plan(max_len, 1, max_len, 1)
    assert not got["applies"]
    assert got["workspace_bytes"] == 0
    assert plan(MAX_TILE_LEVELS * 128, 1, MAX_TILE_LEVELS * 128, 1)["applies"]


def test_bad_arguments_raise():
    with pytest.raises(ValueError, match="batch_size"):
        plan(100, 0, 100, 1)
    with pytest.raises(ValueError, match="total_len"):
        plan(-1, 1, 100, 1)
