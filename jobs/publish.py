"""Publish: the top-K lists of one run into the SQL table downstream teams query.

Reads ``topk/`` (user_idx, rank, item_idx, score), ``users/`` and ``items/`` from the run's
lake folder, maps the dense indices back to raw ids and replaces this dataset's rows of

    recommendations(dataset, user_id, rank, item_id, score, model_name, model_version,
                    run_id, generated_at)   primary key (dataset, user_id, rank)

in one transaction: a reader sees the previous complete set or the new complete set, never a
mix, and other datasets' rows are never touched. Any SQLAlchemy URL works: SQLite on a
laptop (WAL journal, so readers are not blocked while a publish runs), PostgreSQL at scale.

    python -m jobs.publish --config configs/ml-100k.yaml --logical-date 2026-11-23 \
        [--lake-root data/lake] [--db-url sqlite:///data/recommendations.db] \
        [--model-version 3 --run-id <mlflow run id>]

Model version and run id default to what evaluate recorded in the manifest. The database URL
is --db-url, else $NCF_DB_URL, else a SQLite file under data/.
"""

from __future__ import annotations

import datetime as dt
import logging
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import sqlalchemy as sa
from sqlalchemy.engine import Engine

from jobs import cli, layout
from jobs.config import ConfigError, load_data_config
from jobs.layout import (
    ITEM_ID,
    ITEM_IDX,
    ITEMS,
    ITEMS_SCHEMA,
    RANK,
    SCORE,
    TOPK,
    TOPK_SCHEMA,
    USER_ID,
    USER_IDX,
    USERS,
    USERS_SCHEMA,
    LakePaths,
    Schema,
)

logger = logging.getLogger(__name__)

# Columns of the published table that are not lake columns (the table contract lives here).
DATASET = "dataset"
MODEL_NAME = "model_name"
MODEL_VERSION = "model_version"
RUN_ID = "run_id"
GENERATED_AT = "generated_at"
TABLE_COLUMNS = (DATASET, USER_ID, RANK, ITEM_ID, SCORE, MODEL_NAME, MODEL_VERSION, RUN_ID,
                 GENERATED_AT)

INSERT_CHUNK = 10_000  # rows per executemany call: bounds driver memory, not atomicity
SAMPLE_SIZE = 5


class PublishError(Exception):
    """The recommendations cannot be published; the message names the input and the problem."""


# --- the table ----------------------------------------------------------------------


def recommendations_table(metadata: sa.MetaData, name: str) -> sa.Table:
    """The published table; `generated_at` is UTC, stored without a time zone."""
    return sa.Table(
        name, metadata,
        sa.Column(DATASET, sa.Text, primary_key=True),
        sa.Column(USER_ID, sa.Text, primary_key=True),
        sa.Column(RANK, sa.Integer, primary_key=True, autoincrement=False),  # 1 = best
        sa.Column(ITEM_ID, sa.Text, nullable=False),
        sa.Column(SCORE, sa.Float, nullable=False),
        sa.Column(MODEL_NAME, sa.Text, nullable=False),
        sa.Column(MODEL_VERSION, sa.Text, nullable=False),
        sa.Column(RUN_ID, sa.Text, nullable=False),
        sa.Column(GENERATED_AT, sa.DateTime(timezone=False), nullable=False),
    )


def ensure_table(engine: Engine, name: str) -> sa.Table:
    """Create the table if it is absent; refuse one that lacks a column of the contract."""
    table = recommendations_table(sa.MetaData(), name)
    try:
        table.metadata.create_all(engine, checkfirst=True)
    except sa.exc.DBAPIError:
        if not sa.inspect(engine).has_table(name):  # else: a concurrent first publish won
            raise
    existing = {column["name"] for column in sa.inspect(engine).get_columns(name)}
    missing = [column for column in TABLE_COLUMNS if column not in existing]
    if missing:
        raise PublishError(f"table {name} at {masked_url(engine.url)} exists without column(s) "
                           f"{missing}; migrate it or publish to another table "
                           "(publish.table in the config)")
    return table


def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
    # WAL: readers keep reading the last committed set while a publish writes the next one
    # (with the default rollback journal they would get "database is locked").
    cursor = dbapi_connection.cursor()
    try:
        cursor.execute("PRAGMA journal_mode=WAL")
    finally:
        cursor.close()


def create_db_engine(url: str | sa.URL) -> Engine:
    """An engine for `url`; SQLite connections are switched to the WAL journal on connect."""
    engine = sa.create_engine(url)
    if engine.dialect.name == "sqlite":
        sa.event.listen(engine, "connect", _sqlite_pragmas)
    return engine


def masked_url(url: str | sa.URL) -> str:
    """The URL as text with any password replaced by ***, fit for logs and the manifest."""
    return sa.make_url(url).render_as_string(hide_password=True)


# --- rows ---------------------------------------------------------------------------


