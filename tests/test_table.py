"""jobs.serving.table: load, atomic swap, retention, rollback and the read-only role, per backend.

Every test runs on SQLite in tmp_path and on PostgreSQL at $NCF_TEST_PG_URL (`.ci/run`
starts a throw-away cluster; e.g. postgresql+psycopg://postgres@127.0.0.1:55432/postgres).
Faults are real: a database trigger fails the load or the swap half-way.
"""

from __future__ import annotations

import os
import socket
import threading
import time
import uuid
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path

import pandas as pd
import pytest
import sqlalchemy as sa

from jobs.lake import layout
from jobs.lake.layout import ITEM_ID, RANK, SCORE, SOURCE, USER_ID
from jobs.serving.engine import create_db_engine, masked_url, sqlalchemy_url
from jobs.serving.table import (
    DATASET,
    EXPIRED,
    GENERATED_AT,
    LOADED,
    LOGICAL_DATE,
    MODEL_VERSION,
    RETIRED,
    SERVING,
    TABLE_COLUMNS,
    RunInfo,
    TableError,
    Tables,
    ensure_tables,
    expire_old_runs,
    grant_read_only,
    load_run,
    loaded_runs,
    rollback,
    swap_in,
)

GENERATED = datetime(2026, 11, 23, 3, 0, 0)
K = 5
PG_URL = os.environ.get("NCF_TEST_PG_URL")
READER_ROLE = "reco_reader"


def make_rows(dataset: str, n_users: int, version: str = "1", *, k: int = K,
              popularity_users: int = 0) -> pd.DataFrame:
    """User u's list: items (u + r) mod 20; the last `popularity_users` users are cold."""
    records = [{
        DATASET: dataset, USER_ID: f"user{u}", RANK: r, ITEM_ID: f"item{(u + r) % 20}",
        SCORE: 1.0 - r / 10,
        SOURCE: layout.SOURCE_POPULARITY if u >= n_users - popularity_users
        else layout.SOURCE_MODEL,
        "model_name": f"ncf-{dataset}", MODEL_VERSION: version, "run_id": f"run-{version}",
        GENERATED_AT: GENERATED} for u in range(n_users) for r in range(1, k + 1)]
    return pd.DataFrame(records, columns=list(TABLE_COLUMNS))


def info(dataset: str, date: str, version: str = "1") -> RunInfo:
    return RunInfo(dataset=dataset, logical_date=date, run_id=f"run-{version}",
                   model_name=f"ncf-{dataset}", model_version=version, lake_path=f"/lake/{date}")


def publish(engine: sa.Engine, tables: Tables, rows: pd.DataFrame, date: str) -> int:
    dataset, version = rows[DATASET].iloc[0], rows[MODEL_VERSION].iloc[0]
    ensure_tables(engine, tables)
    load_run(engine, tables, info(dataset, date, version), rows)
    return swap_in(engine, tables, dataset, date)


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'recommendations.db'}"
    if not PG_URL:
        pytest.skip("PostgreSQL test: set NCF_TEST_PG_URL, e.g. "
                    "postgresql+psycopg://postgres@127.0.0.1:55432/postgres (.ci/run does)")
    return PG_URL


@pytest.fixture()
def engine(db_url: str) -> Iterator[sa.Engine]:
    engine = create_db_engine(db_url)
    yield engine
    engine.dispose()


@pytest.fixture()
def tables(engine: sa.Engine) -> Iterator[Tables]:
    """Tables of their own per test, so PostgreSQL tests never see each other's rows."""
    prefix = f"t{uuid.uuid4().hex[:8]}"
    declared = Tables.declare(f"{prefix}_recs", f"{prefix}_runs", f"{prefix}_history")
    yield declared
    with engine.begin() as conn:
        for table in declared.all():
            conn.execute(sa.text(f"DROP TABLE IF EXISTS {table.name}"))


