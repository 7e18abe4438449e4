"""jobs.publish: the atomic swap of one dataset's rows, on SQLite and (if given) PostgreSQL.

The table tests run once per backend: SQLite in tmp_path, and PostgreSQL at $NCF_TEST_PG_URL
(e.g. postgresql+psycopg://postgres@127.0.0.1:55432/postgres), skipped when it is unset.
"""

from __future__ import annotations

import logging
import os
import threading
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import sqlalchemy as sa

from jobs import layout
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
from jobs.publish import (
    DATASET,
    GENERATED_AT,
    MODEL_VERSION,
    TABLE_COLUMNS,
    PublishError,
    build_rows,
    create_db_engine,
    ensure_table,
    main,
    masked_url,
    publish_recommendations,
    recommendations_table,
)

REPO = Path(__file__).resolve().parents[1]
GENERATED = datetime(2026, 11, 23, 3, 0, 0)
K = 5
PG_URL = os.environ.get("NCF_TEST_PG_URL")


def topk_frame(n_users: int, k: int = K, *, n_items: int = 20) -> pd.DataFrame:
    """User u's list: items (u + r) mod n_items at rank r, scores falling with rank."""
    rows = [{USER_IDX: u, RANK: r, ITEM_IDX: (u + r) % n_items, SCORE: 1.0 - r / 10}
            for u in range(n_users) for r in range(1, k + 1)]
    return pd.DataFrame(rows).astype({USER_IDX: "int32", RANK: "int32", ITEM_IDX: "int32",
                                      SCORE: "float32"})


def users_frame(n: int) -> pd.DataFrame:
    return pd.DataFrame({USER_ID: [f"user{u}" for u in range(n)], USER_IDX: range(n)})


def items_frame(n: int = 20) -> pd.DataFrame:
    return pd.DataFrame({ITEM_ID: [f"item{i}" for i in range(n)], ITEM_IDX: range(n)})


def rows_for(dataset: str, n_users: int, version: str = "1", k: int = K) -> pd.DataFrame:
    return build_rows(topk_frame(n_users, k), users_frame(n_users), items_frame(),
                      dataset=dataset, model_name=f"ncf-{dataset}", model_version=version,
                      run_id=f"run-{version}", generated_at=GENERATED)


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'recommendations.db'}"
    if not PG_URL:
        pytest.skip("PostgreSQL test: set NCF_TEST_PG_URL, e.g. "
                    "postgresql+psycopg://postgres@127.0.0.1:55432/postgres")
    return PG_URL


@pytest.fixture()
def engine(db_url: str) -> Iterator[sa.Engine]:
    engine = create_db_engine(db_url)
    yield engine
    engine.dispose()


@pytest.fixture()
def table(engine: sa.Engine) -> Iterator[str]:
    """A table name of its own per test, so PostgreSQL tests never see each other's rows."""
    name = f"recs_{uuid.uuid4().hex[:10]}"
    yield name
    with engine.begin() as conn:
        conn.execute(sa.text(f"DROP TABLE IF EXISTS {name}"))


def read_table(engine: sa.Engine, table: str, dataset: str) -> pd.DataFrame:
    """Through the declared table, so SQLite's text timestamps come back as datetimes."""
    recs = recommendations_table(sa.MetaData(), table)
    query = (sa.select(recs).where(recs.c[DATASET] == dataset)
             .order_by(recs.c[USER_ID], recs.c[RANK]))
    with engine.connect() as conn:
        return pd.DataFrame(conn.execute(query).mappings().all())


def count_rows(engine: sa.Engine, table: str, dataset: str) -> int:
    with engine.connect() as conn:
        return int(conn.execute(sa.text(f"SELECT count(*) FROM {table} WHERE dataset = :d"),
                                {"d": dataset}).scalar_one())


# --- build_rows --------------------------------------------------------------------


