"""Training sequences: each user's training positives in time order, for sequence models.

    training_sequences  pure transform: positives (with ts) less the held-out pairs ->
                        user_idx, sequence (oldest first, the latest max_length kept)
    write_sequences     prepare's writer: the held-out pairs read back from the staged
                        validation/ and test/, the transform, sequences/ written

The order is the exact reverse of jobs.split's leave-one-out ranking (ts, then the seeded
tie-break hash, then item_idx), so a user's sequence followed by its validation item and
then its test item is the user's history in the order the split saw it: a sequence model
(SASRec) predicts validation from the sequence, and test from the sequence + validation.
Randomness is the split's own hash of (seed, STREAM_TIE_BREAK, user_idx, item_idx), never
`F.rand()`, and the order is total, so the rows do not depend on partitioning.
"""

from __future__ import annotations

import functools
import logging
from pathlib import Path
from typing import Any

from pyspark.sql import Column, DataFrame, Window
from pyspark.sql import functions as F

from jobs.lake import layout
from jobs.lake.config import PrepareConfig
from jobs.lake.protocol import STREAM_TIE_BREAK
from jobs.spark import conform, read_parquet, write_parquet

log = logging.getLogger(__name__)

_RANK = "_rank"  # working columns (never written)
_RANKED = "_ranked"


def tie_break(seed: int) -> Column:
    """The split's tie-break among same-second positives (jobs.split._rank_latest_first):
    xxhash64(seed, STREAM_TIE_BREAK, user_idx, item_idx). The same expression, written
    again because split keeps it private; tests/test_sequences.py holds the two orders
    equal."""
    return F.xxhash64(F.lit(seed).cast("bigint"), F.lit(STREAM_TIE_BREAK).cast("int"),
                      F.col(layout.USER_IDX).cast("int"), F.col(layout.ITEM_IDX).cast("int"))


def training_sequences(positives: DataFrame, held_out: DataFrame, *, seed: int,
                       max_length: int) -> DataFrame:
    """user_idx, sequence (layout.SEQUENCES_SCHEMA): per user the item_idx of its training
    positives, oldest first, the latest `max_length` of them.

    positives: user_idx, item_idx, ts, one row per (user, item) pair (binarised). held_out:
    the validation and test pairs (user_idx, item_idx; other columns ignored), left out.
    Order: ts ascending, same-second ties by the split's tie-break hash ascending, then
    item_idx ascending: the exact reverse of jobs.split's latest-first ranking, so the
    sequence followed by the validation then the test item is the user's time order.
    A null ts (datasets without timestamps: last.fm 360K, HetRec 2K) sorts first, as it
    ranks last in the split; where every ts is null the order is the tie hash alone, i.e.
    meaningless: sequence models should be disabled for those datasets. Users without
    training positives have no row.
    """
    if max_length < 1:
        raise ValueError(f"max_length must be >= 1 (got {max_length}): "
                         "prepare.sequence_length 0 writes no sequences/")
    pairs = [layout.USER_IDX, layout.ITEM_IDX]
    train = positives.join(held_out.select(*pairs), pairs, "left_anti")
    # The split's ranking, latest first; the latest max_length are kept, then reversed.
    latest_first = Window.partitionBy(layout.USER_IDX).orderBy(
        F.col(layout.TS).desc(), tie_break(seed).desc(), F.col(layout.ITEM_IDX).desc())
    kept = (train.select(*pairs, F.row_number().over(latest_first).alias(_RANK))
            .where(F.col(_RANK) <= max_length))
    # sort_array over (rank, item) structs: the order does not depend on collect_list's.
    oldest_first = F.sort_array(F.collect_list(F.struct(_RANK, layout.ITEM_IDX)), asc=False)
    sequences = (kept.groupBy(layout.USER_IDX).agg(oldest_first.alias(_RANKED))
                 .select(layout.USER_IDX,
                         F.col(_RANKED).getField(layout.ITEM_IDX).alias(layout.SEQUENCE)))
    return conform(sequences, layout.SEQUENCES_SCHEMA)


def skip_reason(cfg: PrepareConfig) -> str | None:
    """Why prepare writes no sequences/ under `cfg`, or None when it writes them: only
    leave-one-out holds out each user's latest positives, which a sequence leads up to."""
    if cfg.sequence_length == 0:
        return "prepare.sequence_length is 0"
    if cfg.split.method != "leave_one_out":
        return (f"split method {cfg.split.method}: sequences need leave_one_out (the held-out "
                "items must be each user's latest)")
    return None


def write_sequences(positives: DataFrame, staged: dict[str, Path],
                    cfg: PrepareConfig) -> dict[str, Any]:
    """Write sequences/ into staged[SEQUENCES] from the indexed positives (user_idx,
    item_idx, ts, one row per pair) less the positives of the validation/ and test/
    already written into `staged`; the manifest's record {"rows", "max_length"}.

    Reading the held-out pairs back from the files (not from the split's frames) makes
    both prepare paths compute the same rows, hence the same bytes.
    """
    spark = positives.sparkSession
    held_out = functools.reduce(DataFrame.unionByName, [
        read_parquet(spark, staged[name]).where(F.col(layout.LABEL) == 1)
        .select(layout.USER_IDX, layout.ITEM_IDX) for name in layout.EVAL_SPLITS])
    sequences = training_sequences(positives, held_out, seed=cfg.seed,
                                   max_length=cfg.sequence_length)
    write_parquet(sequences, staged[layout.SEQUENCES], files=cfg.output_partitions,
                  key=layout.USER_IDX, sort_by=[layout.USER_IDX])
    rows = read_parquet(spark, staged[layout.SEQUENCES]).count()
    return {"rows": rows, "max_length": cfg.sequence_length}