def _require_columns(frame: pd.DataFrame, schema: Schema, name: str) -> None:
    missing = [column for column in layout.columns(schema) if column not in frame.columns]
    if missing:
        raise PublishError(f"{name}: missing column(s) {missing}; expected "
                           f"{layout.columns(schema)} (jobs/layout.py)")


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
    _require_columns(topk, TOPK_SCHEMA, TOPK)
    if topk.empty:
        raise PublishError(f"{TOPK}: no recommendations to publish")
    nulls = [column for column in layout.columns(TOPK_SCHEMA) if topk[column].isna().any()]
    if nulls:
        raise PublishError(f"{TOPK}: null values in column(s) {nulls}; re-run recommend")
    finite = np.isfinite(topk[SCORE].to_numpy(dtype=np.float64))
    if not finite.all():
        bad = topk.loc[~finite, [USER_IDX, RANK, SCORE]]
        raise PublishError(f"{TOPK}: {len(bad)} non-finite scores, e.g. {_sample(bad)}; "
                           "the model produced NaN/inf; check training before publishing")
    duplicated = topk[topk.duplicated([USER_IDX, RANK], keep=False)]
    if not duplicated.empty:
        raise PublishError(f"{TOPK}: {len(duplicated)} rows share a (user_idx, rank), e.g. "
                           f"{_sample(duplicated[[USER_IDX, RANK, ITEM_IDX]])}; each user's "
                           "list must rank each position once; re-run recommend")
    ranks = topk.groupby(USER_IDX)[RANK].agg(["min", "max", "size"])
    gaps = ranks[(ranks["min"] != 1) | (ranks["max"] != ranks["size"])]
    if not gaps.empty:
        raise PublishError(f"{TOPK}: ranks must run 1..K for each user; {len(gaps)} user(s) "
                           f"do not, e.g. user_idx {_sample(gaps.index)} (min rank "
                           f"{gaps['min'].iloc[0]}, max {gaps['max'].iloc[0]}, "
                           f"{gaps['size'].iloc[0]} rows); re-run recommend")
    repeated = topk[topk.duplicated([USER_IDX, ITEM_IDX], keep=False)]
    if not repeated.empty:
        raise PublishError(f"{TOPK}: an item appears twice in one user's list, e.g. "
                           f"{_sample(repeated[[USER_IDX, ITEM_IDX, RANK]])}; re-run recommend")


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
        MODEL_NAME: model_name,
        MODEL_VERSION: model_version,
        RUN_ID: run_id,
        GENERATED_AT: pd.Timestamp(_utc_naive(generated_at)),
    })
    return rows[list(TABLE_COLUMNS)]


def _records(rows: pd.DataFrame) -> list[dict[str, Any]]:
    """Plain Python values for the driver (no numpy scalars, no pandas Timestamps)."""
    values = {column: rows[column].astype(object).where(rows[column].notna(), None).tolist()
              for column in TABLE_COLUMNS}
    values[GENERATED_AT] = [v.to_pydatetime() if isinstance(v, pd.Timestamp) else v
                            for v in values[GENERATED_AT]]
    return [dict(zip(TABLE_COLUMNS, row, strict=True))
            for row in zip(*(values[c] for c in TABLE_COLUMNS), strict=True)]


# --- the swap -----------------------------------------------------------------------


def publish_recommendations(engine: Engine, table: str, rows: pd.DataFrame, *,
                            dataset: str) -> int:
    """Replace `dataset`'s rows of `table` by `rows` in one transaction; the new row count.

    Delete and insert share the transaction, so readers see the old complete set until the
    commit and the new complete set after it. On any failure it rolls back and the old set
    stays. The count is read back inside the transaction (drivers' rowcounts for bulk
    inserts are unreliable: psycopg 3 reports -1).
    """
    missing = [column for column in TABLE_COLUMNS if column not in rows.columns]
    if missing:
        raise PublishError(f"rows for {table}: missing column(s) {missing}; use build_rows")
    if rows.empty:
        raise PublishError(f"no rows for dataset {dataset!r}: refusing to replace its "
                           f"recommendations in {table} with nothing")
    others = sorted(set(rows[DATASET].astype(str)) - {dataset})
    if others:
        raise PublishError(f"rows for dataset {dataset!r} also hold dataset(s) {others}; "
                           "publish each dataset on its own")
    records = _records(rows)
    where = f"{table} at {masked_url(engine.url)}"
    try:
        target = ensure_table(engine, table)
        with engine.begin() as conn:
            if conn.dialect.name == "postgresql":
                # Two publishers of one dataset would otherwise both delete the old set and
                # then collide on the primary key; the lock is released at commit/rollback.
                conn.execute(sa.select(sa.func.pg_advisory_xact_lock(
                    sa.func.hashtext(f"{table}/{dataset}"))))
            # The DELETE opens the write transaction on SQLite too (pysqlite begins before
            # the first DML), so the count below is read inside it.
            replaced = conn.execute(
                sa.delete(target).where(target.c[DATASET] == dataset)).rowcount
            for start in range(0, len(records), INSERT_CHUNK):
                conn.execute(sa.insert(target), records[start:start + INSERT_CHUNK])
            count = conn.execute(sa.select(sa.func.count()).select_from(target)
                                 .where(target.c[DATASET] == dataset)).scalar_one()
            if count != len(records):
                raise PublishError(f"{where}: read back {count} rows for {dataset!r} after "
                                   f"inserting {len(records)}; rolled back")
    except sa.exc.SQLAlchemyError as exc:
        cause = exc.orig if isinstance(exc, sa.exc.DBAPIError) else exc
        raise PublishError(f"publishing {len(records)} rows for {dataset!r} to {where} failed "
                           "and was rolled back, the previous set is unchanged: "
                           f"{type(cause).__name__}: {cause}") from exc
    logger.info("published %d rows for %s to %s (replaced %s)", count, dataset, where, replaced)
    return int(count)