def test_build_rows_maps_raw_ids_in_rank_order() -> None:
    topk = topk_frame(2, k=3).sample(frac=1.0, random_state=0)  # shuffled on purpose
    rows = build_rows(topk, users_frame(2), items_frame(), dataset="ml-100k",
                      model_name="ncf-ml-100k", model_version="7", run_id="abc",
                      generated_at=datetime(2026, 11, 23, 4, 0, tzinfo=UTC) + timedelta(hours=1))
    assert list(rows.columns) == list(TABLE_COLUMNS)
    assert rows[[USER_ID, RANK, ITEM_ID]].values.tolist() == [
        ["user0", 1, "item1"], ["user0", 2, "item2"], ["user0", 3, "item3"],
        ["user1", 1, "item2"], ["user1", 2, "item3"], ["user1", 3, "item4"]]
    assert rows[GENERATED_AT].iloc[0] == pd.Timestamp("2026-11-23 05:00:00")  # UTC, naive
    assert set(rows[MODEL_VERSION]) == {"7"}


def _bad_topk(kind: str) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    topk, users, items = topk_frame(3), users_frame(3), items_frame()
    if kind == "missing user":
        users = users[users[USER_IDX] != 2]
    elif kind == "missing item":
        items = items[items[ITEM_IDX] != 4]
    elif kind == "rank gap":
        topk.loc[(topk[USER_IDX] == 1) & (topk[RANK] == 3), RANK] = 9
    elif kind == "zero-based":
        topk[RANK] -= 1
    elif kind == "duplicate rank":
        topk.loc[(topk[USER_IDX] == 0) & (topk[RANK] == 2), RANK] = 1
    elif kind == "duplicate index":
        users = pd.concat([users, pd.DataFrame({USER_ID: ["other"], USER_IDX: [0]})])
    elif kind == "empty":
        topk = topk.iloc[:0]
    return topk, users, items


@pytest.mark.parametrize(("kind", "message"), [
    ("missing user", r"users: no user_id for 1 user_idx value\(s\) of topk, e.g. 2"),
    ("missing item", r"items: no item_id for 1 item_idx value\(s\) of topk, e.g. 4"),
    ("rank gap", r"ranks must run 1..K for each user; 1 user\(s\) do not, e.g. user_idx 1"),
    ("zero-based", r"ranks must run 1..K for each user; 3 user\(s\)"),
    ("duplicate rank", r"2 rows share a \(user_idx, rank\), e.g. user_idx=0 rank=1"),
    ("duplicate index", r"users: user_idx is not unique"),
    ("empty", r"topk: no recommendations to publish"),
])
def test_build_rows_rejects(kind: str, message: str) -> None:
    topk, users, items = _bad_topk(kind)
    with pytest.raises(PublishError, match=message):
        build_rows(topk, users, items, dataset="d", model_name="m", model_version="1",
                   run_id="r", generated_at=GENERATED)


def test_masked_url_hides_the_password() -> None:
    masked = masked_url("postgresql+psycopg://ncf:s3cret@db:5432/recs")
    assert masked == "postgresql+psycopg://ncf:***@db:5432/recs"


# --- the table, per backend -----------------------------------------------------------


def test_first_publish_creates_table_with_k_rows_per_user(engine: sa.Engine, table: str) -> None:
    assert publish_recommendations(engine, table, rows_for("ml-100k", 4), dataset="ml-100k") == 20
    stored = read_table(engine, table, "ml-100k")
    assert stored.groupby(USER_ID)[RANK].apply(list).tolist() == [[1, 2, 3, 4, 5]] * 4
    assert stored.loc[0, [USER_ID, RANK, ITEM_ID]].tolist() == ["user0", 1, "item1"]
    assert stored.loc[0, SCORE] == pytest.approx(0.9)
    assert stored.loc[0, GENERATED_AT] == GENERATED
    pk = sa.inspect(engine).get_pk_constraint(table)["constrained_columns"]
    assert pk == [DATASET, USER_ID, RANK]
    if engine.dialect.name == "sqlite":
        with engine.connect() as conn:
            assert conn.exec_driver_sql("PRAGMA journal_mode").scalar_one() == "wal"


