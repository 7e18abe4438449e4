"""The SQL tables downstream teams read, and the only code that writes them.

Three tables per deployment (names from the `publish` config section):

    recommendations         dataset, user_id, rank, item_id, score, source, model_name,
                            model_version, run_id, generated_at
                            primary key (dataset, user_id, rank): the per-user lookup index
    recommendation_runs     one row per published (dataset, logical_date): MLflow run id,
                            model version, counts, status, started/finished/served times
    recommendation_history  the rows of the last `keep_runs` runs, keyed by logical date,
                            so a rollback is one transaction away

A publish is two transactions. **Load**: the run's rows go into the history table (COPY on
PostgreSQL, batched inserts elsewhere) and its run row is marked `loaded`; readers of
`recommendations` see nothing of it. **Swap**: delete the dataset's rows of
`recommendations`, insert the run's rows from history, mark it `serving` and the previous
one `retired`, commit. Readers see the previous complete set until the commit and the new
complete set after it (PostgreSQL MVCC; SQLite in WAL mode). A failure in either step rolls
back and leaves the serving set as it was; running the publish again completes it.
`rollback` is the swap with an older run. Older runs beyond `keep_runs` lose their history
rows (their run row stays, status `expired`).

Run statuses: loaded -> serving -> retired -> expired.
"""

from __future__ import annotations

import csv
import dataclasses
import datetime as dt
import io
import logging
from collections.abc import Iterator
from typing import Any

import pandas as pd
import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine

from jobs.lake.layout import ITEM_ID, RANK, SCORE, SOURCE, USER_ID
from jobs.serving.engine import masked_url

logger = logging.getLogger(__name__)

# Columns of the published tables that are not lake columns (the table contract lives here).
DATASET = "dataset"
MODEL_NAME = "model_name"
MODEL_VERSION = "model_version"
RUN_ID = "run_id"
GENERATED_AT = "generated_at"
LOGICAL_DATE = "logical_date"
TABLE_COLUMNS = (DATASET, USER_ID, RANK, ITEM_ID, SCORE, SOURCE, MODEL_NAME, MODEL_VERSION,
                 RUN_ID, GENERATED_AT)

LOADED, SERVING, RETIRED, EXPIRED = "loaded", "serving", "retired", "expired"
INSERT_CHUNK = 10_000  # rows per executemany call: bounds driver memory, not atomicity
COPY_CHUNK = 100_000  # rows per CSV block streamed to COPY


class TableError(Exception):
    """The tables cannot be written or read as asked; the message names table and database."""


@dataclasses.dataclass(frozen=True)
class Tables:
    """The three tables of one deployment, declared on one MetaData."""

    recommendations: sa.Table
    runs: sa.Table
    history: sa.Table

    @classmethod
    def declare(cls, table: str, runs_table: str, history_table: str) -> Tables:
        metadata = sa.MetaData()

        def row_columns() -> list[sa.Column[Any]]:
            return [
                sa.Column(USER_ID, sa.Text, primary_key=True),
                sa.Column(RANK, sa.Integer, primary_key=True, autoincrement=False),  # 1 = best
                sa.Column(ITEM_ID, sa.Text, nullable=False),
                sa.Column(SCORE, sa.Float, nullable=False),
                sa.Column(SOURCE, sa.Text, nullable=False),
                sa.Column(MODEL_NAME, sa.Text, nullable=False),
                sa.Column(MODEL_VERSION, sa.Text, nullable=False),
                sa.Column(RUN_ID, sa.Text, nullable=False),
                # UTC, stored without a time zone.
                sa.Column(GENERATED_AT, sa.DateTime(timezone=False), nullable=False),
            ]

        recommendations = sa.Table(table, metadata,
                                   sa.Column(DATASET, sa.Text, primary_key=True),
                                   *row_columns())
        history = sa.Table(history_table, metadata,
                           sa.Column(DATASET, sa.Text, primary_key=True),
                           sa.Column(LOGICAL_DATE, sa.Text, primary_key=True),
                           *row_columns())
        runs = sa.Table(
            runs_table, metadata,
            sa.Column(DATASET, sa.Text, primary_key=True),
            sa.Column(LOGICAL_DATE, sa.Text, primary_key=True),
            sa.Column(RUN_ID, sa.Text, nullable=False),
            sa.Column(MODEL_NAME, sa.Text, nullable=False),
            sa.Column(MODEL_VERSION, sa.Text, nullable=False),
            sa.Column("rows", sa.Integer, nullable=False),
            sa.Column("users", sa.Integer, nullable=False),
            sa.Column("popularity_users", sa.Integer, nullable=False),
            sa.Column("status", sa.Text, nullable=False),
            sa.Column("lake_path", sa.Text, nullable=True),
            sa.Column("started_at", sa.DateTime(timezone=False), nullable=False),
            sa.Column("finished_at", sa.DateTime(timezone=False), nullable=True),
            sa.Column("served_at", sa.DateTime(timezone=False), nullable=True),
        )
        return cls(recommendations, runs, history)

    def all(self) -> tuple[sa.Table, sa.Table, sa.Table]:
        return (self.recommendations, self.runs, self.history)