def served(engine: sa.Engine, tables: Tables, dataset: str) -> pd.DataFrame:
    recs = tables.recommendations
    query = (sa.select(recs).where(recs.c[DATASET] == dataset)
             .order_by(recs.c[USER_ID], recs.c[RANK]))
    with engine.connect() as conn:
        result = conn.execute(query)
        return pd.DataFrame(result.all(), columns=list(result.keys()))


def statuses(engine: sa.Engine, tables: Tables, dataset: str) -> dict[str, str]:
    runs = tables.runs
    with engine.connect() as conn:
        rows = conn.execute(sa.select(runs.c[LOGICAL_DATE], runs.c.status)
                            .where(runs.c[DATASET] == dataset)).all()
    return dict(rows)  # type: ignore[arg-type]


def count_rows(engine: sa.Engine, name: str, dataset: str) -> int:
    with engine.connect() as conn:
        return int(conn.execute(sa.text(f"SELECT count(*) FROM {name} WHERE dataset = :d"),
                                {"d": dataset}).scalar_one())


def test_urls() -> None:
    assert masked_url("postgresql+psycopg://ncf:s3cret@db:5432/recs") == \
        "postgresql+psycopg://ncf:***@db:5432/recs"
    assert sqlalchemy_url("postgres://u:p%40w@h:5432/db") == "postgresql+psycopg://u:p%40w@h:5432/db"
    assert sqlalchemy_url("postgresql://h/db") == "postgresql+psycopg://h/db"
    assert sqlalchemy_url("sqlite:////tmp/r.db") == "sqlite:////tmp/r.db"


def test_first_publish_creates_the_tables(engine: sa.Engine, tables: Tables) -> None:
    assert publish(engine, tables, make_rows("ml-100k", 4, popularity_users=1),
                   "2026-11-23") == 20
    stored = served(engine, tables, "ml-100k")
    assert list(stored.columns) == list(TABLE_COLUMNS)
    assert stored.groupby(USER_ID)[RANK].apply(list).tolist() == [[1, 2, 3, 4, 5]] * 4
    assert stored.loc[0, [USER_ID, RANK, ITEM_ID, SOURCE]].tolist() == ["user0", 1, "item1",
                                                                        "model"]
    assert stored.loc[0, SCORE] == pytest.approx(0.9)
    assert stored.loc[0, GENERATED_AT] == GENERATED
    assert set(stored.loc[stored[USER_ID] == "user3", SOURCE]) == {"popularity"}
    inspector = sa.inspect(engine)
    assert inspector.get_pk_constraint(tables.recommendations.name)["constrained_columns"] == \
        [DATASET, USER_ID, RANK]  # the per-user lookup index
    (run,) = loaded_runs(engine, tables, "ml-100k")
    assert {key: run[key] for key in ("logical_date", "run_id", "model_version", "rows",
                                      "users", "popularity_users", "status", "lake_path")} == {
        "logical_date": "2026-11-23", "run_id": "run-1", "model_version": "1", "rows": 20,
        "users": 4, "popularity_users": 1, "status": SERVING, "lake_path": "/lake/2026-11-23"}
    assert run["started_at"] <= run["finished_at"] == run["served_at"]
    if engine.dialect.name == "sqlite":
        with engine.connect() as conn:
            assert conn.exec_driver_sql("PRAGMA journal_mode").scalar_one() == "wal"


def test_ensure_tables_is_idempotent_and_refuses_a_foreign_table(engine: sa.Engine,
                                                                 tables: Tables) -> None:
    ensure_tables(engine, tables)
    ensure_tables(engine, tables)
    name = tables.recommendations.name
    old = Tables.declare(f"{name}_old", f"{name}_oldruns", f"{name}_oldhist")
    with engine.begin() as conn:
        conn.execute(sa.text(f"CREATE TABLE {name}_old (dataset text, user_id text)"))
    try:
        with pytest.raises(TableError, match=rf"{name}_old .* exists without column\(s\) "
                                             r"\['rank'"):
            ensure_tables(engine, old)
    finally:
        with engine.begin() as conn:
            for table in old.all():
                conn.execute(sa.text(f"DROP TABLE IF EXISTS {table.name}"))