def test_ensure_table_is_idempotent_and_refuses_a_foreign_table(engine: sa.Engine,
                                                                table: str) -> None:
    ensure_table(engine, table)
    assert ensure_table(engine, table).name == table
    with engine.begin() as conn:
        conn.execute(sa.text(f"CREATE TABLE {table}_old (dataset text, user_id text)"))
    try:
        with pytest.raises(PublishError, match=r"exists without column\(s\) \['rank'"):
            ensure_table(engine, f"{table}_old")
    finally:
        with engine.begin() as conn:
            conn.execute(sa.text(f"DROP TABLE {table}_old"))


def test_republish_replaces_the_set(engine: sa.Engine, table: str) -> None:
    publish_recommendations(engine, table, rows_for("ml-100k", 4, "1"), dataset="ml-100k")
    assert publish_recommendations(engine, table, rows_for("ml-100k", 3, "2"),
                                   dataset="ml-100k") == 15
    first = read_table(engine, table, "ml-100k")
    assert set(first[MODEL_VERSION]) == {"2"} and first[USER_ID].nunique() == 3
    publish_recommendations(engine, table, rows_for("ml-100k", 3, "2"), dataset="ml-100k")
    pd.testing.assert_frame_equal(read_table(engine, table, "ml-100k"), first)


def test_other_datasets_are_untouched(engine: sa.Engine, table: str) -> None:
    publish_recommendations(engine, table, rows_for("lastfm", 2), dataset="lastfm")
    before = read_table(engine, table, "lastfm")
    publish_recommendations(engine, table, rows_for("ml-100k", 4), dataset="ml-100k")
    publish_recommendations(engine, table, rows_for("ml-100k", 3, "2"), dataset="ml-100k")
    pd.testing.assert_frame_equal(read_table(engine, table, "lastfm"), before)
    assert count_rows(engine, table, "ml-100k") == 15
    with pytest.raises(PublishError, match=r"also hold dataset\(s\) \['lastfm'\]"):
        publish_recommendations(engine, table, pd.concat([rows_for("ml-100k", 1),
                                                          rows_for("lastfm", 1)]),
                                dataset="ml-100k")


@pytest.mark.parametrize("fault", ["null item_id", "duplicate key"])
def test_failed_insert_rolls_back_to_the_previous_set(engine: sa.Engine, table: str,
                                                      fault: str) -> None:
    publish_recommendations(engine, table, rows_for("ml-100k", 3, "1"), dataset="ml-100k")
    before = read_table(engine, table, "ml-100k")
    bad = rows_for("ml-100k", 4, "2")
    if fault == "null item_id":  # the last row fails, after the delete and earlier inserts
        bad.loc[bad.index[-1], ITEM_ID] = None
    else:
        bad = pd.concat([bad, bad.iloc[[0]]], ignore_index=True)
    with pytest.raises(PublishError, match="rolled back, the previous set is unchanged"):
        publish_recommendations(engine, table, bad, dataset="ml-100k")
    pd.testing.assert_frame_equal(read_table(engine, table, "ml-100k"), before)


def test_reader_sees_only_complete_sets(engine: sa.Engine, table: str) -> None:
    small, large = rows_for("ml-100k", 150, "1", k=10), rows_for("ml-100k", 200, "2", k=10)
    publish_recommendations(engine, table, small, dataset="ml-100k")
    seen: list[int] = []
    errors: list[BaseException] = []
    done = threading.Event()

    def read_in_a_loop() -> None:
        reader = create_db_engine(engine.url)
        try:
            while not done.is_set():
                seen.append(count_rows(reader, table, "ml-100k"))
        except BaseException as exc:  # surfaced in the main thread below
            errors.append(exc)
        finally:
            reader.dispose()

    thread = threading.Thread(target=read_in_a_loop)
    thread.start()
    try:
        for n in range(12):
            publish_recommendations(engine, table, large if n % 2 == 0 else small,
                                    dataset="ml-100k")
    finally:
        done.set()
        thread.join(timeout=60)
    assert not errors
    assert len(seen) > 10
    assert set(seen) <= {1500, 2000}, sorted(set(seen))


