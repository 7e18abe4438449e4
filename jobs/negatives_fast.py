"""The numpy twin of jobs.negatives.sample_negatives, for jobs.prepare_fast's per-user pass:
the same seeded draws, rounds and enumeration, item for item (tests/test_prepare_fast.py
holds the two to the same bytes)."""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from jobs import xxhash
from jobs.negatives import OVERSAMPLE, SLACK

if TYPE_CHECKING:
    from jobs.prepare_fast import Params, Ragged


def sample(user_ids: np.ndarray, touched: Ragged, untouched: np.ndarray,
            target: np.ndarray, params: Params, *, stream: int,
            distinct: bool) -> tuple[np.ndarray, np.ndarray]:
    """(row, item) of every negative of the users with target > 0, in no given order.

    jobs.negatives.sample_negatives per user: users whose untouched items are at most
    twice the target are enumerated; the others draw in up to max_rounds rounds, and
    whoever is still short is enumerated for the rest. Users are taken in chunks, each
    with a (users x items) table of what is touched (1) or chosen (2).
    """
    n_items = params.n_items
    chunk = max(1, params.chunk_bytes // max(n_items, 1))
    out_rows: list[np.ndarray] = []
    out_items: list[np.ndarray] = []
    for first in range(0, len(user_ids), chunk):
        last = min(first + chunk, len(user_ids))
        table = np.zeros((last - first, n_items), dtype=np.uint8)
        lo, hi = touched.offsets[first], touched.offsets[last]
        local = np.repeat(np.arange(last - first), np.diff(touched.offsets[first:last + 1]))
        table[local, touched.values[lo:hi]] = 1
        rows, chosen = _sample_chunk(user_ids[first:last], table, untouched[first:last],
                                     target[first:last], seed=params.seed, stream=stream,
                                     max_rounds=params.max_rounds, distinct=distinct)
        out_rows.append(rows + first)
        out_items.append(chosen)
    if not out_rows:
        return np.zeros(0, np.int64), np.zeros(0, np.int32)
    return np.concatenate(out_rows), np.concatenate(out_items)


def _sample_chunk(user_ids: np.ndarray, table: np.ndarray, untouched: np.ndarray,
                  target: np.ndarray, *, seed: int, stream: int, max_rounds: int,
                  distinct: bool) -> tuple[np.ndarray, np.ndarray]:
    """The negatives (local row, item) of one chunk; marks the chosen items in `table`."""
    n_items = table.shape[1]
    wanted = target > 0
    few = wanted & (untouched <= target * 2)
    pending = np.flatnonzero(wanted & ~few)
    missing = target[pending].copy()
    next_draw = np.zeros(len(pending), dtype=np.int64)
    prefix = xxhash.chain(np.int64(seed), np.int32(stream), user_ids[pending].astype(np.int32))
    rows_out: list[np.ndarray] = []
    items_out: list[np.ndarray] = []
    for round_number in range(1, max_rounds + 1):
        if len(pending) == 0:
            break
        scale = n_items * OVERSAMPLE * 2 ** (round_number - 1)  # as jobs.negatives does
        n_draws = (np.ceil(missing.astype(np.float64) * scale
                           / untouched[pending].astype(np.float64)).astype(np.int64) + SLACK)
        owner = np.repeat(np.arange(len(pending)), n_draws)
        draw = np.repeat(next_draw - np.r_[0, np.cumsum(n_draws)[:-1]], n_draws) + np.arange(
            owner.size)
        drawn = np.mod(xxhash.resume(prefix[owner], draw), n_items).astype(np.int32)
        row = pending[owner]
        fresh = np.flatnonzero(table[row, drawn] == 0)
        # The first draw of each (user, item) among the fresh ones, in draw order.
        pair, position = sorted_with_order(row[fresh].astype(np.int64) * n_items
                                            + drawn[fresh])
        fresh = fresh[np.sort(position[np.r_[True, pair[1:] != pair[:-1]]])]
        owner_fresh = owner[fresh]
        starts = np.searchsorted(owner_fresh, np.arange(len(pending)))
        rank = np.arange(len(fresh)) - starts[owner_fresh]
        take = fresh[rank < missing[owner_fresh]]
        table[row[take], drawn[take]] = 2
        rows_out.append(row[take])
        items_out.append(drawn[take])
        missing -= np.bincount(owner[take], minlength=len(pending))
        next_draw += n_draws
        still = missing > 0
        pending, missing, next_draw, prefix = (pending[still], missing[still],
                                               next_draw[still], prefix[still])
    short = np.r_[np.flatnonzero(few), pending].astype(np.int64)
    short_by = np.r_[target[few], missing].astype(np.int64)
    for local, n_short in zip(short.tolist(), short_by.tolist(), strict=True):
        enumerated = _enumerate(int(user_ids[local]), table[local], n_short,
                                int(untouched[local]), seed=seed, stream=stream,
                                distinct=distinct)
        rows_out.append(np.full(len(enumerated), local, dtype=np.int64))
        items_out.append(enumerated)
    if not rows_out:
        return np.zeros(0, np.int64), np.zeros(0, np.int32)
    return np.concatenate(rows_out).astype(np.int64), np.concatenate(items_out)


def _enumerate(user: int, marks: np.ndarray, n_short: int, n_untouched: int, *, seed: int,
               stream: int, distinct: bool) -> np.ndarray:
    """jobs.negatives._take_untouched for one user: its untouched items not chosen yet,
    in a hashed order; distinct takes the first n_short, otherwise item r of the U
    untouched comes n_short // U times, once more if r < n_short mod U (a user short
    after the rounds has over U / 2 left, more than it misses: no repeats)."""
    available = np.flatnonzero(marks == 0).astype(np.int32)
    hashed = xxhash.chain(np.int64(seed), np.int32(-stream), np.int32(user), available)
    ordered = available[np.lexsort((available, hashed))]
    if distinct:
        return ordered[:n_short]
    times = n_short // n_untouched + (np.arange(len(ordered)) < n_short % n_untouched)
    return np.repeat(ordered, times)


def sorted_with_order(keys: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(keys sorted, the stable order that sorts them) for non-negative int64 keys.

    numpy's sort of plain int64 is several times faster than its argsort: when the keys
    leave room, each carries its position in its low bits and one sort gives both.
    """
    position_bits = max(int(len(keys)).bit_length(), 1)
    if len(keys) == 0 or int(keys.max()) < (1 << (62 - position_bits)):
        packed = np.sort((keys << position_bits) | np.arange(len(keys), dtype=np.int64))
        return packed >> position_bits, packed & ((1 << position_bits) - 1)
    order = np.argsort(keys, kind="stable")
    return keys[order], order
