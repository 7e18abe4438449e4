"""bench/backtest.py: forward HR and recall of the served top-k, popularity and the best
other family, on a lake and an event log written by hand, against numbers worked by hand."""

from __future__ import annotations

import json
import shutil
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any

import pytest
import yaml

from bench import backtest
from jobs.lake import layout
from tests.tiny_data import write_tiny_config

CUT, NEXT = "2026-11-20", "2026-11-21"
USERS = ["1", "2", "3", "4"]  # user_idx 0..3
ITEMS = ["10", "11", "12", "13", "14", "15"]  # item_idx 0..5
BEFORE = {"1": ["10", "11"], "2": ["10", "12"], "3": ["11", "13"], "4": ["10"]}
# The served top-2 of the run of CUT. Popularity at CUT (10: 3 users, 11: 2, 12 and 13: 1)
# less the user's own: 1 -> 12 13 (a tie: the lower index), 2 -> 11 13, 3 -> 10 12, 4 -> 11 12.
SERVED = {"1": ["14", "12"], "2": ["15", "14"], "3": ["10", "14"], "4": ["13", "15"]}
# ALS factors (rank 1, every user 1.0): the baseline ranks 14, 15, 13, 12, 11, 10.
ITEM_FACTORS = [0.1, 0.2, 0.3, 0.4, 0.6, 0.5]
# The log: (day, user, item); day 11-20 has a row with a bad id (rejected as ingest does).
LOG = [("2026-11-18", "1", "10"), ("2026-11-18", "2", "10"), ("2026-11-18", "4", "10"),
       ("2026-11-19", "1", "11"), ("2026-11-19", "2", "12"), ("2026-11-19", "3", "11"),
       ("2026-11-19", "3", "13"),
       ("2026-11-20", "1", "14"), ("2026-11-20", "4", "15"), ("2026-11-20", "3", "11"),
       ("2026-11-20", "5", "10"), ("2026-11-20", "x", "10"),
       ("2026-11-21", "1", "12"), ("2026-11-21", "2", "13"), ("2026-11-21", "4", "11"),
       ("2026-11-22", "4", "13")]


def _ts(day: str, n: int) -> int:
    return int(datetime.combine(date.fromisoformat(day), datetime.min.time(), UTC)
               .timestamp()) + 3600 + n


def _write(folder: Path, schema: layout.Schema, rows: list[tuple[Any, ...]]) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    folder.mkdir(parents=True)
    names = layout.columns(schema)
    table = pa.Table.from_pylist([dict(zip(names, row, strict=True)) for row in rows],
                                 schema=layout.arrow_schema(schema))
    pq.write_table(table, folder / "part-00000.parquet")


