"""Publish: one run's top-K lists into the SQL tables downstream teams query.

Reads ``topk/`` (user_idx, rank, item_idx, score, source), ``users/`` and ``items/`` from the
run's lake folder, maps the dense indices back to raw ids, loads the rows into the history
table and swaps them into

    recommendations(dataset, user_id, rank, item_id, score, source, model_name, model_version,
                    run_id, generated_at)   primary key (dataset, user_id, rank)

in one transaction (`jobs.serving.table`): a reader sees the previous complete set or the new one,
never a mix, and other datasets' rows are never touched. Any SQLAlchemy URL works: SQLite on
a laptop, PostgreSQL at scale (COPY, a read-only role for downstream teams).

    python -m jobs.serving.publish --config configs/ml-100k.yaml --logical-date 2026-11-23 \
        [--lake-root data/lake] [--db-url sqlite:///data/recommendations.db] \
        [--model-version 3 --run-id <mlflow run id>]
    python -m jobs.serving.publish rollback --config configs/ml-100k.yaml [--to-date 2026-11-21]
    python -m jobs.serving.publish runs --config configs/ml-100k.yaml

Model version and run id default to what recommend recorded in the manifest. The database
URL is --db-url, else $NCF_DB_URL, else a SQLite file under data/ (an Airflow connection is
resolved by the DAG and passed as --db-url).
"""

from __future__ import annotations

import argparse
import datetime as dt
import logging
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pandas as pd
import sqlalchemy as sa

from jobs.lake import cli, failpoints, layout
from jobs.lake.config import DataConfig, load_data_config
from jobs.lake.layout import (
    ITEM_ID,
    ITEMS,
    ITEMS_SCHEMA,
    RANK,
    SCORE,
    SOURCE,
    TOPK,
    TOPK_SCHEMA,
    USER_ID,
    USER_IDX,
    USERS,
    USERS_SCHEMA,
    LakePaths,
    Schema,
)
from jobs.serving import table
from jobs.serving.engine import create_db_engine, masked_url, sqlalchemy_url
from jobs.serving.table import (
    DATASET,
    GENERATED_AT,
    MODEL_NAME,
    MODEL_VERSION,
    RUN_ID,
    TABLE_COLUMNS,
    TableError,
    Tables,
)

logger = logging.getLogger(__name__)

SAMPLE_SIZE = 5
SOURCES = (layout.SOURCE_MODEL, layout.SOURCE_POPULARITY)


class PublishError(Exception):
    """The recommendations cannot be published; the message names the input and the problem."""


# --- rows ---------------------------------------------------------------------------


def _require_columns(frame: pd.DataFrame, schema: Schema, name: str) -> None:
    missing = [column for column in layout.columns(schema) if column not in frame.columns]
    if missing:
        raise PublishError(f"{name}: missing column(s) {missing}; expected "
                           f"{layout.columns(schema)} (jobs/lake/layout.py)")


def _sample(values: pd.Series | pd.Index | pd.DataFrame) -> str:
    if isinstance(values, pd.DataFrame):
        rows = values.head(SAMPLE_SIZE).to_dict("records")
        return "; ".join(" ".join(f"{k}={v!r}" for k, v in row.items()) for row in rows)
    return ", ".join(repr(v) for v in list(values[:SAMPLE_SIZE]))


def _utc_naive(moment: dt.datetime) -> dt.datetime:
    if moment.tzinfo is None:
        return moment
    return moment.astimezone(dt.UTC).replace(tzinfo=None)


def _check_topk(topk: pd.DataFrame) -> None:
    """What loading needs: the columns and no nulls (the table's columns are NOT NULL).

    The top-k invariants (k rows per user, ranks 1..k, no repeated item, finite scores
    falling with rank, known sources) are the recommendations suite's
    (jobs.quality.expectations), checked by the validate_recommendations task that every
    publish waits for: they are written once, there.
    """
    _require_columns(topk, TOPK_SCHEMA, TOPK)
    if topk.empty:
        raise PublishError(f"{TOPK}: no recommendations to publish")
    nulls = [column for column in layout.columns(TOPK_SCHEMA) if topk[column].isna().any()]
    if nulls:
        raise PublishError(f"{TOPK}: null values in column(s) {nulls}; re-run recommend")


