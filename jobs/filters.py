"""Which events become the positives prepare indexes: as-of cutoff, binarisation, sample, k-core.

Transforms on the clean interactions (user_id, item_id, ts, value) and on the positives
(user_id, item_id, ts) they give, applied in this order by jobs/prepare.py:

    cut_off       events known at the as-of time (ts < as_of; events without ts are kept)
    binarise      one positive per (user, item) pair by the configured rule, latest ts
    sample_users  a seeded share of users, by a hash of the raw user_id
    k_core        drop users/items with too few positives until none is left

The user sample comes before the k-core so that what prepare writes satisfies the
k-core (sampling users afterwards would leave items below their minimum). No session,
no I/O; randomness is xxhash64 of (seed, stream, user_id), so the sample depends neither
on partitioning nor on the index. `k_core` is the one function that runs Spark actions:
it has to count to know when it reached its fixed point.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from pyspark.sql import Column, DataFrame
from pyspark.sql import functions as F

from jobs.lake import layout
from jobs.lake.config import BINARISE_RULES, PrepareConfig
from jobs.lake.protocol import STREAM_USER_SAMPLE

log = logging.getLogger(__name__)

_UNIT = 1 << 53  # hashes are mapped to [0, 1) in steps of 2^-53: exact in a double


def cut_off(interactions: DataFrame, *, as_of: datetime) -> DataFrame:
    """The events known at `as_of` (an aware datetime): ts < as_of, or no ts at all.

    Sources without timestamps (last.fm 360K, HetRec 2K) have a null ts throughout: their
    events are kept, since nothing says when they happened (the manifest counts them).
    """
    return interactions.where(F.col(layout.TS).isNull() | (F.col(layout.TS) < F.lit(as_of)))


def binarise(interactions: DataFrame, *, rule: str, threshold: float | None) -> DataFrame:
    """Positives (user_id, item_id, ts): one row per pair, by `rule` (config BinariseConfig).

    any:    every pair with an event; ts is its latest event's.
    rating: pairs with an event of value >= threshold; ts is the latest such event's.
    plays:  pairs whose values sum to >= threshold; ts is the pair's latest event's.
    """
    if rule not in BINARISE_RULES:
        raise ValueError(f"binarise rule {rule!r} is not one of {list(BINARISE_RULES)}")
    if rule != "any" and threshold is None:
        raise ValueError(f"binarise rule {rule!r} needs a threshold")
    pair = (layout.USER_ID, layout.ITEM_ID)
    if rule == "plays":
        return (interactions.groupBy(*pair)
                .agg(F.max(layout.TS).alias(layout.TS), F.sum(layout.VALUE).alias("_plays"))
                .where(F.col("_plays") >= F.lit(float(threshold)))  # type: ignore[arg-type]
                .drop("_plays"))
    kept = interactions if rule == "any" else interactions.where(
        F.col(layout.VALUE) >= F.lit(float(threshold)))  # type: ignore[arg-type]
    return kept.groupBy(*pair).agg(F.max(layout.TS).alias(layout.TS))


def user_draw(seed: int) -> Column:
    """A uniform draw in [0, 1) per raw user_id: a pure function of (seed, user_id)."""
    hashed = F.xxhash64(F.lit(seed).cast("bigint"), F.lit(STREAM_USER_SAMPLE).cast("int"),
                        F.col(layout.USER_ID))
    return F.pmod(hashed, F.lit(_UNIT).cast("bigint")).cast("double") / float(_UNIT)


def sample_users(positives: DataFrame, *, fraction: float, seed: int) -> DataFrame:
    """The rows of a seeded `fraction` of the users (all rows of a kept user)."""
    if not 0.0 < fraction <= 1.0:
        raise ValueError(f"user fraction {fraction} must be in (0, 1]")
    if fraction == 1.0:
        return positives
    return positives.where(user_draw(seed) < F.lit(fraction))


@dataclass(frozen=True)
class KCore:
    """What `k_core` left: the positives, the rounds that removed rows, whether it settled."""

    positives: DataFrame
    iterations: int
    converged: bool


def _count(df: DataFrame) -> int:
    """The k-core's one kind of action: how many positives are left."""
    return df.count()


