"""ncf_model's stage CLI: train -> evaluate -> recommend on a tiny lake, real MLflow (SQLite)."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import yaml

from jobs.lake import layout
from ncf_model import cli

N_USERS, N_ITEMS, N_EVAL_NEG = 24, 30, 10


def _write_pairs(folder: Path, rows: list[tuple[int, int, int]]) -> None:
    folder.mkdir(parents=True)
    user, item, label = zip(*rows, strict=True)
    table = pa.Table.from_arrays([pa.array(user), pa.array(item), pa.array(label)],
                                 schema=layout.arrow_schema(layout.PAIRS_SCHEMA))
    pq.write_table(table, folder / "part-00000.parquet")


USER_IDS = [f"u{n}" for n in range(N_USERS)]
ITEM_IDS = [f"i{n}" for n in range(N_ITEMS)]


def _write_ids(folder: Path, schema: layout.Schema, ids: list[str]) -> None:
    folder.mkdir(parents=True)
    table = pa.Table.from_arrays([pa.array(ids), pa.array(range(len(ids)), type=pa.int32())],
                                 schema=layout.arrow_schema(schema))
    pq.write_table(table, folder / "part-00000.parquet")


def _tiny_lake(root: Path, date: str = "2026-11-23", users: list[str] | None = None,
               items: list[str] | None = None) -> layout.LakePaths:
    """Two taste groups; per user 8 train positives, 1 validation and 1 test positive.

    Tastes belong to the raw ids (user `<x><n>` likes items i0..i14 when n is even), so a
    later date may list users and items in another order, or add users, and an earlier
    model still knows whom to recommend what.
    """
    users, items = users or USER_IDS, items or ITEM_IDS
    paths = layout.LakePaths(root, "tiny", date)
    idx = {item: n for n, item in enumerate(items)}
    train, validation, test = [], [], []
    for user, user_id in enumerate(users):
        rng = random.Random(user_id)  # draws per raw id: the same whatever the order
        even = int(user_id.lstrip("unew")) % 2 == 0
        liked = ITEM_IDS[:15] if even else ITEM_IDS[15:]
        picks = rng.sample(liked, 10)
        untouched = [i for i in ITEM_IDS if i not in picks]
        train += [(user, idx[item], 1) for item in picks[:8]]
        train += [(user, idx[rng.choice(untouched)], 0) for _ in range(8)]
        for split, positive in ((validation, picks[8]), (test, picks[9])):
            split.append((user, idx[positive], 1))
            split += [(user, idx[item], 0) for item in rng.sample(untouched, N_EVAL_NEG)]
    _write_pairs(paths.path(layout.TRAIN), train)
    _write_pairs(paths.path(layout.VALIDATION), validation)
    _write_pairs(paths.path(layout.TEST), test)
    _write_ids(paths.path(layout.USERS), layout.USERS_SCHEMA, users)
    _write_ids(paths.path(layout.ITEMS), layout.ITEMS_SCHEMA, items)
    layout.update_manifest(paths, "prepare", {"n_users": len(users), "n_items": len(items)})
    return paths


def _config(tmp_path: Path, min_score: float, name: str = "tiny", train: dict | None = None,
            families: tuple[str, ...] = ("ncf", "popularity"), **evaluate: object) -> Path:
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump({
        "dataset": "tiny",
        "source": {"format": "movielens-100k", "path": "u.data", "sha256": "0" * 64},
        "model": {"kind": "neumf", "factors": 8, "mlp_layers": [16, 8]},
        "train": {"epochs": 4, "batch_size": 64, "lr": 0.01, "seed": 1, **(train or {})},
        "evaluate": {"k": 5, "min_score": min_score, **evaluate},
        "recommend": {"k": 5, "chunk_users": 7},
        "candidates": {"families": list(families), "select_metric": "ndcg_5"},
    }))
    return path


# The torch stages of a DAG run, in order (train's model is one of the candidates).
STAGES = ("train", "candidates", "evaluate", "recommend")




def _run(stage: str, config: Path, lake: Path, capsys: pytest.CaptureFixture[str], *,
         date: str = "2026-11-23", expect: int = 0) -> str:
    assert cli.main([stage, "--config", str(config), "--logical-date", date,
                     "--lake-root", str(lake), "--device", "cpu"]) == expect
    return capsys.readouterr().out.strip().splitlines()[-1]


def test_train_evaluate_recommend_log_to_mlflow_and_write_the_lake(
        tmp_path: Path, mlflow_store: str, capsys: pytest.CaptureFixture[str]) -> None:
    from mlflow.tracking import MlflowClient

    paths = _tiny_lake(tmp_path / "lake")
    config = _config(tmp_path, min_score=0.0)

    run_id = _run("train", config, paths.root, capsys)
    client = MlflowClient(tracking_uri=mlflow_store)
    run = client.get_run(run_id)
    assert run.data.params["model.factors"] == "8"
    assert run.data.params["data.n_users"] == str(N_USERS)
    assert len(client.get_metric_history(run_id, "loss")) == 4
    assert len(client.get_metric_history(run_id, "val_hr_10")) == 4
    # Lineage: the manifest as the run read it (before train added its own entry).
    assert len(run.data.tags["ncf.manifest_sha256"]) == 64
    assert run.data.tags["ncf.lake_path"] == str(paths.base)
    assert {p.name for p in paths.path(layout.MODEL).iterdir()} == {
        "state_dict.pt", "model.json", "users.parquet", "items.parquet"}
    logged = {a.path for a in client.list_artifacts(run_id, "checkpoint")}
    assert logged == {f"checkpoint/{name}" for name in ("state_dict.pt", "model.json",
                                                        "users.parquet", "items.parquet")}
    assert layout.read_manifest(paths)["train"]["run_id"] == run_id

    assert _run("candidates", config, paths.root, capsys) == "ncf"  # beats popularity
    version = _run("evaluate", config, paths.root, capsys)
    assert version == "1"
    metrics = client.get_run(run_id).data.metrics
    # Planted two-group structure: far better than random (5 of 11 candidates = 0.45).
    assert metrics["test_hr_5"] > 0.6
    assert 0.0 < metrics["test_ndcg_5"] <= metrics["test_hr_5"]
    assert str(client.get_model_version_by_alias("ncf-tiny", "champion").version) == "1"

    rows = int(_run("recommend", config, paths.root, capsys))
    assert rows == N_USERS * 5
    topk = pq.read_table(paths.path(layout.TOPK)).to_pandas()
    assert list(topk.columns) == layout.columns(layout.TOPK_SCHEMA)
    assert sorted(topk[layout.RANK].unique()) == [1, 2, 3, 4, 5]
    seen = set()
    for name in (layout.TRAIN, layout.VALIDATION, layout.TEST):
        frame = pq.read_table(paths.path(name)).to_pandas()
        positives = frame[frame[layout.LABEL] == 1]
        seen |= set(zip(positives[layout.USER_IDX], positives[layout.ITEM_IDX], strict=True))
    recommended = set(zip(topk[layout.USER_IDX], topk[layout.ITEM_IDX], strict=True))
    assert not recommended & seen
    assert set(topk[layout.SOURCE]) == {layout.SOURCE_MODEL}  # no cold-start user here
    manifest = json.loads(paths.manifest.read_text())
    assert manifest["recommend"]["rows"] == rows
    assert manifest["recommend"]["model_version"] == "1"
    assert manifest["evaluate"]["promoted"] is True
    assert manifest["evaluate"]["champion_version"] == "1"
    assert "no champion yet" in manifest["evaluate"]["reason"]
    tags = client.get_model_version("ncf-tiny", "1").tags
    assert tags["run_id"] == run_id and tags["logical_date"] == "2026-11-23"
    assert len(tags["manifest_sha256"]) == 64 and float(tags["test_hr_5"]) > 0.6
    # A retried evaluate reuses the version it registered.
    assert _run("evaluate", config, paths.root, capsys) == "1"
    assert len(client.search_model_versions("name = 'ncf-tiny'")) == 1


def test_evaluate_below_the_floor_exits_99_so_airflow_skips_the_publish(
        tmp_path: Path, mlflow_store: str, capsys: pytest.CaptureFixture[str]) -> None:
    from mlflow.tracking import MlflowClient

    paths = _tiny_lake(tmp_path / "lake")
    # A barely trained model (random: 5 of 11 candidates, HR@5 ~ 0.45) under a 0.95 floor.
    config = _config(tmp_path, min_score=0.95, train={"epochs": 1, "lr": 1e-6})
    _run("train", config, paths.root, capsys)
    _run("candidates", config, paths.root, capsys)
    assert _run("evaluate", config, paths.root, capsys, expect=cli.SKIP_EXIT_CODE) == "1"
    client = MlflowClient(tracking_uri=mlflow_store)
    version = client.get_model_version("ncf-tiny", "1")
    assert "below the floor" in version.tags["ncf.gate"]
    assert version.tags["ncf.promoted"] == "False"
    assert not version.aliases
    assert layout.read_manifest(paths)["evaluate"]["promoted"] is False
    with pytest.raises(cli.StageError, match="ncf-tiny has no champion"):
        _run("recommend", config, paths.root, capsys)


def test_gate_against_the_champion_and_cold_start_users(
        tmp_path: Path, mlflow_store: str, capsys: pytest.CaptureFixture[str]) -> None:
    """Day 1 makes a champion. Day 2 lists ids in another order and adds 3 new users; a
    barely trained model loses to the champion's recipe refitted on day 2's train and
    scored on day 2's validation (never the champion's own weights: they saw these events);
    with on_refusal: serve_champion the champion recommends for day 2, popularity for new
    users."""
    from mlflow.tracking import MlflowClient

    lake = tmp_path / "lake"
    config = _config(tmp_path, min_score=0.0, tolerance=0.0, on_refusal="serve_champion")
    day1 = _tiny_lake(lake)
    for stage in STAGES:
        _run(stage, config, lake, capsys)
    day1_topk = pq.read_table(day1.path(layout.TOPK)).to_pandas()

    new_users = ["new1", "new2", "new3"]
    day2 = _tiny_lake(lake, "2026-11-24", users=[*USER_IDS[::-1], *new_users],
                      items=ITEM_IDS[::-1])
    weak_config = _config(tmp_path, min_score=0.0, name="weak", train={"epochs": 1, "lr": 1e-6},
                          tolerance=0.0, on_refusal="serve_champion")
    _run("train", weak_config, lake, capsys, date="2026-11-24")
    _run("candidates", weak_config, lake, capsys, date="2026-11-24")
    assert _run("evaluate", weak_config, lake, capsys, date="2026-11-24") == "2"
    evaluated = layout.read_manifest(day2)["evaluate"]
    assert evaluated["promoted"] is False and evaluated["champion_version"] == "1"
    assert "worse than the champion's" in evaluated["reason"]
    gate = evaluated["gate"]
    assert gate["metric"] == "val_ndcg_5" and gate["value"] < gate["champion_value"]
    assert gate["champion_source"] == "the champion's recipe (ncf) refitted on today's train"
    client = MlflowClient(tracking_uri=mlflow_store)
    assert str(client.get_model_version_by_alias("ncf-tiny", "champion").version) == "1"

    _run("recommend", weak_config, lake, capsys, date="2026-11-24")
    topk = pq.read_table(day2.path(layout.TOPK)).to_pandas()
    recommended = layout.read_manifest(day2)["recommend"]
    assert recommended["model_version"] == "1" and recommended["popularity_users"] == 3
    users = dict(enumerate([*USER_IDS[::-1], *new_users]))
    items = dict(enumerate(ITEM_IDS[::-1]))
    topk["user_id"] = topk[layout.USER_IDX].map(users)
    topk["item_id"] = topk[layout.ITEM_IDX].map(items)
    sources = topk.groupby("user_id")[layout.SOURCE].agg(set).to_dict()
    assert {u for u, s in sources.items() if s == {layout.SOURCE_POPULARITY}} == set(new_users)
    assert {u for u, s in sources.items() if s == {layout.SOURCE_MODEL}} == set(USER_IDS)
    # A known user's list from the remapped champion is day 1's list, in raw ids (the
    # seen items are the same on both days: the same draws per user).
    day1_topk["user_id"] = day1_topk[layout.USER_IDX].map(dict(enumerate(USER_IDS)))
    day1_topk["item_id"] = day1_topk[layout.ITEM_IDX].map(dict(enumerate(ITEM_IDS)))
    for frame in (topk, day1_topk):
        frame.sort_values(["user_id", layout.RANK], inplace=True)
    known = topk[topk[layout.SOURCE] == layout.SOURCE_MODEL]
    assert known[["user_id", "item_id"]].values.tolist() == \
        day1_topk[["user_id", "item_id"]].values.tolist()

    # A model as good as the champion (day 1's settings, its recipe) passes the gate.
    again = _config(tmp_path, min_score=0.0, name="again", tolerance=0.02)
    for stage in ("train", "candidates"):
        _run(stage, again, lake, capsys, date="2026-11-24")
    assert _run("evaluate", again, lake, capsys, date="2026-11-24") == "3"
    assert layout.read_manifest(day2)["evaluate"]["promoted"] is True
    assert str(client.get_model_version_by_alias("ncf-tiny", "champion").version) == "3"


def test_stage_out_of_order_names_the_missing_stage(tmp_path: Path, mlflow_store: str) -> None:
    config = _config(tmp_path, min_score=0.0)
    with pytest.raises(cli.StageError, match="run the prepare task"):
        cli.main(["train", "--config", str(config), "--logical-date", "2026-11-23",
                  "--lake-root", str(tmp_path / "lake"), "--device", "cpu"])


def _write_features(paths: layout.LakePaths, users: list[str], items: list[str]) -> None:
    """Side features that tell the two taste groups apart: an even user's occupation is
    "even", an item of i0..i14 has the genre "first"."""
    for name, schema, rows in (
            (layout.USER_FEATURES, layout.USER_FEATURES_SCHEMA,
             [{layout.USER_ID: u, layout.OCCUPATION:
               "even" if int(u.lstrip("unew")) % 2 == 0 else "odd"} for u in users]),
            (layout.ITEM_FEATURES, layout.ITEM_FEATURES_SCHEMA,
             [{layout.ITEM_ID: i, layout.GENRES: ["first" if i in ITEM_IDS[:15] else "second"]}
              for i in items])):
        paths.path(name).mkdir(parents=True)
        pq.write_table(pa.Table.from_pylist(rows, schema=layout.arrow_schema(schema)),
                       paths.path(name) / "part-00000.parquet")


def test_a_hybrid_champion_scores_new_users_from_their_features(
        tmp_path: Path, mlflow_store: str, capsys: pytest.CaptureFixture[str]) -> None:
    lake = tmp_path / "lake"
    config = tmp_path / "hybrid.yaml"
    raw = yaml.safe_load(_config(tmp_path, min_score=0.0, train={"epochs": 8}).read_text())
    raw["model"] |= {"kind": "hybrid", "id_dropout": 0.3}
    config.write_text(yaml.safe_dump(raw))
    day1 = _tiny_lake(lake)
    _write_features(day1, USER_IDS, ITEM_IDS)
    for stage in STAGES:
        _run(stage, config, lake, capsys)
    assert json.loads((day1.path(layout.MODEL) / "model.json").read_text())["features"][
        "user_fields"]["occupation"] == ["even", "odd"]

    new_users = ["new1", "new2", "new3", "new4"]
    day2 = _tiny_lake(lake, "2026-11-24", users=[*USER_IDS[::-1], *new_users],
                      items=ITEM_IDS[::-1])
    _write_features(day2, [*USER_IDS[::-1], *new_users], ITEM_IDS[::-1])
    # Day 2's own model was refused by the gate (serve_champion): recommend with day 1's.
    layout.update_manifest(day2, "evaluate", {"promoted": False})
    _run("recommend", config, lake, capsys, date="2026-11-24")

    recommended = layout.read_manifest(day2)["recommend"]
    assert recommended["popularity_users"] == 0
    topk = pq.read_table(day2.path(layout.TOPK)).to_pandas()
    assert set(topk[layout.SOURCE]) == {layout.SOURCE_MODEL}
    users = dict(enumerate([*USER_IDS[::-1], *new_users]))
    items = dict(enumerate(ITEM_IDS[::-1]))
    for n, user in enumerate(new_users, start=1):
        rows = topk[topk[layout.USER_IDX].map(users) == user]
        assert len(rows) == 5 and rows[layout.SCORE].between(0, 1).all()
        liked = set(ITEM_IDS[:15]) if n % 2 == 0 else set(ITEM_IDS[15:])
        # Never seen in training: its occupation alone places it in its taste group.
        assert sum(items[i] in liked for i in rows[layout.ITEM_IDX]) >= 4, (user, rows)


def test_a_killed_train_task_resumes_in_the_same_mlflow_run(
        tmp_path: Path, mlflow_store: str, capsys: pytest.CaptureFixture[str],
        monkeypatch: pytest.MonkeyPatch) -> None:
    import torch
    from mlflow.tracking import MlflowClient

    from ncf_model import resume, tracking

    class Killed(RuntimeError):
        pass

    log_metrics = tracking.RunLogger.log_metrics
    kills = []

    def dies_once_at_epoch_2(self, metrics, step=None):
        if step == 2 and not kills:
            kills.append(step)
            raise Killed("the worker died")
        log_metrics(self, metrics, step=step)

    config = _config(tmp_path, min_score=0.0)
    paths = _tiny_lake(tmp_path / "lake")
    monkeypatch.setattr(tracking.RunLogger, "log_metrics", dies_once_at_epoch_2)
    with pytest.raises(Killed):
        _run("train", config, paths.root, capsys)
    state = paths.path(resume.TRAIN_STATE_DIR)
    killed_run = json.loads((state / resume.RUN_FILE).read_text())["run_id"]
    assert sorted(p.name for p in state.iterdir()) == ["model.pt", "run.json"]

    run_id = _run("train", config, paths.root, capsys)  # the Airflow retry
    assert run_id == killed_run
    assert not state.exists()
    assert layout.read_manifest(paths)["train"]["resumed"] is True
    client = MlflowClient(tracking_uri=mlflow_store)
    assert [m.step for m in client.get_metric_history(run_id, "loss")] == [1, 2, 3, 4]
    assert client.get_run(run_id).info.status == "FINISHED"
    # The DAG run's parent run and NCF's child run, no run of the killed attempt left over.
    runs = client.search_runs([client.get_run(run_id).info.experiment_id])
    assert len(runs) == 2
    assert client.get_run(run_id).data.tags["mlflow.parentRunId"] in {r.info.run_id
                                                                      for r in runs}

    # The same weights as a training that was never interrupted.
    other = _tiny_lake(tmp_path / "lake2")
    _run("train", config, other.root, capsys)
    resumed = torch.load(paths.path(layout.MODEL) / "state_dict.pt", weights_only=True)
    uninterrupted = torch.load(other.path(layout.MODEL) / "state_dict.pt", weights_only=True)
    assert resumed.keys() == uninterrupted.keys()
    assert all(torch.equal(resumed[k], uninterrupted[k]) for k in resumed)