# --- CLI ----------------------------------------------------------------------------


def read_lake_frame(path: Path, schema: Schema) -> pd.DataFrame:
    """A lake dataset folder as pandas; a missing or empty folder is a PublishError."""
    try:
        table = layout.read_lake_table(path, schema)
    except layout.LakeReadError as exc:
        raise PublishError(str(exc)) from exc
    if table.num_rows == 0:
        raise PublishError(f"{path} is empty: nothing to publish; re-run the stage that "
                           f"writes {path.name}/")
    return table.to_pandas()


def db_url(explicit: str | None = None) -> str:
    """--db-url if given, else $NCF_DB_URL, else the local SQLite file."""
    return explicit or os.environ.get(layout.ENV_DB_URL, layout.DEFAULT_DB_URL)


def _prepare_sqlite_folder(url: str) -> None:
    parsed = sa.make_url(url)
    database = parsed.database
    if parsed.get_backend_name() == "sqlite" and database and database != ":memory:" \
            and not database.startswith("file:"):
        Path(database).parent.mkdir(parents=True, exist_ok=True)


def _from_manifest(manifest: dict[str, Any], key: str, explicit: str | None) -> str:
    """The CLI's value, else what recommend (the model behind topk/) or evaluate recorded."""
    recorded = [manifest.get(stage, {}).get(key) for stage in ("recommend", "evaluate")]
    value = next((v for v in (explicit, *recorded) if v not in (None, "")), None)
    if value is None:
        raise PublishError(f"no {key}: pass --{key.replace('_', '-')}, or run evaluate and "
                           "recommend for this date (they record the model in the manifest)")
    return str(value)


def _generated_at(manifest: dict[str, Any]) -> dt.datetime:
    # When recommend wrote topk/, so a re-publish of the same lake folder writes the same rows.
    written = manifest.get("recommend", {}).get("written_at")
    if written:
        return _utc_naive(dt.datetime.fromisoformat(written))
    return _utc_naive(dt.datetime.now(dt.UTC))


def main(argv: Sequence[str] | None = None) -> int:
    parser = cli.stage_parser(__doc__)
    parser.prog = "python -m jobs.publish"
    parser.add_argument("--db-url", default=None,
                        help=f"SQLAlchemy URL; default ${layout.ENV_DB_URL} or "
                             f"{layout.DEFAULT_DB_URL}")
    parser.add_argument("--model-version", default=None,
                        help="registered model version; default: the manifest's recommend entry")
    parser.add_argument("--run-id", default=None,
                        help="MLflow run id; default: the manifest's recommend entry")
    args = parser.parse_args(argv)
    try:
        cfg = load_data_config(args.config)
    except ConfigError as exc:
        logger.error("%s", exc)
        return 2
    paths = LakePaths(cli.lake_root(args.lake_root), cfg.dataset, args.logical_date)
    url = db_url(args.db_url)
    try:
        manifest = layout.read_manifest(paths)
        model_version = _from_manifest(manifest, MODEL_VERSION, args.model_version)
        run_id = _from_manifest(manifest, RUN_ID, args.run_id)
        topk = read_lake_frame(paths.path(TOPK), TOPK_SCHEMA)
        users = read_lake_frame(paths.path(USERS), USERS_SCHEMA)
        items = read_lake_frame(paths.path(ITEMS), ITEMS_SCHEMA)
        rows = build_rows(topk, users, items, dataset=cfg.dataset, model_name=cfg.model_name,
                          model_version=model_version, run_id=run_id,
                          generated_at=_generated_at(manifest))
        _prepare_sqlite_folder(url)
        engine = create_db_engine(url)
        try:
            count = publish_recommendations(engine, cfg.publish.table, rows,
                                            dataset=cfg.dataset)
        finally:
            engine.dispose()
    except PublishError as exc:
        logger.error("%s", exc)
        return 1
    layout.update_manifest(paths, "publish", {
        "table": cfg.publish.table,
        "db_url": masked_url(url),
        "rows": count,
        "users": int(rows[USER_ID].nunique()),
        "k": int(rows[RANK].max()),
        "model_name": cfg.model_name,
        "model_version": model_version,
        "run_id": run_id,
        "generated_at": rows[GENERATED_AT].iloc[0].isoformat(),
    })
    return 0


if __name__ == "__main__":
    cli.configure_logging()
    raise SystemExit(main())
