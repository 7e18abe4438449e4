"""ALS baseline: Spark MLlib ALS on implicit feedback, fitted on the training positives.

Reads   <lake>/<dataset>/<logical_date>/train/          (written by jobs/prepare.py)
Writes  <lake>/<dataset>/<logical_date>/baselines/als/  user_factors/  user_idx, factors
                                                        item_factors/  item_idx, factors
        (factors: array<float> of length baselines.als.rank; both folders swapped into
        place together) and the manifest entry "als" (params, counts, input checksum).

Run:
    spark-submit jobs/als.py --config configs/ml-100k.yaml --logical-date 2026-11-23

Each training positive (label 1; the sampled negatives are not used) is a rating of 1;
with implicitPrefs ALS weighs it by confidence 1 + alpha and every other cell as a 0 of
confidence 1 (Hu, Koren and Volinsky, ICDM 2008). The factors are scored by the
`baselines` stage of ncf_model (a dot product) with the same evaluation as NCF. A user or
item without a training positive has no factors: that stage scores it 0.

One seed gives the same factors on the same input: ALS draws its initial factors from
the seed per block, and the number of blocks is fixed (10), not Spark's parallelism.
When `baselines.enabled` does not list als, the job fits nothing and exits 0.
"""

from __future__ import annotations

import dataclasses
import logging
import shutil
import time
import uuid
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from pyspark.ml.recommendation import ALS
from pyspark.sql import DataFrame
from pyspark.sql import functions as F

from jobs.lake import layout
from jobs.lake.cli import configure_logging, lake_root, load_stage_config, stage_parser
from jobs.lake.config import BASELINES, AlsConfig
from jobs.lake.loader import ConfigError, build_section, read_yaml
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

def implicit_ratings(train: DataFrame) -> DataFrame:
    """The positives of train/ as ALS input: user_idx, item_idx, a rating of 1.0 each."""
    return (train.where(F.col(layout.LABEL) == 1)
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

def load_als_config(path: Path) -> AlsConfig | None:
    """The `baselines.als` section, or None when `baselines.enabled` leaves als out.

    A bad section ends the job with exit code 2, the reason logged (as load_stage_config).
    """
    try:
        section = read_yaml(path).get("baselines") or {}
        if not isinstance(section, Mapping):
            raise ConfigError(f"{path}: baselines: expected a mapping, got {section!r}")
        if "als" not in tuple(section.get("enabled", BASELINES)):
            return None
        return build_section(AlsConfig, section.get("als"), f"{path}: baselines.als")
    except ConfigError as exc:
        log.error("%s", exc)
        raise SystemExit(2) from exc


def write_factors(users: DataFrame, items: DataFrame, paths: layout.LakePaths) -> None:
    """Both factor folders, one file each sorted by index, swapped in together."""
    with layout.staged_dir(paths.path(layout.ALS)) as tmp:
        write_parquet(users, tmp / layout.USER_FACTORS, files=1, sort_by=[layout.USER_IDX])
        write_parquet(items, tmp / layout.ITEM_FACTORS, files=1, sort_by=[layout.ITEM_IDX])


def main(argv: list[str] | None = None) -> int:
    args = stage_parser(__doc__).parse_args(argv)
    configure_logging()
    cfg = load_stage_config(args.config)
    als_cfg = load_als_config(args.config)
    paths = layout.LakePaths(lake_root(args.lake_root), cfg.dataset, args.logical_date)
    if als_cfg is None:
        log.info("als is not in baselines.enabled of %s: nothing to fit", args.config)
        return 0
    source = paths.path(layout.TRAIN)
    if not source.is_dir():
        raise AlsError(f"{source} does not exist: run jobs/prepare.py for {cfg.dataset} "
                       f"{args.logical_date} first")

    started = time.perf_counter()  # the job's wall time, session start-up included
    spark = get_spark(f"als-{cfg.dataset}")
    train = spark.read.schema(layout.ddl(layout.PAIRS_SCHEMA)).parquet(str(source))
    ratings = implicit_ratings(train).persist()
    checkpoints = paths.base / f".tmp-als-checkpoints-{uuid.uuid4().hex[:12]}"
    spark.sparkContext.setCheckpointDir(str(checkpoints))
    try:
        n_positives = ratings.count()
        if n_positives == 0:
            raise AlsError(f"{source} holds no positives (label 1): nothing to fit ALS on")
        users, items = fit_als(ratings, als_cfg)
        write_factors(users, items, paths)
    finally:
        ratings.unpersist()
        shutil.rmtree(checkpoints, ignore_errors=True)
    folder = paths.path(layout.ALS)
    counts: dict[str, Any] = {
        "n_users": spark.read.parquet(str(folder / layout.USER_FACTORS)).count(),
        "n_items": spark.read.parquet(str(folder / layout.ITEM_FACTORS)).count(),
        "n_train_positives": n_positives,
    }
    layout.update_manifest(paths, "als", {
        "params": dataclasses.asdict(als_cfg), "input_sha256": layout.sha256_dir(source),
        "seconds": round(time.perf_counter() - started, 2), **counts})
    log.info("als %s %s: %s -> %s", cfg.dataset, args.logical_date, counts, folder)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
