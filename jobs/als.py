"""The ALS candidate: Spark MLlib ALS on implicit feedback, for each step of the refit
protocol (docs/DESIGN.md, "Serving the best model").

Reads   <lake>/<dataset>/<logical_date>/train/, validation/, test/  (jobs/prepare.py)
Writes  <lake>/<dataset>/<logical_date>/als/<splits>/  user_factors/  user_idx, factors
                                                       item_factors/  item_idx, factors
        for <splits> = train (selection), and with candidates.refit also train_validation
        (the reported test metrics) and train_validation_test (the served model);
        factors: array<float> of length als.rank; all folders swapped into place together;
        and the manifest entry "als" (params, counts, input checksums, seconds).

Run:
    spark-submit jobs/als.py --config configs/ml-100k.yaml --logical-date 2026-11-23

Each training positive (label 1; the sampled negatives are not used) is a rating of 1;
with implicitPrefs ALS weighs it by confidence 1 + alpha and every other cell as a 0 of
confidence 1 (Hu, Koren and Volinsky, ICDM 2008). The factors are scored by the
candidates stage of ncf_model (a dot product) with the same evaluation as every family. A user or
item without a training positive has no factors: that stage scores it 0.

One seed gives the same factors on the same input: ALS draws its initial factors from
the seed per block, and the number of blocks is fixed (10), not Spark's parallelism.
When `candidates.families` does not list als, the job fits nothing and exits 0.
"""

from __future__ import annotations

import dataclasses
import functools
import logging
import shutil
import time
import uuid
from typing import Any

from pyspark.ml.recommendation import ALS
from pyspark.sql import DataFrame
from pyspark.sql import functions as F

from jobs.lake import layout
from jobs.lake.cli import configure_logging, lake_root, load_stage_config, stage_parser
from jobs.lake.config import AlsConfig, CandidatesConfig
from jobs.spark import get_spark, write_parquet

log = logging.getLogger(__name__)

_RATING = "_rating"  # working column (never written)
N_BLOCKS = 10  # ALS's default, fixed here: the factors must not depend on parallelism
# Every iteration lengthens the factors' lineage; past ~10 iterations its deserialisation
# overflows an executor's stack (StackOverflowError, seen at max_iter 15 on MovieLens-100K)
# unless ALS checkpoints, which it does every CHECKPOINT_INTERVAL iterations once the
# SparkContext has a checkpoint directory (main sets one under the run's lake folder).
CHECKPOINT_INTERVAL = 5


class AlsError(RuntimeError):
    """The input of the ALS job is missing or unusable; the message names the path and fix."""


# --- transforms ----------------------------------------------------------------------

def implicit_ratings(pairs: DataFrame) -> DataFrame:
    """The positives of lake pairs as ALS input: user_idx, item_idx, a rating of 1.0 each."""
    return (pairs.where(F.col(layout.LABEL) == 1)
            .select(layout.USER_IDX, layout.ITEM_IDX, F.lit(1.0).alias(_RATING)))


def fit_als(ratings: DataFrame, cfg: AlsConfig) -> tuple[DataFrame, DataFrame]:
    """(user_factors, item_factors) of implicit-feedback ALS fitted on `ratings`, in the
    lake schemas USER_FACTORS_SCHEMA and ITEM_FACTORS_SCHEMA."""
    als = ALS(rank=cfg.rank, maxIter=cfg.max_iter, regParam=cfg.reg_param, alpha=cfg.alpha,
              implicitPrefs=True, seed=cfg.seed, coldStartStrategy="drop",
              numUserBlocks=N_BLOCKS, numItemBlocks=N_BLOCKS,
              checkpointInterval=CHECKPOINT_INTERVAL, userCol=layout.USER_IDX,
              itemCol=layout.ITEM_IDX, ratingCol=_RATING)
    model = als.fit(ratings)

    def factors(df: DataFrame, key: str) -> DataFrame:
        return df.select(F.col("id").cast("int").alias(key),
                         F.col("features").cast("array<float>").alias(layout.FACTORS))

    return factors(model.userFactors, layout.USER_IDX), factors(model.itemFactors,
                                                                 layout.ITEM_IDX)


# --- I/O -----------------------------------------------------------------------------

SELECT_ON = (layout.TRAIN,)


def fit_sets(cfg: CandidatesConfig) -> list[tuple[str, ...]]:
    """The positives ALS is fitted on: train alone (selection) and, with refit, train +
    validation (test metrics) and every split (the served model)."""
    if not cfg.refit:
        return [SELECT_ON]
    return [SELECT_ON, (*SELECT_ON, layout.VALIDATION), (*SELECT_ON, *layout.EVAL_SPLITS)]


def main(argv: list[str] | None = None) -> int:
    args = stage_parser(__doc__).parse_args(argv)
    configure_logging()
    cfg = load_stage_config(args.config)
    paths = layout.LakePaths(lake_root(args.lake_root), cfg.dataset, args.logical_date)
    if "als" not in cfg.candidates.families:
        log.info("als is not in candidates.families of %s: nothing to fit", args.config)
        return 0
    sources = {name: paths.path(name) for name in layout.SPLITS}
    missing = [str(folder) for folder in sources.values() if not folder.is_dir()]
    if missing:
        raise AlsError(f"{', '.join(missing)} do(es) not exist: run jobs/prepare.py for "
                       f"{cfg.dataset} {args.logical_date} first")

    started = time.perf_counter()  # the job's wall time, session start-up included
    spark = get_spark(f"als-{cfg.dataset}")
    ratings = {name: implicit_ratings(spark.read.schema(layout.ddl(layout.PAIRS_SCHEMA))
                                      .parquet(str(folder))).persist()
               for name, folder in sources.items()}
    checkpoints = paths.base / f".tmp-als-checkpoints-{uuid.uuid4().hex[:12]}"
    spark.sparkContext.setCheckpointDir(str(checkpoints))
    counts: dict[str, Any] = {}
    try:
        n_train = ratings[layout.TRAIN].count()
        if n_train == 0:
            raise AlsError(f"{sources[layout.TRAIN]} holds no positives (label 1): nothing "
                           "to fit ALS on")
        with layout.staged_dir(paths.path(layout.ALS)) as tmp:
            for splits in fit_sets(cfg.candidates):
                union = functools.reduce(DataFrame.unionByName,
                                         [ratings[name] for name in splits])
                users, items = fit_als(union, cfg.als)
                folder = tmp / "_".join(splits)
                write_parquet(users, folder / layout.USER_FACTORS, files=1,
                              sort_by=[layout.USER_IDX])
                write_parquet(items, folder / layout.ITEM_FACTORS, files=1,
                              sort_by=[layout.ITEM_IDX])
                counts["_".join(splits)] = {
                    "n_users": spark.read.parquet(str(folder / layout.USER_FACTORS)).count(),
                    "n_items": spark.read.parquet(str(folder / layout.ITEM_FACTORS)).count()}
    finally:
        for frame in ratings.values():
            frame.unpersist()
        shutil.rmtree(checkpoints, ignore_errors=True)
    layout.update_manifest(paths, "als", {
        "params": dataclasses.asdict(cfg.als), "n_train_positives": n_train,
        "input_sha256": {name: layout.sha256_dir(folder) for name, folder in sources.items()},
        "seconds": round(time.perf_counter() - started, 2), "fitted": counts})
    log.info("als %s %s: %s -> %s", cfg.dataset, args.logical_date, counts,
             paths.path(layout.ALS))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