# --- engines and URLs ---------------------------------------------------------------


# --- schema ---------------------------------------------------------------------------


def ensure_tables(engine: Engine, tables: Tables) -> None:
    """Create absent tables; refuse an existing one that lacks a column of the contract."""
    try:
        tables.recommendations.metadata.create_all(engine, checkfirst=True)
    except sa.exc.DBAPIError:
        inspector = sa.inspect(engine)
        if not all(inspector.has_table(t.name) for t in tables.all()):
            raise  # else a concurrent first publish created them first
    inspector = sa.inspect(engine)
    for table in tables.all():
        existing = {column["name"] for column in inspector.get_columns(table.name)}
        missing = [column.name for column in table.columns if column.name not in existing]
        if missing:
            raise TableError(f"table {table.name} at {masked_url(engine.url)} exists without "
                             f"column(s) {missing}; migrate it (ALTER TABLE ... ADD COLUMN) or "
                             "publish to other tables (publish.table / runs_table / "
                             "history_table in the config)")


def grant_read_only(engine: Engine, tables: Tables, role: str) -> None:
    """Let `role` SELECT the three tables and nothing else (PostgreSQL; a no-op elsewhere).

    The role itself is created by the database administrator (docker/postgres init script),
    with LOGIN and a password of its own; it must own nothing and have no other grants.
    """
    if engine.dialect.name != "postgresql":
        logger.info("database %s has no roles: reader role %r not applied",
                    engine.dialect.name, role)
        return
    quote = engine.dialect.identifier_preparer.quote
    names = ", ".join(quote(t.name) for t in tables.all())
    with engine.begin() as conn:
        exists = conn.execute(sa.text("SELECT 1 FROM pg_roles WHERE rolname = :r"),
                              {"r": role}).first()
        if exists is None:
            raise TableError(f"reader role {role!r} does not exist at {masked_url(engine.url)}; "
                             f"create it (CREATE ROLE {role} LOGIN PASSWORD '...') or set "
                             "publish.reader_role to null")
        conn.execute(sa.text(f"REVOKE ALL ON {names} FROM {quote(role)}"))
        conn.execute(sa.text(f"GRANT SELECT ON {names} TO {quote(role)}"))


# --- load -----------------------------------------------------------------------------


def _lock(conn: Connection, tables: Tables, dataset: str) -> None:
    """Serialise writers of one dataset (PostgreSQL; SQLite has one writer at a time)."""
    if conn.dialect.name == "postgresql":
        conn.execute(sa.select(sa.func.pg_advisory_xact_lock(
            sa.func.hashtext(f"{tables.recommendations.name}/{dataset}"))))


def _csv_blocks(rows: pd.DataFrame, columns: list[str]) -> Iterator[str]:
    for start in range(0, len(rows), COPY_CHUNK):
        buffer = io.StringIO()
        rows.iloc[start:start + COPY_CHUNK][columns].to_csv(
            buffer, header=False, index=False, quoting=csv.QUOTE_MINIMAL,
            date_format="%Y-%m-%d %H:%M:%S.%f", float_format="%.9g")
        yield buffer.getvalue()


def _records(rows: pd.DataFrame, columns: list[str]) -> list[dict[str, Any]]:
    """Plain Python values for the driver (no numpy scalars, no pandas Timestamps)."""
    values = {column: rows[column].astype(object).where(rows[column].notna(), None).tolist()
              for column in columns}
    values[GENERATED_AT] = [v.to_pydatetime() if isinstance(v, pd.Timestamp) else v
                            for v in values[GENERATED_AT]]
    return [dict(zip(columns, row, strict=True))
            for row in zip(*(values[c] for c in columns), strict=True)]