def test_each_run_replaces_the_set_and_retires_the_previous(engine: sa.Engine,
                                                            tables: Tables) -> None:
    publish(engine, tables, make_rows("ml-100k", 4, "1"), "2026-11-21")
    assert publish(engine, tables, make_rows("ml-100k", 3, "2"), "2026-11-22") == 15
    first = served(engine, tables, "ml-100k")
    assert set(first[MODEL_VERSION]) == {"2"} and first[USER_ID].nunique() == 3
    assert statuses(engine, tables, "ml-100k") == {"2026-11-21": RETIRED, "2026-11-22": SERVING}
    # A re-run of the same logical date gives the same rows and keeps one run row.
    publish(engine, tables, make_rows("ml-100k", 3, "2"), "2026-11-22")
    pd.testing.assert_frame_equal(served(engine, tables, "ml-100k"), first)
    assert statuses(engine, tables, "ml-100k") == {"2026-11-21": RETIRED, "2026-11-22": SERVING}


def test_other_datasets_are_untouched(engine: sa.Engine, tables: Tables) -> None:
    publish(engine, tables, make_rows("lastfm", 2), "2026-11-20")
    before = served(engine, tables, "lastfm")
    publish(engine, tables, make_rows("ml-100k", 4), "2026-11-21")
    publish(engine, tables, make_rows("ml-100k", 3, "2"), "2026-11-22")
    rollback(engine, tables, "ml-100k")
    pd.testing.assert_frame_equal(served(engine, tables, "lastfm"), before)
    assert count_rows(engine, tables.recommendations.name, "ml-100k") == 20
    with pytest.raises(TableError, match=r"hold dataset\(s\) \['lastfm', 'ml-100k'\]"):
        load_run(engine, tables, info("ml-100k", "2026-11-23"),
                 pd.concat([make_rows("ml-100k", 1), make_rows("lastfm", 1)]))
    with pytest.raises(TableError, match="refusing to publish an empty set"):
        load_run(engine, tables, info("ml-100k", "2026-11-23"), make_rows("ml-100k", 0))


def _fail_inserts_of(engine: sa.Engine, table: str, user_id: str) -> None:
    """A trigger that makes the database itself fail on one row, as a full disk would."""
    with engine.begin() as conn:
        if engine.dialect.name == "sqlite":
            conn.execute(sa.text(
                f"CREATE TRIGGER fail_{table} BEFORE INSERT ON {table} "
                f"WHEN NEW.user_id = '{user_id}' BEGIN SELECT RAISE(ABORT, 'injected fault'); END"))
        else:
            conn.execute(sa.text(
                f"CREATE FUNCTION fail_{table}() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN "
                f"IF NEW.user_id = '{user_id}' THEN RAISE EXCEPTION 'injected fault'; END IF; "
                "RETURN NEW; END $$"))
            conn.execute(sa.text(f"CREATE TRIGGER fail_{table} BEFORE INSERT ON {table} "
                                 f"FOR EACH ROW EXECUTE FUNCTION fail_{table}()"))


def _heal(engine: sa.Engine, table: str) -> None:
    with engine.begin() as conn:
        if engine.dialect.name == "sqlite":
            conn.execute(sa.text(f"DROP TRIGGER fail_{table}"))
        else:
            conn.execute(sa.text(f"DROP TRIGGER fail_{table} ON {table}"))
            conn.execute(sa.text(f"DROP FUNCTION fail_{table}()"))


