"""Synthetic interaction sequences with learnable structure: a latent-topic Markov chain.

Items are split into topics; inside a topic, popularity is Zipf-distributed and the items also
form a random ring. Each user prefers a few random topics, with Dirichlet weights. A user's
sequence walks a chain: within a session, the next item stays in the current topic with
probability `topic_stickiness` (else the topic is redrawn from the user's preferences); an item
that stays in its topic is, with probability `ring_prob`, the ring successor of the previous item
(the first-order signal that lets sequence models beat popularity), else a Zipf draw from the
topic. A session break (a long time gap) always redraws the topic.

Like the real datasets, a user never repeats an item: the walk runs longer than needed and
repeats are dropped. Lengths are lognormal, clipped to [min_len, max_len] (a rare long user whose
topics run dry ends shorter). Everything is a function of the seed. The walk is vectorized over
users, one numpy step per position: 4,000 users take ~0.2 s, a million ~35 s and ~8 GB.
"""

from __future__ import annotations

from dataclasses import dataclass, fields, replace

import numpy as np

from freescale.data.csr import offsets_from_lengths
from freescale.data.sequences import SequenceData

TOPICS_PER_USER = 8  # the topics a user's preferences mix (drawn with replacement)
USER_TOPIC_CONCENTRATION = 1.0  # Dirichlet alpha of the mixture weights (uniform on the simplex)
SESSION_BREAK_PROB = 0.1  # chance that the gap before an item is a long one (a new session)
IN_SESSION_GAP_MEAN_S = 300.0  # exponential gaps between items of one session
SESSION_GAP_MEDIAN_S = 2 * 86400.0  # lognormal gaps between sessions
SESSION_GAP_SIGMA = 1.0
START_TIME_S = 1.6e9  # users start within a year after this (late 2020)
START_SPREAD_S = 365 * 86400.0
# Walk longer than the drawn length, then drop repeats. Repeats grow with length (a long user has
# used up more of their topics), so the walk is wanted * (1.5 + wanted / 100) + 10 steps: with the
# default config all but ~0.1% of users then reach their drawn length.
WALK_OVERSAMPLE = 1.5
WALK_OVERSAMPLE_PER_ITEM = 0.01
WALK_EXTRA_STEPS = 10


@dataclass
class SyntheticConfig:
    num_users: int = 4000
    num_items: int = 2000
    num_topics: int = 20
    mean_len: float = 40.0
    max_len: int = 400
    min_len: int = 5
    length_sigma: float = 0.8  # lognormal lengths
    topic_stickiness: float = 0.8  # in a session: probability the next item keeps the topic
    item_zipf: float = 1.1  # popularity skew inside a topic
    seed: int = 0
    ring_prob: float = 0.5  # staying in the topic: probability of the ring successor

    def __post_init__(self) -> None:
        problems = []
        if self.num_users < 1:
            problems.append("num_users >= 1")
        if not 1 <= self.num_topics <= self.num_items:
            problems.append("1 <= num_topics <= num_items")
        if not 1 <= self.min_len <= self.max_len:
            problems.append("1 <= min_len <= max_len")
        if self.mean_len <= 0 or self.length_sigma < 0 or self.item_zipf < 0:
            problems.append("mean_len > 0, length_sigma >= 0, item_zipf >= 0")
        if not (0 <= self.topic_stickiness <= 1 and 0 <= self.ring_prob <= 1):
            problems.append("topic_stickiness and ring_prob in [0, 1]")
        if problems:
            raise ValueError(f"invalid SyntheticConfig {self}: need {'; '.join(problems)}")

    @classmethod
    def parse(cls, text: str) -> SyntheticConfig:
        """Config from "key=value,key=value" (as in the dataset spec "synthetic:num_users=100")."""
        types = {f.name: type(f.default) for f in fields(cls)}
        overrides: dict[str, int | float] = {}
        for assignment in filter(None, (part.strip() for part in text.split(","))):
            key, sep, value = assignment.partition("=")
            key = key.strip()
            if not sep or key not in types:
                raise ValueError(
                    f"bad synthetic option {assignment!r}: expected key=value with key one of "
                    f"{', '.join(types)}"
                )
            try:
                overrides[key] = types[key](value.strip())
            except ValueError:
                raise ValueError(
                    f"synthetic option {key} needs {types[key].__name__}, got {value!r}"
                ) from None
        return cls(**overrides)


