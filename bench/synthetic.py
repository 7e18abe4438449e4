"""A seeded synthetic MovieLens-20M `ratings.csv`: the real format, at the real scale.

    python bench/synthetic.py --out /tmp/ncf-bench/ml-20m/ratings.csv \
        [--users 138493 --items 26744 --events 20000263 --seed 0]

The file is what the `movielens-csv` reader of jobs/readers.py reads for ML-20M: the
header `userId,movieId,rating,timestamp`, then one rating a line, ratings in half stars
0.5..5.0 written as GroupLens writes them (`3.5`, `4.0`), unix seconds. Its shape is
the real one's where a benchmark feels it:
- each user rated at least min(20, events/users) items, each item at most once; the
  number per user is heavy-tailed (log-normal), capped at ~35% of the catalogue;
- items are drawn by a Zipf-like popularity, p(rank r) ~ 1/(r + c), so a few films
  are rated by a large share of users and most by few; movie ids are sparse (1..~5x
  the number of items) and unrelated to popularity;
- each user's ratings are written in time order with strictly increasing timestamps
  over a plausible span (one sitting for about half of the users, months to years for
  the rest) inside the real data's range, 1995-01-09 .. 2015-03-31;
- rating values follow ML-20M's overall distribution (4.0 the most common).
Rows are grouped by user in userId order, as in the real file.

The same arguments give the same bytes: numpy generators are seeded per chunk of
users from (seed, chunk), and the chunking is fixed. The file is written to a temporary
name beside --out and renamed into place, so an interrupted run leaves no partial file.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

ML_20M_USERS, ML_20M_ITEMS, ML_20M_EVENTS = 138_493, 26_744, 20_000_263
HEADER = b"userId,movieId,rating,timestamp\n"
RATINGS = ("0.5", "1.0", "1.5", "2.0", "2.5", "3.0", "3.5", "4.0", "4.5", "5.0")
# ML-20M's share of each rating value, in the order of RATINGS.
RATING_SHARES = (0.012, 0.034, 0.014, 0.072, 0.044, 0.213, 0.110, 0.278, 0.077, 0.146)
FIRST_TS, LAST_TS = 789_652_009, 1_427_784_002  # ML-20M's first and last rating
MIN_PER_USER = 20  # GroupLens kept users with at least 20 ratings
MAX_SHARE_PER_USER = 0.35  # ML-20M's heaviest user rated ~35% of the films
USERS_PER_CHUNK = 4096  # fixed: the chunks seed the generators, so they fix the bytes


@dataclass(frozen=True)
class Shape:
    """The per-user and per-item quantities drawn once, before the chunks."""

    counts: np.ndarray  # (n_users,) ratings per user
    item_cdf: np.ndarray  # (n_items,) cumulative popularity, by popularity rank
    movie_ids: np.ndarray  # (n_items,) the movieId of each popularity rank


def per_user_counts(n_users: int, n_items: int, n_events: int,
                    rng: np.random.Generator) -> np.ndarray:
    """Ratings per user: at least a minimum, log-normal above it, capped, summing to n_events."""
    if n_users < 1 or n_items < 1 or n_events < n_users:
        raise ValueError(f"need users >= 1, items >= 1 and events >= users "
                         f"(got {n_users}, {n_items}, {n_events})")
    floor = min(MIN_PER_USER, n_events // n_users)
    cap = min(n_items, max(int(np.ceil(MAX_SHARE_PER_USER * n_items)),
                           2 * -(-n_events // n_users)))
    if n_events > n_users * cap or floor > cap:
        raise ValueError(f"{n_events} events do not fit {n_users} users x {n_items} items "
                         f"with at most {cap} distinct items per user")
    weights = rng.lognormal(0.0, 1.2, n_users)
    counts = np.full(n_users, floor, dtype=np.int64)
    open_ = np.ones(n_users, dtype=bool)
    left = n_events - counts.sum()
    while left > 0:  # share what is left by weight; users at the cap take no more
        share = weights * open_ / (weights * open_).sum() * left
        extra = np.floor(share).astype(np.int64)
        rest = int(left - extra.sum())
        extra[np.argsort(-(share - extra), kind="stable")[:rest]] += 1
        counts += extra
        over = np.maximum(counts - cap, 0)
        counts -= over
        open_ &= counts < cap
        left = int(over.sum())
    return counts


def draw_shape(n_users: int, n_items: int, n_events: int, seed: int) -> Shape:
    rng = np.random.default_rng([seed, 0])
    counts = per_user_counts(n_users, n_items, n_events, rng)
    offset = max(1, n_items // 500)  # flattens the head: no film is rated by everyone
    popularity = 1.0 / (np.arange(n_items) + offset)
    item_cdf = np.cumsum(popularity / popularity.sum())
    item_cdf[-1] = 1.0
    movie_ids = rng.choice(5 * n_items, size=n_items, replace=False).astype(np.int64) + 1
    return Shape(counts=counts, item_cdf=item_cdf, movie_ids=movie_ids)


def _distinct_items(counts: np.ndarray, item_cdf: np.ndarray,
                    rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """(user, item) with counts[u] distinct popularity-drawn items for each local user u.

    Draws with replacement, keeps each user's first draw of an item, and draws again
    for users still short (more each round: heavy users reach into the long tail).
    """
    n_items = len(item_cdf)
    users = np.arange(len(counts))
    keys = np.empty(0, dtype=np.int64)  # user * n_items + item, in draw order
    have = np.zeros(len(counts), dtype=np.int64)
    factor = 1.3
    while (short := have < counts).any():
        need = (counts - have)[short]
        draws = np.ceil(need * factor).astype(np.int64) + 4
        who = np.repeat(users[short], draws)
        items = np.minimum(np.searchsorted(item_cdf, rng.random(len(who)), side="right"),
                           n_items - 1)
        keys = np.concatenate([keys, who * n_items + items])
        unique, first = np.unique(keys, return_index=True)
        keys = keys[np.sort(first)]  # distinct, still in draw order
        have = np.bincount(unique // n_items, minlength=len(counts))
        factor *= 2
    # Each user's first counts[u] distinct draws.
    by_user = np.argsort(keys // n_items, kind="stable")
    keys = keys[by_user]
    owner = keys // n_items
    starts = np.concatenate([[0], np.cumsum(have)[:-1]])
    rank = np.arange(len(keys)) - starts[owner]
    keys = keys[rank < counts[owner]]
    return keys // n_items, keys % n_items


def _timestamps(counts: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Strictly increasing unix seconds per user, users one after the other."""
    n = len(counts)
    sitting = counts * rng.uniform(20, 120, n)  # one sitting: 20 s to 2 min a rating
    months = np.exp(rng.normal(np.log(200 * 86_400), 1.2, n))
    span = np.where(rng.random(n) < 0.5, sitting, months)
    span = np.minimum(span, (LAST_TS - FIRST_TS) * 0.9).astype(np.int64) + counts
    start = FIRST_TS + (rng.random(n) * (LAST_TS - FIRST_TS - span - counts)).astype(np.int64)
    owner = np.repeat(np.arange(n), counts)
    offsets = (rng.random(len(owner)) * span[owner]).astype(np.int64)
    offsets = offsets[np.lexsort((offsets, owner))]
    position = np.arange(len(owner)) - np.repeat(np.cumsum(counts) - counts, counts)
    # t_k = max over j <= k of (o_j - j) + k is strictly increasing; the per-user base
    # (larger than any offset) keeps the running max from crossing users.
    base = owner * np.int64(1 << 40)
    strict = np.maximum.accumulate(offsets - position + base) - base + position
    return start[owner] + strict