def _bulk_insert(conn: Connection, table: sa.Table, rows: pd.DataFrame) -> None:
    columns = [column.name for column in table.columns]
    if conn.dialect.name == "postgresql":
        # COPY streams CSV blocks into the open transaction: the fastest bulk path there is.
        quote = conn.dialect.identifier_preparer.quote
        statement = (f"COPY {quote(table.name)} ({', '.join(quote(c) for c in columns)}) "
                     "FROM STDIN (FORMAT csv)")
        cursor = conn.connection.driver_connection.cursor()  # type: ignore[union-attr]
        try:
            with cursor.copy(statement) as copy:
                for block in _csv_blocks(rows, columns):
                    copy.write(block)
        except conn.dialect.loaded_dbapi.Error as exc:  # raw driver call: wrap it ourselves
            raise sa.exc.DBAPIError(statement, None, exc) from exc
        finally:
            cursor.close()
        return
    records = _records(rows, columns)
    for start in range(0, len(records), INSERT_CHUNK):
        conn.execute(sa.insert(table), records[start:start + INSERT_CHUNK])


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC).replace(tzinfo=None)


def _failed(action: str, engine: Engine, exc: sa.exc.SQLAlchemyError) -> TableError:
    cause = exc.orig if isinstance(exc, sa.exc.DBAPIError) else exc
    return TableError(f"{action} at {masked_url(engine.url)} failed and was rolled back; the "
                      f"serving set is unchanged: {type(cause).__name__}: "
                      f"{str(cause).strip()}")


@dataclasses.dataclass(frozen=True)
class RunInfo:
    """What recommendation_runs records about one publish."""

    dataset: str
    logical_date: str
    run_id: str
    model_name: str
    model_version: str
    lake_path: str | None = None


def load_run(engine: Engine, tables: Tables, info: RunInfo, rows: pd.DataFrame) -> int:
    """Put a run's rows in the history table, replacing any earlier load of the same date.

    `rows` has TABLE_COLUMNS for one dataset. Readers of `recommendations` see nothing of
    this; `swap_in` publishes it. Returns the number of rows loaded.
    """
    missing = [column for column in TABLE_COLUMNS if column not in rows.columns]
    if missing:
        raise TableError(f"rows for {tables.history.name}: missing column(s) {missing}")
    if rows.empty:
        raise TableError(f"no rows for dataset {info.dataset!r}: refusing to publish an empty set")
    datasets = set(rows[DATASET].astype(str))
    if datasets != {info.dataset}:
        raise TableError(f"rows for dataset {info.dataset!r} hold dataset(s) {sorted(datasets)}; "
                         "publish each dataset on its own")
    history, runs = tables.history, tables.runs
    staged = rows.assign(**{LOGICAL_DATE: info.logical_date})
    this_run = (runs.c[DATASET] == info.dataset) & (runs.c[LOGICAL_DATE] == info.logical_date)
    try:
        with engine.begin() as conn:
            _lock(conn, tables, info.dataset)
            conn.execute(sa.delete(history).where(history.c[DATASET] == info.dataset,
                                                  history.c[LOGICAL_DATE] == info.logical_date))
            previous = conn.execute(sa.select(runs.c.status).where(this_run)).scalar_one_or_none()
            conn.execute(sa.delete(runs).where(this_run))
            _bulk_insert(conn, history, staged)
            count = conn.execute(sa.select(sa.func.count()).select_from(history).where(
                history.c[DATASET] == info.dataset,
                history.c[LOGICAL_DATE] == info.logical_date)).scalar_one()
            if count != len(rows):
                raise TableError(f"{history.name}: read back {count} rows after loading "
                                 f"{len(rows)}; rolled back")
            conn.execute(sa.insert(runs).values(
                **{DATASET: info.dataset, LOGICAL_DATE: info.logical_date, RUN_ID: info.run_id,
                   MODEL_NAME: info.model_name, MODEL_VERSION: info.model_version},
                rows=len(rows), users=int(rows[USER_ID].nunique()),
                popularity_users=int(rows.loc[rows[SOURCE] != "model", USER_ID].nunique()),
                # A re-load of the serving date keeps serving the old rows until the swap.
                status=SERVING if previous == SERVING else LOADED,
                lake_path=info.lake_path, started_at=_now()))
    except sa.exc.SQLAlchemyError as exc:
        raise _failed(f"loading {len(rows)} rows of {info.dataset} {info.logical_date} into "
                      f"{history.name}", engine, exc) from exc
    return int(count)


# --- swap, rollback, retention ------------------------------------------------------