def _lake(root: Path, run_id: str) -> None:
    """The run of CUT (published), and the run of NEXT whose gate skipped publish."""
    base = root / "fwd" / CUT
    _write(base / layout.USERS, layout.USERS_SCHEMA, [(u, i) for i, u in enumerate(USERS)])
    _write(base / layout.ITEMS, layout.ITEMS_SCHEMA, [(t, i) for i, t in enumerate(ITEMS)])
    _write(base / layout.TRAIN, layout.PAIRS_SCHEMA,
           [(USERS.index(u), ITEMS.index(i), 1) for u, items in BEFORE.items() for i in items])
    for split in (layout.VALIDATION, layout.TEST):
        _write(base / split, layout.PAIRS_SCHEMA, [])
    # interactions/ holds day CUT too (ingest reads it; prepare's as-of cut leaves it out).
    _write(base / layout.INTERACTIONS, layout.INTERACTIONS_SCHEMA,
           [(u, i, datetime.fromtimestamp(_ts(day, n), tz=UTC).replace(tzinfo=None), 4.0)
            for n, (day, u, i) in enumerate(LOG) if day <= CUT and u != "x"])
    _write(base / layout.TOPK, layout.TOPK_SCHEMA,
           [(USERS.index(u), rank, ITEMS.index(i), 1.0 - rank / 10, "model")
            for u, items in SERVED.items() for rank, i in enumerate(items, start=1)])
    als = base / layout.als_folder(("train", "validation", "test"))
    _write(als / layout.USER_FACTORS, layout.USER_FACTORS_SCHEMA, [(u, [1.0]) for u in range(4)])
    _write(als / layout.ITEM_FACTORS, layout.ITEM_FACTORS_SCHEMA,
           [(i, [f]) for i, f in enumerate(ITEM_FACTORS)])
    families = {"ease": {"validation": {"val_ndcg_10": 0.5}, "test": {"test_hr_10": 0.6}},
                "als": {"validation": {"val_ndcg_10": 0.4}, "settings": {},
                        "recipe": {"family": "als"}},
                "popularity": {"validation": {"val_ndcg_10": 0.45}}}
    manifest: dict[str, dict[str, Any]] = {
        "prepare": {"n_users": 4, "n_items": 6, "as_of": f"{CUT}T00:00:00+00:00",
                    "written_at": "2026-11-20T01:00:00+00:00"},
        "candidates": {"served_family": "ease", "served_run_id": run_id,
                       "select_metric": "ndcg_10", "families": families,
                       "written_at": "2026-11-20T01:01:00+00:00"},
        "evaluate": {"promoted": True, "model_version": "1", "champion_version": "1",
                     "reason": "no champion yet", "written_at": "2026-11-20T01:02:00+00:00"},
        "recommend": {"model_name": "ncf-fwd", "model_version": "1", "run_id": run_id,
                      "written_at": "2026-11-20T01:03:00+00:00"},
        "publish": {"rows": 8, "model_version": "1", "written_at": "2026-11-20T01:04:00+00:00"},
    }
    (base / layout.MANIFEST).write_text(json.dumps(manifest))
    following = root / "fwd" / NEXT
    shutil.copytree(base, following)
    shutil.rmtree(following / layout.TOPK)
    later = {stage: dict(manifest[stage], written_at=f"{NEXT}T01:0{n}:00+00:00")
             for n, stage in enumerate(("prepare", "candidates", "evaluate"))}
    later["prepare"]["as_of"] = f"{NEXT}T00:00:00+00:00"
    later["evaluate"] |= {"promoted": False, "model_version": "2"}
    (following / layout.MANIFEST).write_text(json.dumps(later))


def _log(folder: Path) -> None:
    for day in sorted({day for day, _u, _i in LOG}):
        part = folder / f"dt={day}" / "part-0.csv"
        part.parent.mkdir(parents=True)
        lines = [f"{u},{i},{_ts(d, n)},4" for n, (d, u, i) in enumerate(LOG) if d == day]
        part.write_text("\n".join(["user_id,item_id,ts,value", *lines]) + "\n")


def test_forward_score_by_hand() -> None:
    served = {"a": ["x", "y", "z"], "b": ["x", "y", "z"], "c": ["x", "y", "z"]}
    future = {"a": {"y", "q"}, "b": {"q"}, "e": {"x"}}  # c: nothing new; e: no list
    users, quiet, unserved = backtest.evaluated_users(served, future, known={"a", "b", "c"})
    assert (users, quiet, unserved) == (["a", "b"], 1, 1)
    score = backtest.forward_score(served, future, users, k=2)
    assert score == backtest.Score(users=2, hr=0.5, recall=0.25)  # a: 1 of 2; b: 0 of 1
    assert backtest.forward_score(served, {"a": {"z"}}, ["a"], k=2).hr == 0.0  # z is 3rd
    with pytest.raises(backtest.BacktestError, match="no user"):
        backtest.forward_score(served, future, [], k=2)