def k_core(positives: DataFrame, *, min_user_positives: int, min_item_positives: int,
           max_iterations: int) -> KCore:
    """Positives of users with >= min_user_positives and items with >= min_item_positives.

    Dropping an item can take a user below its minimum and the other way round, so both
    are applied again and again until a round removes nothing: the fixed point, which is
    the same whatever the order of removals (the largest subset meeting both minimums).
    Each round's result is checkpointed locally, so the plan does not grow with the
    rounds. After `max_iterations` rounds that all removed rows it stops unconverged
    (logged; the caller records it).
    """
    if min_user_positives <= 1 and min_item_positives <= 1:
        return KCore(positives, 0, True)
    current, n_current = positives, _count(positives)
    for iteration in range(max_iterations):
        users = (current.groupBy(layout.USER_ID).count()
                 .where(F.col("count") >= min_user_positives).select(layout.USER_ID))
        items = (current.groupBy(layout.ITEM_ID).count()
                 .where(F.col("count") >= min_item_positives).select(layout.ITEM_ID))
        kept = (current.join(users, layout.USER_ID, "left_semi")
                .join(items, layout.ITEM_ID, "left_semi")
                .localCheckpoint(eager=True))
        n_kept = _count(kept)
        log.info("k-core round %d: %d -> %d positives", iteration + 1, n_current, n_kept)
        if n_kept == n_current:
            return KCore(current, iteration, True)
        current, n_current = kept, n_kept
    log.warning("k-core (min_user_positives=%d, min_item_positives=%d) still removing rows "
                "after k_core_max_iterations=%d rounds: stopped there, some users or items may "
                "be below their minimum", min_user_positives, min_item_positives, max_iterations)
    return KCore(current, max_iterations, False)


# --- the whole selection, with the counts the manifest records ------------------------

@dataclass(frozen=True)
class Selection:
    """What prepare indexes: the events known at as-of and the positives kept from them.

    The positives are persisted (every later step reads them again; `unpersist` releases
    them); the events are read twice in all, from Parquet. `counts` holds each step's
    tallies for the manifest.
    """

    events: DataFrame  # interactions known at as-of (all of them without a cutoff)
    positives: DataFrame  # user_id, item_id, ts after binarise, sample and k-core
    counts: dict[str, Any]

    def unpersist(self) -> None:
        self.positives.unpersist()

    def indexed(self, n_users: int, n_items: int, n_positives: int) -> dict[str, Any]:
        """`counts` with what `select_positives` left to the caller: the users and items
        after binarise (distinct_later) are those of the index of these very positives,
        and the positives (pairs_later) those the caller's split wrote."""
        counts = dict(self.counts)
        if counts["users_after_binarise"] is None:
            counts["users_after_binarise"], counts["items_after_binarise"] = n_users, n_items
        if counts["positives_selected"] is None:
            counts["positives_after_binarise"] = counts["positives_selected"] = n_positives
        return counts


def _tally(positives: DataFrame) -> tuple[int, int, int]:
    """(positives, users, items) in one pass."""
    row = positives.agg(F.count(F.lit(1)), F.countDistinct(layout.USER_ID),
                        F.countDistinct(layout.ITEM_ID)).first()
    assert row is not None  # an aggregate without grouping always has its one row
    return int(row[0]), int(row[1]), int(row[2])


def _no_filter_counts(events_in: int, after_as_of: int, without_ts: int) -> dict[str, Any]:
    """The manifest's step counts when no user sample and no k-core drop anything."""
    return {
        "events_in": events_in,
        "events_dropped_after_as_of": after_as_of,
        # Events without a timestamp are always kept: nothing says when they happened.
        "events_without_ts_kept": without_ts,
        "users_after_binarise": None,
        "items_after_binarise": None,
        "users_dropped_by_sampling": 0,
        "items_dropped_by_sampling": 0,
        "users_dropped_by_k_core": 0,
        "items_dropped_by_k_core": 0,
        "k_core_iterations": 0,
        "k_core_converged": True,
    }