@pytest.mark.parametrize("stage", ["load", "swap"])
def test_a_write_failing_midway_leaves_the_serving_set_and_a_retry_completes(
        engine: sa.Engine, tables: Tables, stage: str) -> None:
    publish(engine, tables, make_rows("ml-100k", 3, "1"), "2026-11-22")
    before = served(engine, tables, "ml-100k")
    target = tables.history if stage == "load" else tables.recommendations
    _fail_inserts_of(engine, target.name, "user150")  # the middle of 300 users
    new = make_rows("ml-100k", 300, "2")
    with pytest.raises(TableError, match="failed and was rolled back; the serving set is "
                                         "unchanged: .*injected fault"):
        publish(engine, tables, new, "2026-11-23")
    pd.testing.assert_frame_equal(served(engine, tables, "ml-100k"), before)
    expected = {"2026-11-22": SERVING} | ({"2026-11-23": LOADED} if stage == "swap" else {})
    assert statuses(engine, tables, "ml-100k") == expected
    if stage == "load":
        assert count_rows(engine, tables.history.name, "ml-100k") == 15  # nothing half-loaded
    _heal(engine, target.name)
    assert publish(engine, tables, new, "2026-11-23") == 1500  # the Airflow retry
    assert set(served(engine, tables, "ml-100k")[MODEL_VERSION]) == {"2"}


def test_database_down_fails_fast_with_the_url(tmp_path: Path) -> None:
    with socket.socket() as sock:  # a port nothing listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    engine = create_db_engine(f"postgresql+psycopg://ncf:pw@127.0.0.1:{port}/recs")
    tables = Tables.declare("r", "r_runs", "r_history")
    started = time.perf_counter()
    with pytest.raises(sa.exc.OperationalError, match=f"127.0.0.1.*{port}"):
        ensure_tables(engine, tables)
    assert time.perf_counter() - started < 30


def test_reader_sees_only_complete_sets(engine: sa.Engine, tables: Tables) -> None:
    small, large = make_rows("ml-100k", 150, "1", k=10), make_rows("ml-100k", 200, "2", k=10)
    publish(engine, tables, small, "2026-11-01")
    seen: list[int] = []
    waits: list[float] = []
    errors: list[BaseException] = []
    done = threading.Event()

    def read_in_a_loop() -> None:
        reader = create_db_engine(engine.url)
        try:
            while not done.is_set():
                started = time.perf_counter()
                seen.append(count_rows(reader, tables.recommendations.name, "ml-100k"))
                waits.append(time.perf_counter() - started)
        except BaseException as exc:  # surfaced in the main thread below
            errors.append(exc)
        finally:
            reader.dispose()

    thread = threading.Thread(target=read_in_a_loop)
    thread.start()
    try:
        for n in range(12):
            publish(engine, tables, large if n % 2 == 0 else small, f"2026-11-{2 + n:02d}")
    finally:
        done.set()
        thread.join(timeout=60)
    assert not errors
    assert len(seen) > 10
    assert set(seen) <= {1500, 2000}, sorted(set(seen))
    assert max(waits) < 10  # readers are never locked out for the length of a publish