@pytest.mark.spark
def test_backtest_on_a_hand_made_lake_and_log(spark: Any, tmp_path: Path,
                                              mlflow_store: str) -> None:
    from mlflow.tracking import MlflowClient

    from jobs.lake.config import load_data_config
    from ncf_model import tracking

    raw = tmp_path / "u.data"
    raw.write_text("1\t10\t4\t880000000\n")
    config = write_tiny_config(tmp_path / "configs", raw, dataset="fwd")
    settings = yaml.safe_load(config.read_text())
    settings["source"] = {"format": "events", "events": {
        "location": str(tmp_path / "log"), "file_type": "csv", "partitioning": "daily",
        "columns": {"user": "user_id", "item": "item_id", "timestamp": "ts", "value": "value"},
        "ts_unit": "seconds", "integer_ids": True}}
    config.write_text(yaml.safe_dump(settings))
    with tracking.start_run("fwd", run_name="served") as run:
        run_id = run.run_id
    client = MlflowClient(tracking_uri=mlflow_store)
    client.create_registered_model("ncf-fwd")
    client.create_model_version("ncf-fwd", source=f"runs:/{run_id}/served", run_id=run_id)
    _lake(tmp_path / "lake", run_id)
    _log(tmp_path / "log")

    data_cfg = load_data_config(config)
    opts = backtest.Options(config=config, lake_root=tmp_path / "lake", k=2, horizon_days=2,
                            location=str(tmp_path / "log"))
    (row,) = backtest.backtest(spark, data_cfg, [CUT], opts)
    # Window [11-20, 11-22): new positives 1 -> {14, 12} (14 is in interactions/, but after
    # the cut), 2 -> {13}, 4 -> {15, 11} (13 on 11-22 is past it); 3 only touched 11 again
    # (quiet); 5 has no list (unserved); the bad id x is rejected.
    assert {key: row[key] for key in ("served_from", "users", "quiet", "unserved",
                                      "new_positives", "served_family", "baseline_family")} == {
        "served_from": CUT, "users": 3, "quiet": 1, "unserved": 1, "new_positives": 5,
        "served_family": "ease", "baseline_family": "als"}
    # served 1 [14 12]: 2 of 2; 2 [15 14]: 0 of 1; 4 [13 15]: 1 of 2.
    assert row["served_hr"] == pytest.approx(2 / 3)
    assert row["served_recall"] == pytest.approx((1 + 0 + 0.5) / 3)
    # popularity 1 [12 13]: 1 of 2; 2 [11 13]: 1 of 1; 4 [11 12]: 1 of 2.
    assert row["popularity_hr"] == pytest.approx(1.0)
    assert row["popularity_recall"] == pytest.approx((0.5 + 1 + 0.5) / 3)
    # ALS every user [14 15] (less the seen): 1: 1 of 2; 2: 0 of 1; 4: 1 of 2.
    assert row["baseline_hr"] == pytest.approx(2 / 3)
    assert row["baseline_recall"] == pytest.approx((0.5 + 0 + 0.5) / 3)

    # On NEXT the gate skipped publish: the table still served CUT's lists. Window 11-21.
    (later,) = backtest.backtest(spark, data_cfg, [NEXT],
                                 backtest.Options(**{**vars(opts), "horizon_days": 1}))
    assert (later["served_from"], later["users"], later["quiet"]) == (CUT, 3, 1)
    assert (later["served_hr"], later["popularity_hr"], later["baseline_hr"]) == pytest.approx(
        (1 / 3, 1.0, 0.0))
    # A window past the log's last day (11-22) is left out, never scored on part of it.
    assert backtest.backtest(spark, data_cfg, [CUT],
                             backtest.Options(**{**vars(opts), "horizon_days": 5}),
                             mlflow=False) == []

    # MLflow: on the served version's run, one step per cut date; and the version's tags.
    history = client.get_metric_history(run_id, "forward_hr_2_2d")
    assert [(m.step, m.value) for m in history] == [
        ((date.fromisoformat(CUT) - date(1970, 1, 1)).days, pytest.approx(2 / 3))]
    assert client.get_metric_history(run_id, "forward_popularity_hr_2_1d")[0].value == 1.0
    tag = json.loads(client.get_model_version("ncf-fwd", "1").tags[f"ncf.forward_2d.{CUT}"])
    assert tag["baseline_family"] == "als" and tag["users"] == 3
    assert "quiet" in backtest.render([row], k=2, h=2)