def make_synthetic(config: SyntheticConfig | None = None, **overrides) -> SequenceData:
    """Generate the dataset of `config` (defaults: SyntheticConfig()), with fields overridden."""
    config = replace(config or SyntheticConfig(), **overrides)
    rng = np.random.default_rng(config.seed)
    catalog = _Catalog.build(config, rng)
    preferences = _Preferences.draw(config, rng)
    wanted = _draw_lengths(config, rng)
    oversample = WALK_OVERSAMPLE + WALK_OVERSAMPLE_PER_ITEM * wanted
    walk_lengths = np.ceil(wanted * oversample).astype(np.int64) + WALK_EXTRA_STEPS
    positions, times = _walk(config, catalog, preferences, walk_lengths, rng)
    keep, lengths = _first_occurrences_up_to(positions, walk_lengths, wanted, config.num_items)
    return SequenceData(
        item_ids=catalog.item_of_position[positions[keep]],
        offsets=offsets_from_lengths(lengths),
        num_items=config.num_items,
        timestamps=times[keep],
        name="synthetic",
    )


@dataclass
class _Catalog:
    """Items laid out by topic. A "position" indexes this layout; item ids are a shuffle of it."""

    topic_starts: np.ndarray  # int64 [num_topics + 1]: the positions of topic t are [s_t, s_t+1)
    rank_cdf: np.ndarray  # float64 [largest topic size]: Zipf CDF over popularity ranks
    ring_next: np.ndarray  # int64 [num_items]: the next position on the topic's ring
    item_of_position: np.ndarray  # int64 [num_items]: item id, 1..num_items

    @staticmethod
    def build(config: SyntheticConfig, rng: np.random.Generator) -> _Catalog:
        num_items, num_topics = config.num_items, config.num_topics
        sizes = np.full(num_topics, num_items // num_topics)
        sizes[: num_items % num_topics] += 1
        topic_starts = offsets_from_lengths(sizes)
        topic_of_position = np.repeat(np.arange(num_topics), sizes)

        # Topic sizes differ by at most one, so one CDF serves all topics (see draw_in_topics).
        weights = np.arange(1.0, sizes.max() + 1) ** -config.item_zipf
        rank_cdf = np.cumsum(weights) / weights.sum()

        # A random cyclic order inside each topic: sort positions by (topic, random key), then
        # link each to the one after it, wrapping at the topic's end.
        ring_order = np.lexsort((rng.random(num_items), topic_of_position))
        successor = np.arange(1, num_items + 1)
        at_end = successor == topic_starts[topic_of_position + 1]
        successor[at_end] = topic_starts[topic_of_position[at_end]]
        ring_next = np.empty(num_items, dtype=np.int64)
        ring_next[ring_order] = ring_order[successor]

        return _Catalog(
            topic_starts=topic_starts,
            rank_cdf=rank_cdf,
            ring_next=ring_next,
            item_of_position=rng.permutation(num_items).astype(np.int64) + 1,
        )

    def draw_in_topics(self, topics: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        """One Zipf-distributed position from each of `topics` (position order = rank)."""
        rank = np.searchsorted(self.rank_cdf, rng.random(len(topics)), side="right")
        start, end = self.topic_starts[topics], self.topic_starts[topics + 1]
        # A topic one item short gives its last item the (tiny) mass of the missing rank.
        return np.minimum(start + rank, end - 1)


@dataclass
class _Preferences:
    """Each user's topic mixture: a few topics with Dirichlet weights (kept small, so that a
    million users fit in memory)."""

    topics: np.ndarray  # int64 [num_users, k]
    cdf: np.ndarray  # float64 [num_users, k]: cumulative weights

    @staticmethod
    def draw(config: SyntheticConfig, rng: np.random.Generator) -> _Preferences:
        k = min(TOPICS_PER_USER, config.num_topics)
        return _Preferences(
            topics=rng.integers(0, config.num_topics, (config.num_users, k)),
            cdf=np.cumsum(
                rng.dirichlet(np.full(k, USER_TOPIC_CONCENTRATION), config.num_users), axis=1
            ),
        )

    def reorder(self, users: np.ndarray) -> _Preferences:
        return _Preferences(self.topics[users], self.cdf[users])

    def sample(self, users: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        """One topic for each of `users`, drawn from the user's mixture."""
        cdf = self.cdf[users]
        pick = (cdf < rng.random((len(users), 1))).sum(axis=1)
        pick = np.minimum(pick, cdf.shape[1] - 1)  # guard a last CDF entry just below 1.0
        return self.topics[users, pick]


def _draw_lengths(config: SyntheticConfig, rng: np.random.Generator) -> np.ndarray:
    # mu is set so that the unclipped lognormal has mean mean_len.
    mu = np.log(config.mean_len) - config.length_sigma**2 / 2
    lengths = np.rint(rng.lognormal(mu, config.length_sigma, config.num_users))
    return np.clip(lengths, config.min_len, config.max_len).astype(np.int64)


def _walk(
    config: SyntheticConfig,
    catalog: _Catalog,
    preferences: _Preferences,
    walk_lengths: np.ndarray,
    rng: np.random.Generator,
) -> tuple[np.ndarray, np.ndarray]:
    """Run every user's chain for walk_lengths[u] steps; flat (CSR by walk_lengths) positions and
    integer timestamps."""
    # Users sorted longest first, so at step t the users still walking are a prefix.
    by_length = np.argsort(-walk_lengths, kind="stable")
    still_walking = np.searchsorted(-walk_lengths[by_length], -np.arange(walk_lengths.max()))
    flat_start = offsets_from_lengths(walk_lengths)[by_length]
    preferences = preferences.reorder(by_length)

    positions = np.empty(int(walk_lengths.sum()), dtype=np.int64)
    times = np.empty_like(positions)
    topic = preferences.sample(np.arange(config.num_users), rng)
    previous = catalog.draw_in_topics(topic, rng)
    clock = START_TIME_S + rng.random(config.num_users) * START_SPREAD_S
    positions[flat_start] = previous
    times[flat_start] = clock
    for step in range(1, len(still_walking)):
        n = still_walking[step]
        new_session = rng.random(n) < SESSION_BREAK_PROB
        switch = new_session | (rng.random(n) >= config.topic_stickiness)
        redraw = np.flatnonzero(switch)
        topic[redraw] = preferences.sample(redraw, rng)
        current = catalog.ring_next[previous[:n]]
        fresh = np.flatnonzero(switch | (rng.random(n) >= config.ring_prob))
        current[fresh] = catalog.draw_in_topics(topic[fresh], rng)

        gaps = rng.exponential(IN_SESSION_GAP_MEAN_S, n)
        gaps[new_session] = rng.lognormal(
            np.log(SESSION_GAP_MEDIAN_S), SESSION_GAP_SIGMA, int(new_session.sum())
        )
        clock[:n] += gaps
        previous[:n] = current
        positions[flat_start[:n] + step] = current
        times[flat_start[:n] + step] = clock[:n]
    return positions, times


def _first_occurrences_up_to(
    positions: np.ndarray, walk_lengths: np.ndarray, wanted: np.ndarray, num_items: int
) -> tuple[np.ndarray, np.ndarray]:
    """Mask of the elements to keep: each user's first occurrence of an item, at most wanted[u]
    of them. Returns (mask over positions, kept length per user)."""
    user = np.repeat(np.arange(len(walk_lengths)), walk_lengths)
    key = user * num_items + positions
    by_key = np.argsort(key, kind="stable")
    sorted_key = key[by_key]
    keep = np.empty(len(key), dtype=bool)
    keep[by_key] = np.concatenate([[True], sorted_key[1:] != sorted_key[:-1]])
    kept_before = np.cumsum(keep) - keep
    rank_in_user = kept_before - kept_before[offsets_from_lengths(walk_lengths)[:-1]][user]
    keep &= rank_in_user < wanted[user]
    return keep, np.bincount(user[keep], minlength=len(walk_lengths))