def test_concurrent_publishers_of_one_dataset_both_succeed(engine: sa.Engine,
                                                           tables: Tables) -> None:
    ensure_tables(engine, tables)
    errors: list[BaseException] = []

    def publish_version(version: str) -> None:
        try:
            publish(engine, tables, make_rows("ml-100k", 50, version), f"2026-11-1{version}")
        except BaseException as exc:  # surfaced in the main thread below
            errors.append(exc)

    threads = [threading.Thread(target=publish_version, args=(str(v),)) for v in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert not errors
    stored = served(engine, tables, "ml-100k")
    assert len(stored) == 250 and stored[MODEL_VERSION].nunique() == 1  # one complete set
    assert list(statuses(engine, tables, "ml-100k").values()).count(SERVING) == 1


def test_rollback_restores_an_earlier_run_and_old_runs_expire(engine: sa.Engine,
                                                              tables: Tables) -> None:
    dates = ["2026-11-20", "2026-11-21", "2026-11-22", "2026-11-23"]
    sets = {}
    for n, date in enumerate(dates):
        publish(engine, tables, make_rows("ml-100k", 2 + n, str(n)), date)
        sets[date] = served(engine, tables, "ml-100k")
    assert rollback(engine, tables, "ml-100k") == "2026-11-22"  # the previous run
    pd.testing.assert_frame_equal(served(engine, tables, "ml-100k"), sets["2026-11-22"])
    assert rollback(engine, tables, "ml-100k") == "2026-11-21"  # and the one before
    assert rollback(engine, tables, "ml-100k", "2026-11-23") == "2026-11-23"  # forward again
    pd.testing.assert_frame_equal(served(engine, tables, "ml-100k"), sets["2026-11-23"])

    rollback(engine, tables, "ml-100k", "2026-11-20")
    # keep 2: the two latest keep their rows, and so does the serving one (the oldest here).
    assert expire_old_runs(engine, tables, "ml-100k", keep_runs=2) == ["2026-11-21"]
    assert statuses(engine, tables, "ml-100k") == {
        "2026-11-20": SERVING, "2026-11-21": EXPIRED, "2026-11-22": RETIRED,
        "2026-11-23": RETIRED}
    with engine.connect() as conn:
        history = tables.history
        kept = conn.execute(sa.select(history.c[LOGICAL_DATE]).distinct()).scalars().all()
    assert sorted(kept) == ["2026-11-20", "2026-11-22", "2026-11-23"]
    with pytest.raises(TableError, match="2026-11-21 has expired"):
        rollback(engine, tables, "ml-100k", "2026-11-21")
    with pytest.raises(TableError, match="no run of ml-100k older than the serving one"):
        rollback(engine, tables, "ml-100k")
    pd.testing.assert_frame_equal(served(engine, tables, "ml-100k"), sets["2026-11-20"])


@pytest.mark.postgres
def test_reader_role_can_select_and_nothing_else(tables: Tables) -> None:
    if not PG_URL:
        pytest.skip("PostgreSQL test: set NCF_TEST_PG_URL (.ci/run does)")
    admin = create_db_engine(PG_URL)
    with admin.begin() as conn:
        if conn.execute(sa.text("SELECT 1 FROM pg_roles WHERE rolname = :r"),
                        {"r": READER_ROLE}).first() is None:
            conn.execute(sa.text(f"CREATE ROLE {READER_ROLE} LOGIN"))
    try:
        publish(admin, tables, make_rows("ml-100k", 3), "2026-11-23")
        grant_read_only(admin, tables, READER_ROLE)
        reader = create_db_engine(sa.make_url(PG_URL).set(username=READER_ROLE))
        recs = tables.recommendations.name
        with reader.connect() as conn:
            assert conn.execute(sa.text(f"SELECT count(*) FROM {recs}")).scalar_one() == 15
            for name in (tables.runs.name, tables.history.name):
                conn.execute(sa.text(f"SELECT count(*) FROM {name}")).scalar_one()
        refused = {
            "INSERT": f"INSERT INTO {recs} SELECT * FROM {recs}",
            "UPDATE": f"UPDATE {recs} SET score = 0",
            "DELETE": f"DELETE FROM {recs}",
            "TRUNCATE": f"TRUNCATE {recs}",
            "ALTER": f"ALTER TABLE {recs} ADD COLUMN x int",
            "DROP": f"DROP TABLE {recs}",
            "CREATE": f"CREATE TABLE {recs}_mine (x int)",
        }
        for statement in refused.values():
            with reader.connect() as conn, pytest.raises(sa.exc.ProgrammingError,
                                                         match="permission denied|must be owner"):
                conn.execute(sa.text(statement))
        reader.dispose()
        assert count_rows(admin, recs, "ml-100k") == 15
        with pytest.raises(TableError, match="reader role 'nobody_here' does not exist"):
            grant_read_only(admin, tables, "nobody_here")
    finally:
        admin.dispose()


def test_sqlite_has_no_roles_and_grant_is_a_no_op(tmp_path: Path) -> None:
    engine = create_db_engine(f"sqlite:///{tmp_path / 'r.db'}")
    tables = Tables.declare("r", "r_runs", "r_history")
    ensure_tables(engine, tables)
    grant_read_only(engine, tables, READER_ROLE)
    assert set(sa.inspect(engine).get_table_names()) == {"r", "r_runs", "r_history"}
    engine.dispose()
