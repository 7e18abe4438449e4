"""ncf_model's stage CLI: train -> evaluate -> recommend on a tiny lake, real MLflow (SQLite)."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import yaml

from jobs import layout
from ncf_model import cli

N_USERS, N_ITEMS, N_EVAL_NEG = 24, 30, 10


def _write_pairs(folder: Path, rows: list[tuple[int, int, int]]) -> None:
    folder.mkdir(parents=True)
    user, item, label = zip(*rows, strict=True)
    table = pa.Table.from_arrays([pa.array(user), pa.array(item), pa.array(label)],
                                 schema=layout.arrow_schema(layout.PAIRS_SCHEMA))
    pq.write_table(table, folder / "part-00000.parquet")


def _tiny_lake(root: Path) -> layout.LakePaths:
    """Two taste groups; per user 8 train positives, 1 validation and 1 test positive."""
    rng = random.Random(0)
    paths = layout.LakePaths(root, "tiny", "2026-11-23")
    train, validation, test = [], [], []
    for user in range(N_USERS):
        liked = list(range(0, 15)) if user % 2 == 0 else list(range(15, 30))
        picks = rng.sample(liked, 10)
        untouched = [i for i in range(N_ITEMS) if i not in picks]
        train += [(user, item, 1) for item in picks[:8]]
        train += [(user, rng.choice(untouched), 0) for _ in range(8)]
        for split, positive in ((validation, picks[8]), (test, picks[9])):
            split.append((user, positive, 1))
            split += [(user, item, 0) for item in rng.sample(untouched, N_EVAL_NEG)]
    _write_pairs(paths.path(layout.TRAIN), train)
    _write_pairs(paths.path(layout.VALIDATION), validation)
    _write_pairs(paths.path(layout.TEST), test)
    layout.update_manifest(paths, "prepare", {"n_users": N_USERS, "n_items": N_ITEMS})
    return paths


def _config(tmp_path: Path, min_hr: float) -> Path:
    path = tmp_path / "tiny.yaml"
    path.write_text(yaml.safe_dump({
        "dataset": "tiny",
        "source": {"format": "movielens-100k", "path": "u.data", "sha256": "0" * 64},
        "model": {"kind": "neumf", "factors": 8, "mlp_layers": [16, 8]},
        "train": {"epochs": 4, "batch_size": 64, "lr": 0.01, "seed": 1},
        "evaluate": {"k": 5, "min_hr": min_hr},
        "recommend": {"k": 5, "chunk_users": 7},
    }))
    return path


@pytest.fixture
def mlflow_store(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    uri = f"sqlite:///{tmp_path / 'mlflow' / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    return uri


def _run(stage: str, config: Path, lake: Path, capsys: pytest.CaptureFixture[str]) -> str:
    assert cli.main([stage, "--config", str(config), "--logical-date", "2026-11-23",
                     "--lake-root", str(lake), "--device", "cpu"]) == 0
    return capsys.readouterr().out.strip().splitlines()[-1]


def test_train_evaluate_recommend_log_to_mlflow_and_write_the_lake(
        tmp_path: Path, mlflow_store: str, capsys: pytest.CaptureFixture[str]) -> None:
    from mlflow.tracking import MlflowClient

    paths = _tiny_lake(tmp_path / "lake")
    config = _config(tmp_path, min_hr=0.0)

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
    assert (paths.path(layout.MODEL) / "state_dict.pt").is_file()
    assert layout.read_manifest(paths)["train"]["run_id"] == run_id

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
    manifest = json.loads(paths.manifest.read_text())
    assert manifest["recommend"]["rows"] == rows
    assert manifest["evaluate"]["promoted"] is True


def test_evaluate_refuses_promotion_below_the_floor(
        tmp_path: Path, mlflow_store: str, capsys: pytest.CaptureFixture[str]) -> None:
    from mlflow.tracking import MlflowClient

    paths = _tiny_lake(tmp_path / "lake")
    config = _config(tmp_path, min_hr=1.0 - 1e-9)
    _run("train", config, paths.root, capsys)
    # A perfect HR is needed to pass; the tiny model does not reach it on every user.
    with pytest.raises(cli.PromotionRefused, match="not promoted"):
        _run("evaluate", config, paths.root, capsys)
    client = MlflowClient(tracking_uri=mlflow_store)
    version = client.get_model_version("ncf-tiny", "1")
    assert "below the floor" in version.tags["ncf.promotion"]
    assert layout.read_manifest(paths)["evaluate"]["promoted"] is False


def test_stage_out_of_order_names_the_missing_stage(tmp_path: Path, mlflow_store: str) -> None:
    config = _config(tmp_path, min_hr=0.0)
    with pytest.raises(cli.StageError, match="run the prepare task"):
        cli.main(["train", "--config", str(config), "--logical-date", "2026-11-23",
                  "--lake-root", str(tmp_path / "lake"), "--device", "cpu"])