def chunks(n_users: int, n_items: int, n_events: int,
           seed: int) -> Iterator[tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]]:
    """(userId, movieId, rating index into RATINGS, timestamp) per chunk of users."""
    shape = draw_shape(n_users, n_items, n_events, seed)
    for number, first in enumerate(range(0, n_users, USERS_PER_CHUNK)):
        counts = shape.counts[first:first + USERS_PER_CHUNK]
        rng = np.random.default_rng([seed, 1, number])
        owner, items = _distinct_items(counts, shape.item_cdf, rng)
        in_time_order = np.lexsort((rng.random(len(owner)), owner))  # shuffle within users
        items = items[in_time_order]
        ratings = rng.choice(len(RATINGS), size=len(owner), p=np.array(RATING_SHARES) /
                             sum(RATING_SHARES))
        yield (owner + first + 1, shape.movie_ids[items], ratings,
               _timestamps(counts, rng))


def write_ratings_csv(out: Path, *, n_users: int = ML_20M_USERS, n_items: int = ML_20M_ITEMS,
                      n_events: int = ML_20M_EVENTS, seed: int = 0) -> Path:
    """Write the synthetic ratings.csv at `out` (atomically) and return its path."""
    import pyarrow as pa
    import pyarrow.compute as pc
    import pyarrow.csv as pacsv

    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.{os.getpid()}.tmp")
    rating_text = pa.array(RATINGS)
    options = pacsv.WriteOptions(include_header=False, quoting_style="none")
    try:
        with open(tmp, "wb") as handle:
            handle.write(HEADER)
            for user, movie, rating, ts in chunks(n_users, n_items, n_events, seed):
                table = pa.table({"userId": user, "movieId": movie,
                                  "rating": pc.take(rating_text, pa.array(rating)),
                                  "timestamp": ts})
                pacsv.write_csv(table, handle, options)
        os.replace(tmp, out)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--users", type=int, default=ML_20M_USERS)
    parser.add_argument("--items", type=int, default=ML_20M_ITEMS)
    parser.add_argument("--events", type=int, default=ML_20M_EVENTS)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, required=True, help="the ratings.csv to write")
    args = parser.parse_args(argv)
    started = time.perf_counter()
    try:
        path = write_ratings_csv(args.out, n_users=args.users, n_items=args.items,
                                 n_events=args.events, seed=args.seed)
    except ValueError as exc:
        parser.error(str(exc))
    print(f"wrote {path} ({path.stat().st_size / 2**20:.0f} MiB, {args.events} ratings) "
          f"in {time.perf_counter() - started:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