def swap_in(engine: Engine, tables: Tables, dataset: str, logical_date: str) -> int:
    """Serve the loaded run of (dataset, logical_date) in one transaction; the row count."""
    recs, runs, history = tables.all()
    this_run = (runs.c[DATASET] == dataset) & (runs.c[LOGICAL_DATE] == logical_date)
    columns = [column.name for column in recs.columns]
    try:
        with engine.begin() as conn:
            _lock(conn, tables, dataset)
            run = conn.execute(sa.select(runs.c.rows, runs.c.status).where(this_run)).first()
            if run is None or run.status == EXPIRED:
                state = "was never loaded" if run is None else "has expired (its rows are gone)"
                raise TableError(f"{runs.name}: run {dataset} {logical_date} {state}; "
                                 f"choose one of {loaded_runs(engine, tables, dataset)}")
            conn.execute(sa.delete(recs).where(recs.c[DATASET] == dataset))
            conn.execute(sa.insert(recs).from_select(
                columns, sa.select(*(history.c[c] for c in columns)).where(
                    history.c[DATASET] == dataset, history.c[LOGICAL_DATE] == logical_date)))
            count = conn.execute(sa.select(sa.func.count()).select_from(recs)
                                 .where(recs.c[DATASET] == dataset)).scalar_one()
            if count != run.rows:
                raise TableError(f"{recs.name}: {count} rows for {dataset} after the swap, "
                                 f"{runs.name} says {run.rows}; rolled back")
            now = _now()
            conn.execute(sa.update(runs).where(runs.c[DATASET] == dataset,
                                               runs.c.status == SERVING, ~this_run)
                         .values(status=RETIRED))
            conn.execute(sa.update(runs).where(this_run).values(
                status=SERVING, served_at=now,
                finished_at=sa.func.coalesce(runs.c.finished_at, now)))
    except sa.exc.SQLAlchemyError as exc:
        raise _failed(f"swapping {dataset} {logical_date} into {recs.name}", engine,
                      exc) from exc
    logger.info("%s now serves %s %s: %d rows", recs.name, dataset, logical_date, count)
    return int(count)


def expire_old_runs(engine: Engine, tables: Tables, dataset: str, keep_runs: int) -> list[str]:
    """Drop the history rows of all but the `keep_runs` latest runs (never the serving one)."""
    runs, history = tables.runs, tables.history
    try:
        with engine.begin() as conn:
            _lock(conn, tables, dataset)
            dates = conn.execute(sa.select(runs.c[LOGICAL_DATE], runs.c.status)
                                 .where(runs.c[DATASET] == dataset, runs.c.status != EXPIRED)
                                 .order_by(runs.c[LOGICAL_DATE].desc())).all()
            old = [d for i, (d, status) in enumerate(dates) if i >= keep_runs and status != SERVING]
            if old:
                conn.execute(sa.delete(history).where(history.c[DATASET] == dataset,
                                                      history.c[LOGICAL_DATE].in_(old)))
                conn.execute(sa.update(runs).where(runs.c[DATASET] == dataset,
                                                   runs.c[LOGICAL_DATE].in_(old))
                             .values(status=EXPIRED))
    except sa.exc.SQLAlchemyError as exc:
        raise _failed(f"expiring old runs of {dataset} in {history.name}", engine, exc) from exc
    return old


def loaded_runs(engine: Engine, tables: Tables, dataset: str) -> list[dict[str, Any]]:
    """The runs that still have their rows, newest first (what a rollback can restore)."""
    runs = tables.runs
    with engine.connect() as conn:
        rows = conn.execute(sa.select(runs).where(runs.c[DATASET] == dataset,
                                                  runs.c.status != EXPIRED)
                            .order_by(runs.c[LOGICAL_DATE].desc())).mappings().all()
    return [dict(row) for row in rows]


def rollback(engine: Engine, tables: Tables, dataset: str, to_date: str | None = None) -> str:
    """Serve an earlier run again: `to_date`, else the latest run older than the serving one.

    Returns the logical date now served.
    """
    ensure_tables(engine, tables)
    runs = loaded_runs(engine, tables, dataset)
    serving = next((r[LOGICAL_DATE] for r in runs if r["status"] == SERVING), None)
    if to_date is None:
        older = [r[LOGICAL_DATE] for r in runs
                 if r["status"] != SERVING and (serving is None or r[LOGICAL_DATE] < serving)]
        if not older:
            raise TableError(f"{tables.runs.name}: no run of {dataset} older than the serving "
                             f"one ({serving}) still has its rows; nothing to roll back to")
        to_date = older[0]
    swap_in(engine, tables, dataset, to_date)
    logger.info("rolled %s back from %s to %s", dataset, serving, to_date)
    return to_date
