"""CPU tests of the data layer: readers, sequences, splits, synthetic data, batches, sampler."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pytest
import torch

from freescale.data import (
    REGISTERED_DATASETS,
    EpochBatchSampler,
    SequenceData,
    SyntheticConfig,
    data_root,
    detect_format,
    from_interactions,
    leave_one_out,
    load_dataset,
    make_eval_batch,
    make_synthetic,
    make_train_batch,
    read_interactions,
    read_table,
)


def write(tmp_path: Path, name: str, text: str) -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def sequences(data: SequenceData) -> list[list[int]]:
    return [data.items(u).tolist() for u in range(data.num_users)]


def csr(rows: list[list[int]], num_items: int, with_times: bool = False) -> SequenceData:
    lengths = [len(r) for r in rows]
    items = np.array([i for r in rows for i in r], dtype=np.int64)
    times = np.arange(len(items), dtype=np.int64) * 10 if with_times else None
    offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
    return SequenceData(items, offsets, num_items, timestamps=times)


# -- sequences ------------------------------------------------------------------------------------


def test_from_interactions_sorts_by_time_with_stable_ties_and_remaps_ids():
    data = from_interactions(
        users=[2, 1, 2, 1, 2],
        items=[300, 100, 200, 500, 100],
        timestamps=[5, 7, 5, 3, 1],
        name="tiny",
    )
    # Users in sorted key order; items renumbered by sorted key: 100->1, 200->2, 300->3, 500->4.
    assert data.user_keys.tolist() == [1, 2]
    assert data.item_keys.tolist()[1:] == [100, 200, 300, 500]
    assert data.num_items == 4
    # User 2 has two items at time 5: file order (300 before 200) breaks the tie.
    assert sequences(data) == [[4, 1], [1, 3, 2]]
    assert data.timestamps.tolist() == [3, 7, 1, 5, 5]
    assert data.offsets.tolist() == [0, 2, 5]
    assert data.lengths.tolist() == [2, 3]
    assert data.num_interactions == 5
    assert data.times(1).tolist() == [1, 5, 5]
    assert data.name == "tiny"


def test_from_interactions_without_time_keeps_file_order_or_follows_order():
    users, items = ["b", "a", "b", "a"], ["x", "y", "y", "x"]
    in_file_order = from_interactions(users, items)
    assert in_file_order.user_keys.tolist() == ["a", "b"]
    assert sequences(in_file_order) == [[2, 1], [1, 2]]
    assert in_file_order.timestamps is None
    reordered = from_interactions(users, items, order=[1, 1, 0, 0])
    assert sequences(reordered) == [[1, 2], [2, 1]]


def test_from_interactions_rejects_empty_and_mismatched_input():
    with pytest.raises(ValueError, match="no interactions"):
        from_interactions([], [])
    with pytest.raises(ValueError, match="equal-length"):
        from_interactions([1, 2], [1])
    with pytest.raises(ValueError, match="timestamps"):
        from_interactions([1, 2], [1, 2], timestamps=[1])


def test_select_and_truncate_last():
    data = csr([[1, 2, 3], [4], [5, 6]], num_items=6, with_times=True)
    picked = data.select(np.array([2, 0, 2]))
    assert sequences(picked) == [[5, 6], [1, 2, 3], [5, 6]]
    assert picked.timestamps.tolist() == [40, 50, 0, 10, 20, 40, 50]
    assert picked.num_items == 6
    cut = data.truncate_last(1)
    assert sequences(cut) == [[1, 2], [], [5]]
    assert cut.timestamps.tolist() == [0, 10, 40]
    assert sequences(data.truncate_last(5)) == [[], [], []]
    with pytest.raises(IndexError, match="out of range"):
        data.select(np.array([3]))
    with pytest.raises(TypeError, match="integer"):
        data.select(np.array([0.0]))


@pytest.mark.parametrize(
    "fields, message",
    [
        (dict(offsets=np.array([1, 2], dtype=np.int64)), "start with 0"),
        (dict(offsets=np.array([0, 3], dtype=np.int64)), "offsets\\[-1\\]"),
        (dict(offsets=np.array([0, 2, 1, 2], dtype=np.int64)), "non-decreasing"),
        (dict(item_ids=np.array([0, 1], dtype=np.int64)), "1..num_items"),
        (dict(item_ids=np.array([1, 2], dtype=np.int32)), "int64"),
        (dict(num_items=1), "1..num_items"),
        (dict(timestamps=np.array([1], dtype=np.int64)), "timestamps"),
        (dict(user_keys=np.array([1, 2])), "user_keys"),
        (dict(item_keys=np.array([0, 1])), "item_keys"),
    ],
)
def test_validate_names_the_inconsistency(fields, message):
    arrays = dict(
        item_ids=np.array([1, 2], dtype=np.int64),
        offsets=np.array([0, 2], dtype=np.int64),
        num_items=2,
    )
    with pytest.raises(ValueError, match=message):
        SequenceData(**{**arrays, **fields})


# -- readers --------------------------------------------------------------------------------------

# The same log in every format: user 1 rated item 20 (t=50) then item 10 (t=100), user 2 item 10.
EXPECTED = [[2, 1], [1]]
FORMAT_FILES = {
    "movielens-dat": ("ratings.dat", "1::10::5::100\n1::20::3::50\n2::10::4::70\n"),
    "movielens-csv": (
        "ratings.csv",
        "userId,movieId,rating,timestamp\n1,10,4.5,100\n1,20,3.0,50\n2,10,4,70\n",
    ),
    "ml100k": ("u.data", "1\t10\t5\t100\n1\t20\t3\t50\n2\t10\t4\t70\n"),
    "user-sequence": ("seq.txt", "1 20 10\n\n2 10\n"),
    "user-item": ("pairs.txt", "1 20\n1 10\n2 10\n"),
    "table": ("log.csv", "user_id,item_id,timestamp\n1,10,100\n1,20,50\n2,10,70\n"),
}
TIMED = {"movielens-dat", "movielens-csv", "ml100k", "table"}


@pytest.mark.parametrize("fmt", list(FORMAT_FILES))
def test_each_reader_and_auto_detection(tmp_path, fmt):
    name, text = FORMAT_FILES[fmt]
    path = write(tmp_path, name, text)
    assert detect_format(path) == fmt
    for data in (read_interactions(path, fmt), read_interactions(path)):
        assert sequences(data) == EXPECTED
        assert data.user_keys.tolist() == [1, 2]
        assert data.item_keys.tolist()[1:] == [10, 20]
        assert data.name == path.stem
        if fmt in TIMED:
            assert data.timestamps.tolist() == [50, 100, 70]
        else:
            assert data.timestamps is None


@pytest.mark.parametrize(
    "name, text, fmt",
    [
        ("a.txt", "1 5\n1 6 7\n", "user-sequence"),  # decided by the widest of the first lines
        ("a.txt", "7\t8\n", "user-item"),
        ("data.csv", "user,item\nu,i\n", "table"),
        ("x.dat", "\n\n1::2::3::4\n", "movielens-dat"),
        ("t.parquet", "", "table"),
    ],
)
def test_detect_format(tmp_path, name, text, fmt):
    assert detect_format(write(tmp_path, name, text)) == fmt


def test_detect_format_fails_clearly(tmp_path):
    with pytest.raises(ValueError, match="empty file"):
        detect_format(write(tmp_path, "empty.txt", "\n  \n"))
    with pytest.raises(ValueError, match="PATH:FORMAT"):
        detect_format(write(tmp_path, "one.txt", "1\n2\n"))


@pytest.mark.parametrize(
    "fmt, text, line, message",
    [
        ("movielens-dat", "1::10::5::100\n1::20::3\n", 2, "expected 4 columns"),
        ("movielens-dat", "1::10::5::100\n1:20::3::4\n", 2, "'1:20' is not an integer"),
        ("ml100k", "1\t10\t5\t100\n\n2\tx\t3\t5\n", 3, "'x' is not an integer"),
        ("user-item", "1 5\n1 6 7\n", 2, "expected 2 columns"),
        ("user-item", "1 5\n2 5.5\n", 2, "'5.5' is not an integer"),
        ("user-item", "1 5\n1-2 3\n", 2, "'1-2' is not an integer"),
        ("user-sequence", "1 5 6\n7\n", 2, "at least one item"),
        ("movielens-csv", "userId,movieId,rating,timestamp\n1,2,3,4\n1,2.5,3,7\n", 3, "movieId"),
        ("movielens-csv", "userId,movieId,rating,timestamp\n1,2,3,4\n1,2,3\n", 3, "4 columns"),
        ("movielens-csv", "userId,movieId,timestamp\n1,2,x\n", 2, "'x' is not a number"),
        ("table", "user,item,timestamp\na,b,1\na,c\n", 3, "expected 3 fields"),
        ("table", "user,item,timestamp\na,b,1\na,c,soon\n", 3, "'soon' is not an integer"),
    ],
)
def test_malformed_lines_raise_with_file_and_line(tmp_path, fmt, text, line, message):
    path = write(tmp_path, "bad.txt" if fmt != "table" else "bad.csv", text)
    with pytest.raises(ValueError, match=message) as error:
        read_interactions(path, fmt)
    assert f"{path}:{line}:" in str(error.value)


@pytest.mark.parametrize("fmt", list(FORMAT_FILES))
def test_empty_files_are_errors(tmp_path, fmt):
    path = write(tmp_path, "blank.csv", "\n")
    with pytest.raises(ValueError, match="empty file|no data rows"):
        read_interactions(path, fmt)


def test_movielens_csv_header_must_name_the_columns(tmp_path):
    path = write(tmp_path, "r.csv", "user,movieId,timestamp\n1,2,3\n")
    with pytest.raises(ValueError, match="userId"):
        read_interactions(path, "movielens-csv")


def test_table_with_string_keys_named_columns_and_no_time(tmp_path):
    path = write(tmp_path, "t.csv", "who,what,when\nbob,x,3\nann,y,9\nbob,y,1\n")
    data = read_table(path, user_column="who", item_column="what", time_column="when")
    assert data.user_keys.tolist() == ["ann", "bob"]
    assert sequences(data) == [[2], [2, 1]]
    untimed = read_table(write(tmp_path, "u.csv", "user,item\n2,b\n1,a\n2,a\n"))
    assert untimed.timestamps is None
    assert sequences(untimed) == [[1], [2, 1]]
    with pytest.raises(ValueError, match="no user column"):
        read_table(path)
    with pytest.raises(ValueError, match="no column 'nope'"):
        read_table(path, user_column="nope")


@pytest.mark.skipif(importlib.util.find_spec("pyarrow") is not None, reason="pyarrow installed")
def test_parquet_without_pyarrow_says_how_to_install(tmp_path):
    with pytest.raises(ImportError, match="pip install pyarrow"):
        read_interactions(write(tmp_path, "t.parquet", ""))


@pytest.mark.skipif(importlib.util.find_spec("pyarrow") is None, reason="pyarrow not installed")
def test_parquet_round_trip(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    path = tmp_path / "t.parquet"
    table = {"user_id": [1, 1, 2], "item_id": [10, 20, 10], "timestamp": [100, 50, 70]}
    pq.write_table(pa.table(table), path)
    data = read_interactions(path)
    assert sequences(data) == EXPECTED
    assert data.timestamps.tolist() == [50, 100, 70]


def test_load_dataset_specs(tmp_path, monkeypatch):
    path = write(tmp_path, "pairs.txt", "1 20\n1 10\n2 10\n")
    assert sequences(load_dataset(str(path))) == EXPECTED
    assert sequences(load_dataset(f"{path}:user-item")) == EXPECTED
    with pytest.raises(ValueError, match="expected 4 columns"):  # the format given is used
        load_dataset(f"{path}:ml100k")

    synthetic = load_dataset("synthetic:num_users=50,num_items=40,num_topics=4,seed=3")
    assert synthetic.num_users == 50 and synthetic.num_items == 40
    assert synthetic.name == "synthetic:num_users=50,num_items=40,num_topics=4,seed=3"
    with pytest.raises(ValueError, match="num_users"):
        load_dataset("synthetic:users=5")
    with pytest.raises(ValueError, match="needs int"):
        load_dataset("synthetic:num_users=many")
    with pytest.raises(FileNotFoundError, match="registered"):
        load_dataset(str(tmp_path / "missing.txt"))

    (tmp_path / "ml-1m").mkdir()
    write(tmp_path / "ml-1m", "ml-1m_seq.txt", "5 7\n5 3\n")
    monkeypatch.setenv("FREESCALE_DATA_DIR", str(tmp_path))
    assert data_root() == tmp_path
    ml1m = load_dataset("ml-1m")
    assert ml1m.name == "ml-1m"
    assert sequences(ml1m) == [[2, 1]]
    monkeypatch.setenv("FREESCALE_DATA_DIR", str(tmp_path / "nowhere"))
    with pytest.raises(FileNotFoundError, match="FREESCALE_DATA_DIR"):
        load_dataset("ml-1m")


# -- leave-one-out --------------------------------------------------------------------------------


@pytest.fixture
def tiny() -> SequenceData:
    return csr([[1, 2, 3, 4], [5, 6], [7]], num_items=7, with_times=True)


def test_leave_one_out_published(tiny):
    split = leave_one_out(tiny)
    assert split.stage == "test"
    assert sequences(split.train) == [[1, 2, 3], [5], []]
    assert split.eval_users.tolist() == [0, 1]
    assert sequences(split.eval_history) == [[1, 2, 3], [5]]
    assert split.eval_history.timestamps.tolist() == [0, 10, 20, 40]
    assert split.eval_targets.tolist() == [4, 6]
    assert split.eval_targets.dtype == np.int64

    longer = leave_one_out(tiny, min_history=3)
    assert longer.eval_users.tolist() == [0]
    assert longer.eval_targets.tolist() == [4]
    assert sequences(longer.train) == [[1, 2, 3], [5], []]


def test_leave_one_out_strict(tiny):
    valid = leave_one_out(tiny, protocol="strict", stage="valid")
    assert sequences(valid.train) == [[1, 2], [], []]
    assert valid.eval_users.tolist() == [0]
    assert sequences(valid.eval_history) == [[1, 2]]
    assert valid.eval_targets.tolist() == [3]

    test = leave_one_out(tiny, protocol="strict", stage="test")
    assert sequences(test.train) == [[1, 2], [], []]
    assert test.eval_users.tolist() == [0, 1]
    assert sequences(test.eval_history) == [[1, 2, 3], [5]]
    assert test.eval_targets.tolist() == [4, 6]


def test_leave_one_out_rejects_bad_arguments(tiny):
    with pytest.raises(ValueError, match="no validation stage"):
        leave_one_out(tiny, stage="valid")
    with pytest.raises(ValueError, match="protocol"):
        leave_one_out(tiny, protocol="sasrec")
    with pytest.raises(ValueError, match="stage"):
        leave_one_out(tiny, stage="train")


# -- synthetic ------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def synthetic() -> SequenceData:
    return make_synthetic()


def test_synthetic_is_deterministic_in_the_seed(synthetic):
    again = make_synthetic(SyntheticConfig())
    other = make_synthetic(seed=1)
    for name in ("item_ids", "offsets", "timestamps"):
        np.testing.assert_array_equal(getattr(synthetic, name), getattr(again, name))
    assert not np.array_equal(synthetic.item_ids[:1000], other.item_ids[:1000])


def test_synthetic_shape_lengths_and_timestamps(synthetic):
    config = SyntheticConfig()
    lengths = synthetic.lengths
    assert synthetic.num_users == config.num_users and synthetic.num_items == config.num_items
    assert synthetic.item_ids.min() >= 1 and synthetic.item_ids.max() <= config.num_items
    assert config.min_len <= lengths.min() and lengths.max() <= config.max_len
    assert 0.8 * config.mean_len < lengths.mean() < 1.1 * config.mean_len
    assert lengths.max() > 4 * np.median(lengths)  # long tail

    user = np.repeat(np.arange(synthetic.num_users), lengths)
    same_user = user[1:] == user[:-1]
    gaps = np.diff(synthetic.timestamps)[same_user]
    assert gaps.min() >= 0
    assert (gaps > 86400).any() and np.median(gaps) < 3600  # sessions with long breaks
    assert synthetic.timestamps.min() >= 1.6e9

    pairs = user * (synthetic.num_items + 1) + synthetic.item_ids
    assert len(np.unique(pairs)) == len(pairs)  # no user repeats an item

    capped = make_synthetic(num_users=500, max_len=30)
    assert capped.lengths.max() == 30


def test_synthetic_structure_is_learnable(synthetic):
    """A first-order item-to-next-item count model beats popularity by a wide margin."""
    num_train = int(0.8 * synthetic.num_users)
    train = synthetic.select(np.arange(num_train))
    transitions = np.zeros((synthetic.num_items + 1,) * 2)
    user = np.repeat(np.arange(train.num_users), train.lengths)
    follows = user[1:] == user[:-1]
    np.add.at(transitions, (train.item_ids[:-1][follows], train.item_ids[1:][follows]), 1)
    popularity = np.bincount(train.item_ids, minlength=synthetic.num_items + 1).astype(float)

    def hit_rate(score_fn) -> float:
        hits = 0
        for u in range(num_train, synthetic.num_users):
            history, target = synthetic.items(u)[:-1], synthetic.items(u)[-1]
            scores = score_fn(history).copy()
            scores[history] = -np.inf
            scores[0] = -np.inf
            hits += target in np.argpartition(-scores, 10)[:10]
        return hits / (synthetic.num_users - num_train)

    popular = hit_rate(lambda history: popularity)
    sequential = hit_rate(lambda history: transitions[history[-1]] + 1e-6 * popularity)
    assert sequential > 0.25 and sequential > 4 * popular, (sequential, popular)


def test_synthetic_config_is_checked():
    with pytest.raises(ValueError, match="num_topics"):
        SyntheticConfig(num_items=5, num_topics=10)
    assert SyntheticConfig.parse(" num_users = 7, mean_len=12 ") == SyntheticConfig(
        num_users=7, mean_len=12.0
    )


# -- batches --------------------------------------------------------------------------------------


def random_data(rng: np.random.Generator, num_users: int = 60, num_items: int = 50):
    lengths = rng.integers(0, 15, num_users)
    lengths[:3] = [0, 1, 2]
    items = rng.integers(1, num_items + 1, lengths.sum())
    offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
    times = np.sort(rng.integers(0, 10**6, lengths.sum()))
    return SequenceData(items, offsets, num_items, timestamps=times)


@pytest.mark.parametrize("max_len", [1, 3, 100])
def test_train_batch_matches_naive_construction(max_len):
    rng = np.random.default_rng(max_len)
    data = random_data(rng)
    users = np.concatenate([[0, 1, 2], rng.integers(0, data.num_users, 20)])
    batch = make_train_batch(data, users, max_len)

    inputs, targets, times, offsets = [], [], [], [0]
    for u in users:
        window = data.items(u)[-(max_len + 1) :]
        window_times = data.times(u)[-(max_len + 1) :]
        inputs += window[:-1].tolist()
        targets += window[1:].tolist()
        times += window_times[:-1].tolist()
        offsets.append(offsets[-1] + max(len(window) - 1, 0))
    assert batch.input_ids.tolist() == inputs
    assert batch.target_ids.tolist() == targets
    assert batch.timestamps.tolist() == times
    assert batch.seq_offsets.tolist() == offsets
    assert batch.seq_offsets.dtype == torch.int32
    assert batch.input_ids.dtype == batch.target_ids.dtype == torch.int64
    assert offsets[1:4] == [0, 0, 1]  # users with 0, 1 and 2 items
    assert batch.max_len == max(np.diff(offsets))
    assert batch.batch_size == len(users) and batch.num_tokens == len(inputs)

    moved = batch.to("cpu")
    assert isinstance(moved, type(batch)) and moved.input_ids.tolist() == inputs


def test_train_batch_edge_cases():
    data = csr([[1, 2, 3]], num_items=3)
    empty = make_train_batch(data, np.array([], dtype=np.int64), max_len=4)
    assert empty.batch_size == 0 and empty.num_tokens == 0 and empty.max_len == 0
    assert empty.seq_offsets.tolist() == [0]
    assert make_train_batch(data, np.array([0]), max_len=4).timestamps is None
    with pytest.raises(ValueError, match="max_len"):
        make_train_batch(data, np.array([0]), max_len=0)


@pytest.mark.parametrize("max_len", [2, 100])
def test_eval_batch_inputs_targets_and_seen_items(max_len):
    rng = np.random.default_rng(7)
    split = leave_one_out(random_data(rng))
    rows = rng.permutation(len(split.eval_targets))[:25]
    batch = make_eval_batch(split, rows, max_len)

    inputs, seen, input_offsets, seen_offsets = [], [], [0], [0]
    for r in rows:
        history = split.eval_history.items(r).tolist()
        inputs += history[-max_len:]
        seen += history
        input_offsets.append(len(inputs))
        seen_offsets.append(len(seen))
    assert batch.input_ids.tolist() == inputs
    assert batch.seq_offsets.tolist() == input_offsets
    assert batch.seq_offsets.dtype == torch.int32
    assert batch.seen_ids.tolist() == seen
    assert batch.seen_offsets.tolist() == seen_offsets
    assert batch.seen_offsets.dtype == torch.int64
    assert batch.targets.tolist() == split.eval_targets[rows].tolist()
    assert batch.max_len == max(np.diff(input_offsets))
    assert batch.timestamps.numel() == len(inputs)
    assert batch.to("cpu").seen_ids.tolist() == seen


# -- sampler --------------------------------------------------------------------------------------


def epoch_batches(sampler: EpochBatchSampler) -> list[list[int]]:
    return [batch.tolist() for batch in sampler]


def test_sampler_covers_every_row_once_per_epoch_and_reshuffles():
    sampler = EpochBatchSampler(103, batch_size=10, seed=5)
    assert len(sampler) == 11
    first = epoch_batches(sampler)
    assert sampler.epoch == 1 and sampler.position == 0
    second = epoch_batches(sampler)
    for batches in (first, second):
        assert [len(b) for b in batches] == [10] * 10 + [3]
        assert sorted(sum(batches, [])) == list(range(103))
    assert first != second
    assert epoch_batches(EpochBatchSampler(103, batch_size=10, seed=5)) == first
    assert epoch_batches(EpochBatchSampler(103, batch_size=10, seed=6)) != first

    replay = EpochBatchSampler(103, batch_size=10, seed=5)
    replay.set_epoch(1)
    assert epoch_batches(replay) == second


def test_sampler_resumes_exactly_mid_epoch():
    original = EpochBatchSampler(50, batch_size=8, seed=2)
    iterator = iter(original)
    consumed = [next(iterator).tolist() for _ in range(3)]
    assert original.position == 3
    state = original.state_dict()
    assert all(type(v) in (int, bool) for v in state.values())  # safe for weights_only loading

    resumed = EpochBatchSampler(50, batch_size=8, seed=2)
    resumed.load_state_dict(state)
    rest = epoch_batches(resumed)
    assert rest == [batch.tolist() for batch in iterator]
    assert sorted(sum(consumed + rest, [])) == list(range(50))
    assert epoch_batches(resumed) == epoch_batches(original)  # and the epochs after

    with pytest.raises(ValueError, match="batch_size"):
        EpochBatchSampler(50, batch_size=4, seed=2).load_state_dict(state)


def test_sampler_drop_last_and_no_shuffle():
    dropping = EpochBatchSampler(103, batch_size=10, seed=1, drop_last=True)
    batches = epoch_batches(dropping)
    assert len(dropping) == len(batches) == 10
    assert all(len(b) == 10 for b in batches) and len(set(sum(batches, []))) == 100
    in_order = epoch_batches(EpochBatchSampler(5, batch_size=2, shuffle=False))
    assert in_order == [[0, 1], [2, 3], [4]]
    with pytest.raises(ValueError, match="batch_size"):
        EpochBatchSampler(5, batch_size=0)


# -- real data (local copies; absent in some checkouts) -------------------------------------------


def registered_file(name: str) -> Path | None:
    try:
        path = data_root() / REGISTERED_DATASETS[name][0]
    except FileNotFoundError:
        return None
    return path if path.exists() else None


@pytest.mark.skipif(registered_file("ml-1m") is None, reason="ml-1m data not available")
def test_ml1m_counts():
    data = load_dataset("ml-1m")
    assert data.num_users == 6040
    assert data.num_items == 3706
    assert data.num_interactions == 1_000_209
    assert data.lengths.min() == 20
    assert data.timestamps is None
    # The file starts "1 3186 / 1 1721 / 1 1022": original ids survive through item_keys.
    assert data.user_keys[0] == 1
    assert data.item_keys[data.items(0)[:3]].tolist() == [3186, 1721, 1022]


@pytest.mark.skipif(registered_file("amazon-beauty") is None, reason="Beauty data not available")
def test_amazon_beauty_counts():
    data = load_dataset("amazon-beauty")
    assert (data.num_users, data.num_items, data.num_interactions) == (22_363, 12_101, 198_502)
    assert data.lengths.min() == 5


def test_trailing_batch_needs_min_last_batch_rows():
    from freescale.data import EpochBatchSampler

    kept = EpochBatchSampler(10, 4, min_last_batch=2)  # 4 + 4 + 2
    assert len(kept) == 3 and [len(b) for b in kept] == [4, 4, 2]
    dropped = EpochBatchSampler(10, 4, min_last_batch=3)  # the 2 leftover rows wait
    assert len(dropped) == 2 and [len(b) for b in dropped] == [4, 4]
    assert len(EpochBatchSampler(10, 4, drop_last=True, min_last_batch=1)) == 2
    old_state = {k: v for k, v in kept.state_dict().items() if k != "min_last_batch"}
    EpochBatchSampler(10, 4).load_state_dict(old_state)  # checkpoints from before the option