def _map_ids(topk: pd.DataFrame, mapping: pd.DataFrame, name: str, schema: Schema) -> pd.Series:
    """The raw id of each topk row's index, through users/ or items/."""
    _require_columns(mapping, schema, name)
    raw, idx = layout.columns(schema)
    doubled = mapping[mapping[idx].duplicated(keep=False)]
    if not doubled.empty:
        raise PublishError(f"{name}: {idx} is not unique, e.g. {_sample(doubled[[idx, raw]])}; "
                           "the mapping is broken; re-run prepare")
    lookup = pd.Series(mapping[raw].to_numpy(), index=mapping[idx].to_numpy())
    ids = topk[idx].map(lookup)
    unmapped = topk.loc[ids.isna(), idx].drop_duplicates()
    if not unmapped.empty:
        raise PublishError(f"{name}: no {raw} for {len(unmapped)} {idx} value(s) of {TOPK}, "
                           f"e.g. {_sample(unmapped)}; {TOPK}/ and {name}/ come from different "
                           "runs: re-run recommend on this date's prepare output")
    return ids.astype(str)


def build_rows(topk: pd.DataFrame, users: pd.DataFrame, items: pd.DataFrame, *, dataset: str,
               model_name: str, model_version: str, run_id: str,
               generated_at: dt.datetime) -> pd.DataFrame:
    """The table rows for one dataset: raw ids, 1-based ranks, one model version and run."""
    for field, value in ((DATASET, dataset), (MODEL_NAME, model_name),
                         (MODEL_VERSION, model_version), (RUN_ID, run_id)):
        if not isinstance(value, str) or not value.strip():
            raise PublishError(f"{field} must be a non-empty string, got {value!r}")
    _check_topk(topk)
    ordered = topk.sort_values([USER_IDX, RANK], kind="stable", ignore_index=True)
    rows = pd.DataFrame({
        DATASET: dataset,
        USER_ID: _map_ids(ordered, users, USERS, USERS_SCHEMA),
        RANK: ordered[RANK].astype("int64"),
        ITEM_ID: _map_ids(ordered, items, ITEMS, ITEMS_SCHEMA),
        SCORE: ordered[SCORE].astype("float64"),
        SOURCE: ordered[SOURCE].astype(str),
        MODEL_NAME: model_name,
        MODEL_VERSION: model_version,
        RUN_ID: run_id,
        GENERATED_AT: pd.Timestamp(_utc_naive(generated_at)),
    })
    return rows[list(TABLE_COLUMNS)]


# --- the stage ----------------------------------------------------------------------


def read_lake_frame(path: Path, schema: Schema) -> pd.DataFrame:
    """A lake dataset folder as pandas; a missing or empty folder is a PublishError."""
    try:
        frame = layout.read_lake_table(path, schema)
    except layout.LakeReadError as exc:
        raise PublishError(str(exc)) from exc
    if frame.num_rows == 0:
        raise PublishError(f"{path} is empty: nothing to publish; re-run the stage that "
                           f"writes {path.name}/")
    return frame.to_pandas()


def db_url(explicit: str | None = None) -> str:
    """--db-url if given, else $NCF_DB_URL, else the local SQLite file (SQLAlchemy form)."""
    return sqlalchemy_url(explicit or os.environ.get(layout.ENV_DB_URL)
                                or layout.DEFAULT_DB_URL)


def _prepare_sqlite_folder(url: str) -> None:
    parsed = sa.make_url(url)
    database = parsed.database
    if parsed.get_backend_name() == "sqlite" and database and database != ":memory:" \
            and not database.startswith("file:"):
        Path(database).parent.mkdir(parents=True, exist_ok=True)