def test_concurrent_publishers_of_one_dataset_both_succeed(engine: sa.Engine,
                                                           table: str) -> None:
    ensure_table(engine, table)
    versions = [str(n) for n in range(6)]
    errors: list[BaseException] = []

    def publish(version: str) -> None:
        try:
            publish_recommendations(engine, table, rows_for("ml-100k", 50, version),
                                    dataset="ml-100k")
        except BaseException as exc:  # surfaced in the main thread below
            errors.append(exc)

    threads = [threading.Thread(target=publish, args=(v,)) for v in versions]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert not errors
    stored = read_table(engine, table, "ml-100k")
    assert len(stored) == 250 and stored[MODEL_VERSION].nunique() == 1  # one complete set


# --- CLI ---------------------------------------------------------------------------


def write_folder(folder: Path, schema: Schema, frame: pd.DataFrame) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    table = pa.Table.from_pandas(frame, schema=layout.arrow_schema(schema), preserve_index=False)
    pq.write_table(table, folder / "part-00000.parquet")


def test_main_publishes_and_records_manifest(tmp_path: Path) -> None:
    paths = LakePaths(tmp_path / "lake", "ml-100k", "2026-11-23")
    write_folder(paths.path(TOPK), TOPK_SCHEMA, topk_frame(3))
    write_folder(paths.path(USERS), USERS_SCHEMA, users_frame(3))
    write_folder(paths.path(ITEMS), ITEMS_SCHEMA, items_frame())
    layout.update_manifest(paths, "recommend", {"model_version": "4", "run_id": "r123"})
    db_file = tmp_path / "new" / "folder" / "recs.db"  # its folder is created
    args = ["--config", str(REPO / "configs" / "ml-100k.yaml"), "--logical-date", "2026-11-23",
            "--lake-root", str(paths.root), "--db-url", f"sqlite:///{db_file}"]
    assert main(args) == 0  # model version and run id from the manifest's recommend entry
    entry = layout.read_manifest(paths)["publish"]
    assert {key: entry[key] for key in ("table", "db_url", "rows", "users", "k",
                                        "model_version", "run_id")} == {
        "table": "recommendations", "db_url": f"sqlite:///{db_file}", "rows": 15, "users": 3,
        "k": K, "model_version": "4", "run_id": "r123"}
    engine = create_db_engine(f"sqlite:///{db_file}")
    first = read_table(engine, "recommendations", "ml-100k")
    assert main([*args, "--model-version", "4"]) == 0  # a re-run writes the same rows
    again = read_table(engine, "recommendations", "ml-100k")
    engine.dispose()
    assert len(first) == 15 and set(first["model_name"]) == {"ncf-ml-100k"}
    pd.testing.assert_frame_equal(again, first)


def test_main_without_topk_names_the_path(tmp_path: Path, caplog: pytest.LogCaptureFixture
                                          ) -> None:
    paths = LakePaths(tmp_path / "lake", "ml-100k", "2026-11-23")
    paths.path(TOPK).mkdir(parents=True)  # exists, but recommend wrote nothing
    args = ["--config", str(REPO / "configs" / "ml-100k.yaml"), "--logical-date", "2026-11-23",
            "--lake-root", str(paths.root), "--db-url", f"sqlite:///{tmp_path / 'r.db'}",
            "--model-version", "4", "--run-id", "r123"]
    with caplog.at_level(logging.ERROR, logger="jobs.publish"):
        assert main(args) == 1
    assert f"{paths.path(TOPK)} is empty" in caplog.text
    assert "publish" not in layout.read_manifest(paths)