def select_positives(interactions: DataFrame, cfg: PrepareConfig, *,
                     as_of: datetime | None, distinct_later: bool = False,
                     pairs_later: bool = False) -> Selection:
    """Cutoff, binarise, sample, k-core in that order, counting what each step kept.

    `as_of` None: no cutoff (prepare.as_of_cutoff false). Runs a handful of counting
    passes: the manifest's record of where the positives went. distinct_later: when
    no user sample and no k-core leave out anything, the users and items after
    binarise are left None (counting distinct raw ids is a pass of its own) for the
    caller to fill in from its index of the same positives (`Selection.indexed`).
    pairs_later (with distinct_later, rule `any`, nothing filtered): binarise is left
    to the caller too (jobs.prepare_fast collapses each user's repeated pairs itself): the
    positives are the events as they are, one row per event, and their count is None.
    """
    ts = F.col(layout.TS)
    late = F.lit(False) if as_of is None else ts >= F.lit(as_of)
    row = interactions.agg(F.count(F.lit(1)), F.sum(late.cast("long")),
                           F.sum(ts.isNull().cast("long"))).first()
    assert row is not None
    events_in, after_as_of, without_ts = int(row[0]), int(row[1] or 0), int(row[2] or 0)
    events = interactions if as_of is None else cut_off(interactions, as_of=as_of)
    unfiltered = (cfg.user_fraction == 1.0 and cfg.min_user_positives <= 1
                  and cfg.min_item_positives <= 1)
    if pairs_later and distinct_later and unfiltered and cfg.binarise.rule == "any":
        counts = {**_no_filter_counts(events_in, after_as_of, without_ts),
                  "positives_after_binarise": None, "positives_selected": None}
        return Selection(events, events.select(layout.USER_ID, layout.ITEM_ID, layout.TS),
                         counts)

    binarised = events.transform(binarise, rule=cfg.binarise.rule,
                                 threshold=cfg.binarise.threshold).persist()
    users_binarised: int | None
    items_binarised: int | None
    if distinct_later and unfiltered:
        n_binarised, users_binarised, items_binarised = binarised.count(), None, None
    else:
        n_binarised, users_binarised, items_binarised = _tally(binarised)
    sampled = binarised.transform(sample_users, fraction=cfg.user_fraction, seed=cfg.seed)
    users_sampled, items_sampled = users_binarised, items_binarised
    if cfg.user_fraction < 1.0:
        _n, users_sampled, items_sampled = _tally(sampled)
    core = k_core(sampled, min_user_positives=cfg.min_user_positives,
                  min_item_positives=cfg.min_item_positives,
                  max_iterations=cfg.k_core_max_iterations)
    positives = core.positives
    n_positives, n_users, n_items = n_binarised, users_binarised, items_binarised
    if positives is not binarised:  # sampled or k-cored: count again, keep only the result
        positives = positives.persist()
        n_positives, n_users, n_items = _tally(positives)
        binarised.unpersist()
    counts = {
        **_no_filter_counts(events_in, after_as_of, without_ts),
        "positives_after_binarise": n_binarised,
        "users_after_binarise": users_binarised,
        "items_after_binarise": items_binarised,
        "k_core_iterations": core.iterations,
        "k_core_converged": core.converged,
        "positives_selected": n_positives,
    }
    if not unfiltered:  # then every distinct count was taken (_tally)
        assert users_binarised is not None and items_binarised is not None
        assert users_sampled is not None and items_sampled is not None
        assert n_users is not None and n_items is not None
        counts.update({"users_dropped_by_sampling": users_binarised - users_sampled,
                       "items_dropped_by_sampling": items_binarised - items_sampled,
                       "users_dropped_by_k_core": users_sampled - n_users,
                       "items_dropped_by_k_core": items_sampled - n_items})
    return Selection(events, positives, counts)