def open_engine(url: str) -> sa.Engine:
    _prepare_sqlite_folder(url)
    return create_db_engine(url)


def tables_of(cfg: DataConfig) -> Tables:
    return Tables.declare(cfg.publish.table, cfg.publish.runs_table, cfg.publish.history_table)


def _from_manifest(manifest: dict[str, Any], key: str, explicit: str | None) -> str:
    """The CLI's value, else what recommend (the model behind topk/) recorded."""
    value = explicit or manifest.get("recommend", {}).get(key)
    if value in (None, ""):
        raise PublishError(f"no {key}: pass --{key.replace('_', '-')}, or run recommend for "
                           "this date (it records the model behind topk/ in the manifest)")
    return str(value)


def _generated_at(manifest: dict[str, Any]) -> dt.datetime:
    # When recommend wrote topk/, so a re-publish of the same lake folder writes the same rows.
    written = manifest.get("recommend", {}).get("written_at")
    if written:
        return _utc_naive(dt.datetime.fromisoformat(written))
    return _utc_naive(dt.datetime.now(dt.UTC))


def publish_run(cfg: DataConfig, paths: LakePaths, url: str, *,
                model_version: str | None = None, run_id: str | None = None) -> dict[str, Any]:
    """Load and swap in one run's recommendations; record and return the manifest entry.

    Raises PublishError (naming the input or the database) and leaves the serving set as it
    was on any failure; calling it again completes the publish.
    """
    manifest = layout.read_manifest(paths)
    model_version = _from_manifest(manifest, MODEL_VERSION, model_version)
    run_id = _from_manifest(manifest, RUN_ID, run_id)
    topk = read_lake_frame(paths.path(TOPK), TOPK_SCHEMA)
    users = read_lake_frame(paths.path(USERS), USERS_SCHEMA)
    items = read_lake_frame(paths.path(ITEMS), ITEMS_SCHEMA)
    rows = build_rows(topk, users, items, dataset=cfg.dataset, model_name=cfg.model_name,
                      model_version=model_version, run_id=run_id,
                      generated_at=_generated_at(manifest))
    tables = tables_of(cfg)
    info = table.RunInfo(dataset=cfg.dataset, logical_date=paths.logical_date, run_id=run_id,
                         model_name=cfg.model_name, model_version=model_version,
                         lake_path=str(paths.base))
    engine = open_engine(url)
    try:
        table.ensure_tables(engine, tables)
        if cfg.publish.reader_role:
            table.grant_read_only(engine, tables, cfg.publish.reader_role)
        table.load_run(engine, tables, info, rows)
        failpoints.reach(failpoints.PUBLISH_BEFORE_SWAP)  # for the kill test
        count = table.swap_in(engine, tables, cfg.dataset, paths.logical_date)
        expired = table.expire_old_runs(engine, tables, cfg.dataset, cfg.publish.keep_runs)
    except TableError as exc:
        raise PublishError(str(exc)) from exc
    except sa.exc.SQLAlchemyError as exc:  # connecting, creating tables, granting
        cause = exc.orig if isinstance(exc, sa.exc.DBAPIError) else exc
        raise PublishError(f"database {masked_url(url)} failed; nothing was published: "
                           f"{type(cause).__name__}: {str(cause).strip()}") from exc
    finally:
        engine.dispose()
    entry = {
        "dataset": cfg.dataset,
        "table": cfg.publish.table,
        "db_url": masked_url(url),
        "rows": count,
        "users": int(rows[USER_ID].nunique()),
        "popularity_users": int(rows.loc[rows[SOURCE] == layout.SOURCE_POPULARITY,
                                         USER_ID].nunique()),
        "k": int(rows[RANK].max()),
        "model_name": cfg.model_name,
        "model_version": model_version,
        "run_id": run_id,
        "generated_at": rows[GENERATED_AT].iloc[0].isoformat(),
        "expired_runs": expired,
    }
    layout.update_manifest(paths, "publish", entry)
    logger.info("published %d rows of %s %s (model %s version %s) to %s", count, cfg.dataset,
                paths.logical_date, cfg.model_name, model_version, masked_url(url))
    return entry


