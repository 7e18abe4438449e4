"""Dense indices of the raw ids: user_id -> user_idx, item_id -> item_idx, from 0, in
Spark's string order (a pure transform of jobs/prepare.py)."""

from __future__ import annotations

from pyspark.sql import DataFrame
from pyspark.sql import functions as F

from jobs.lake import layout


def _dense_order(ids: list[str | None]) -> list[str | None]:
    """Distinct ids in index order: numerically when all are digits, else as text.

    Digit strings sort by length, then as text (numeric order without casting, so ids
    past the range of a long still sort); text sorts by code point, which is the byte
    order of UTF-8 that Spark sorts strings by. A null id (never in a lake written by
    jobs.ingest) comes first, as in an ascending Spark sort.
    """
    present = [i for i in ids if i is not None]
    if all(i.isascii() and i.isdigit() for i in present):
        present.sort(key=lambda i: (len(i), i))
    else:
        present.sort()
    return ([None] if len(present) < len(ids) else []) + present


def index_ids(interactions: DataFrame) -> tuple[DataFrame, DataFrame]:
    """(users, items): user_id -> user_idx and item_id -> item_idx, int32, dense from 0.

    One pass over the interactions collects the distinct users and items (hundreds of
    thousands of short strings at MovieLens-20M scale, a few MB); the driver numbers
    them: two Spark jobs, each a distinct, a single-task window and a second pass over
    the distinct ids, cost far more than sorting them in Python.
    """
    spark = interactions.sparkSession
    tagged = F.explode(F.array(
        F.struct(F.lit(0).alias("_kind"), F.col(layout.USER_ID).alias("_id")),
        F.struct(F.lit(1).alias("_kind"), F.col(layout.ITEM_ID).alias("_id"))))
    distinct = interactions.select(tagged.alias("_tagged")).select("_tagged.*").distinct()
    ids: tuple[list[str | None], list[str | None]] = ([], [])
    for kind, id_ in distinct.collect():
        ids[kind].append(id_)
    frames = []
    for values, schema in zip(ids, (layout.USERS_SCHEMA, layout.ITEMS_SCHEMA), strict=True):
        ordered = _dense_order(values)
        frames.append(spark.createDataFrame(list(zip(ordered, range(len(ordered)), strict=True)),
                                            layout.ddl(schema)))
    return frames[0], frames[1]
