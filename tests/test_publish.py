"""jobs.serving.publish: lake rows -> table rows, and the stage CLI (publish, rollback, runs).

The table tests run once per backend: SQLite in tmp_path, and PostgreSQL at $NCF_TEST_PG_URL
(e.g. postgresql+psycopg://postgres@127.0.0.1:55432/postgres), skipped when it is unset.
"""

from __future__ import annotations

import logging
import socket
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import sqlalchemy as sa

from jobs.lake import layout
from jobs.lake.layout import (
    ITEM_ID,
    ITEM_IDX,
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
from jobs.serving.engine import create_db_engine
from jobs.serving.publish import PublishError, build_rows, main
from jobs.serving.table import (
    DATASET,
    GENERATED_AT,
    MODEL_VERSION,
    SERVING,
    TABLE_COLUMNS,
    Tables,
    loaded_runs,
)

REPO = Path(__file__).resolve().parents[1]
GENERATED = datetime(2026, 11, 23, 3, 0, 0)
K = 5


def topk_frame(n_users: int, k: int = K, *, n_items: int = 20) -> pd.DataFrame:
    """User u's list: items (u + r) mod n_items at rank r, scores falling with rank."""
    rows = [{USER_IDX: u, RANK: r, ITEM_IDX: (u + r) % n_items, SCORE: 1.0 - r / 10,
             SOURCE: "model"} for u in range(n_users) for r in range(1, k + 1)]
    return pd.DataFrame(rows).astype({USER_IDX: "int32", RANK: "int32", ITEM_IDX: "int32",
                                      SCORE: "float32"})


def users_frame(n: int) -> pd.DataFrame:
    return pd.DataFrame({USER_ID: [f"user{u}" for u in range(n)], USER_IDX: range(n)})


def items_frame(n: int = 20) -> pd.DataFrame:
    return pd.DataFrame({ITEM_ID: [f"item{i}" for i in range(n)], ITEM_IDX: range(n)})


def read_table(url: str, dataset: str) -> pd.DataFrame:
    engine = create_db_engine(url)
    recs = Tables.declare("recommendations", "recommendation_runs",
                          "recommendation_history").recommendations
    query = (sa.select(recs).where(recs.c[DATASET] == dataset)
             .order_by(recs.c[USER_ID], recs.c[RANK]))
    try:
        with engine.connect() as conn:
            result = conn.execute(query)
            return pd.DataFrame(result.all(), columns=list(result.keys()))
    finally:
        engine.dispose()


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
    elif kind == "duplicate index":
        users = pd.concat([users, pd.DataFrame({USER_ID: ["other"], USER_IDX: [0]})])
    elif kind == "empty":
        topk = topk.iloc[:0]
    return topk, users, items


@pytest.mark.parametrize(("kind", "message"), [
    ("missing user", r"users: no user_id for 1 user_idx value\(s\) of topk, e.g. 2"),
    ("missing item", r"items: no item_id for 1 item_idx value\(s\) of topk, e.g. 4"),
    ("duplicate index", r"users: user_idx is not unique"),
    ("empty", r"topk: no recommendations to publish"),
])
def test_build_rows_rejects(kind: str, message: str) -> None:
    topk, users, items = _bad_topk(kind)
    with pytest.raises(PublishError, match=message):
        build_rows(topk, users, items, dataset="d", model_name="m", model_version="1",
                   run_id="r", generated_at=GENERATED)


# --- CLI ---------------------------------------------------------------------------


def write_folder(folder: Path, schema: Schema, frame: pd.DataFrame) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    table = pa.Table.from_pandas(frame, schema=layout.arrow_schema(schema), preserve_index=False)
    pq.write_table(table, folder / "part-00000.parquet")


def write_lake(root: Path, date: str, n_users: int, version: str) -> LakePaths:
    paths = LakePaths(root, "ml-100k", date)
    topk = topk_frame(n_users)
    topk.loc[topk[USER_IDX] == n_users - 1, SOURCE] = "popularity"  # one cold-start user
    write_folder(paths.path(TOPK), TOPK_SCHEMA, topk)
    write_folder(paths.path(USERS), USERS_SCHEMA, users_frame(n_users))
    write_folder(paths.path(ITEMS), ITEMS_SCHEMA, items_frame())
    layout.update_manifest(paths, "recommend", {"model_version": version, "run_id": f"r{version}"})
    return paths


def cli_args(paths: LakePaths, url: str) -> list[str]:
    return ["--config", str(REPO / "configs" / "ml-100k.yaml"), "--logical-date",
            paths.logical_date, "--lake-root", str(paths.root), "--db-url", url]


def test_main_publishes_and_records_manifest(tmp_path: Path) -> None:
    paths = write_lake(tmp_path / "lake", "2026-11-23", 3, "4")
    db_file = tmp_path / "new" / "folder" / "recs.db"  # its folder is created
    url = f"sqlite:///{db_file}"
    assert main(cli_args(paths, url)) == 0  # version and run id from the manifest
    manifest = layout.read_manifest(paths)
    entry = manifest["publish"]
    assert {key: entry[key] for key in ("table", "db_url", "rows", "users", "popularity_users",
                                        "k", "model_version", "run_id")} == {
        "table": "recommendations", "db_url": url, "rows": 15, "users": 3,
        "popularity_users": 1, "k": K, "model_version": "4", "run_id": "r4"}
    # generated_at is when recommend wrote topk/ (UTC), so re-publishing gives the same rows.
    recommended = datetime.fromisoformat(manifest["recommend"]["written_at"])
    assert entry["generated_at"] == recommended.astimezone(UTC).replace(tzinfo=None).isoformat()
    first = read_table(url, "ml-100k")
    assert main(cli_args(paths, url)) == 0  # a re-run of the date writes the same rows
    again = read_table(url, "ml-100k")
    assert len(first) == 15 and set(first["model_name"]) == {"ncf-ml-100k"}
    assert first[SOURCE].tolist() == ["model"] * 10 + ["popularity"] * 5
    pd.testing.assert_frame_equal(again, first)


def test_main_without_topk_names_the_path(tmp_path: Path, caplog: pytest.LogCaptureFixture
                                          ) -> None:
    paths = LakePaths(tmp_path / "lake", "ml-100k", "2026-11-23")
    paths.path(TOPK).mkdir(parents=True)  # exists, but recommend wrote nothing
    args = [*cli_args(paths, f"sqlite:///{tmp_path / 'r.db'}"), "--model-version", "4",
            "--run-id", "r123"]
    with caplog.at_level(logging.ERROR, logger="jobs.serving.publish"):
        assert main(args) == 1
    assert f"{paths.path(TOPK)} is empty" in caplog.text
    assert "publish" not in layout.read_manifest(paths)


def test_main_with_the_database_down_fails_and_a_retry_completes(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    paths = write_lake(tmp_path / "lake", "2026-11-23", 3, "4")
    with socket.socket() as sock:  # a port nothing listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    down = f"postgresql://ncf:s3cret@127.0.0.1:{port}/recs"  # as an Airflow connection says
    with caplog.at_level(logging.ERROR, logger="jobs.serving.publish"):
        assert main(cli_args(paths, down)) == 1
    assert f"database postgresql+psycopg://ncf:***@127.0.0.1:{port}/recs failed; nothing " \
           "was published" in caplog.text
    assert "s3cret" not in caplog.text
    assert "publish" not in layout.read_manifest(paths)
    url = f"sqlite:///{tmp_path / 'r.db'}"  # the database is back: the retry completes
    assert main(cli_args(paths, url)) == 0
    assert len(read_table(url, "ml-100k")) == 15


def test_rollback_and_runs_commands(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    url = f"sqlite:///{tmp_path / 'r.db'}"
    for n, date in enumerate(["2026-11-21", "2026-11-22", "2026-11-23"]):
        assert main(cli_args(write_lake(tmp_path / "lake", date, 2 + n, str(n)), url)) == 0
    config = ["--config", str(REPO / "configs" / "ml-100k.yaml"), "--db-url", url]
    assert main(["rollback", *config]) == 0
    assert "now serves the run of 2026-11-22" in capsys.readouterr().out
    assert set(read_table(url, "ml-100k")[MODEL_VERSION]) == {"1"}
    assert main(["rollback", *config, "--to-date", "2026-11-23"]) == 0
    assert set(read_table(url, "ml-100k")[MODEL_VERSION]) == {"2"}
    capsys.readouterr()
    assert main(["runs", *config]) == 0
    listing = capsys.readouterr().out.splitlines()
    assert [line.split()[:2] for line in listing] == [
        ["2026-11-23", "serving"], ["2026-11-22", "retired"], ["2026-11-21", "retired"]]
    assert main(["rollback", *config, "--to-date", "2026-11-01"]) == 1  # never published
    engine = create_db_engine(url)
    tables = Tables.declare("recommendations", "recommendation_runs", "recommendation_history")
    assert [r["status"] for r in loaded_runs(engine, tables, "ml-100k")][0] == SERVING
    engine.dispose()