ASSET_EXTRA_KEYS = ("dataset", "rows", "users", "popularity_users", "model_name",
                    "model_version", "run_id", "table")


def publish_task(config: Path, logical_date: str, url: str, asset_event: Any = None,
                 lake_root: Path | None = None) -> dict[str, Any]:
    """The publish task's body: load the config, publish the run of `logical_date`, and put
    the counts on the Airflow asset event (`outlet_events[asset]`) when one is given."""
    cfg = load_data_config(config)
    paths = LakePaths(cli.lake_root(lake_root), cfg.dataset, logical_date)
    entry = publish_run(cfg, paths, url)
    if asset_event is not None:
        asset_event.extra = {**{key: entry[key] for key in ASSET_EXTRA_KEYS},
                             "logical_date": logical_date}
    return entry


# --- CLI ----------------------------------------------------------------------------


def _db_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--db-url", default=None,
                        help=f"SQLAlchemy URL; default ${layout.ENV_DB_URL} or "
                             f"{layout.DEFAULT_DB_URL}")


def _admin(argv: Sequence[str]) -> int:
    """`rollback` and `runs`: operator commands on the tables, no lake needed."""
    parser = argparse.ArgumentParser(prog=f"python -m jobs.serving.publish {argv[0]}")
    parser.add_argument("command", choices=("rollback", "runs"))
    parser.add_argument("--config", required=True, type=Path)
    parser.add_argument("--to-date", type=cli.logical_date, default=None,
                        help="rollback: the logical date to serve again (default: the latest "
                             "run older than the serving one)")
    _db_argument(parser)
    args = parser.parse_args(argv)
    cfg = cli.load_stage_config(args.config)
    engine = open_engine(db_url(args.db_url))
    tables = tables_of(cfg)
    try:
        if args.command == "rollback":
            served = table.rollback(engine, tables, cfg.dataset, args.to_date)
            sys.stdout.write(f"{cfg.dataset}: {cfg.publish.table} now serves the run of "
                             f"{served}\n")
        else:
            table.ensure_tables(engine, tables)
            for run in table.loaded_runs(engine, tables, cfg.dataset):
                sys.stdout.write(
                    f"{run[table.LOGICAL_DATE]}  {run['status']:<8} model {run[MODEL_NAME]} "
                    f"v{run[MODEL_VERSION]}  {run['rows']} rows  {run['users']} users "
                    f"({run['popularity_users']} popularity)  served {run['served_at']}\n")
    except (TableError, sa.exc.SQLAlchemyError) as exc:
        logger.error("%s", exc)
        return 1
    finally:
        engine.dispose()
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    given = sys.argv[1:] if argv is None else list(argv)
    if given and given[0] in ("rollback", "runs"):
        return _admin(given)
    parser = cli.stage_parser(__doc__)
    parser.prog = "python -m jobs.serving.publish"
    _db_argument(parser)
    parser.add_argument("--model-version", default=None,
                        help="registered model version; default: the manifest's recommend entry")
    parser.add_argument("--run-id", default=None,
                        help="MLflow run id; default: the manifest's recommend entry")
    args = parser.parse_args(given)
    cfg = cli.load_stage_config(args.config)
    paths = LakePaths(cli.lake_root(args.lake_root), cfg.dataset, args.logical_date)
    try:
        publish_run(cfg, paths, db_url(args.db_url), model_version=args.model_version,
                    run_id=args.run_id)
    except PublishError as exc:
        logger.error("%s", exc)
        return 1
    return 0


if __name__ == "__main__":
    cli.configure_logging()
    raise SystemExit(main())
