"""ncf_model.stages.baselines: popularity, MF and ALS scored like NCF, one MLflow run each."""

from __future__ import annotations

import json
import math
import random
import shutil
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
import yaml

from jobs.lake import layout
from ncf_model import cli, data, tracking
from ncf_model.data import FullRanking, Pairs
from ncf_model.evaluate import evaluate, evaluate_report
from ncf_model.models.baselines import FactorScorer, popularity_scorer

N_USERS, N_ITEMS, N_EVAL_NEG, K = 20, 24, 8, 5
DATE = "2026-11-23"
METRICS = {f"test_hr_{K}", f"test_ndcg_{K}", "test_auc", "test_n_users", "test_n_positives",
           f"test_full_hr_{K}", f"test_full_ndcg_{K}", f"test_full_recall_{K}"}


def _pairs(rows: list[tuple[int, int, int]]) -> Pairs:
    user, item, label = zip(*rows, strict=True)
    return Pairs(torch.tensor(user), torch.tensor(item), torch.tensor(label, dtype=torch.float32))


def test_popularity_hand_checked() -> None:
    # Training positives per item: item 0: 3, item 1: 2, item 2: 1, items 3 and 4: 0.
    train = _pairs([(0, 0, 1), (1, 0, 1), (2, 0, 1), (0, 1, 1), (1, 1, 1), (0, 2, 1),
                    (2, 3, 0)])  # a negative: not counted
    scorer = popularity_scorer(train, n_items=5)
    assert scorer.item_count.tolist() == [3.0, 2.0, 1.0, 0.0, 0.0]
    # user 2: positive item 1 (2) vs items 2 (1), 3 (0) -> rank 0
    # user 1: positive item 2 (1) vs items 0 (3), 3 (0) -> rank 1
    # user 0: positive item 3 (0) vs item 4 (0), a tie   -> rank 1
    test = _pairs([(2, 1, 1), (2, 2, 0), (2, 3, 0), (1, 2, 1), (1, 0, 0), (1, 3, 0),
                   (0, 3, 1), (0, 4, 0)])
    positive = train.label == 1
    full = FullRanking(5, train.user[positive], train.item[positive])
    metrics = evaluate(scorer, test, k=1, full=full)
    assert metrics["hr_1"] == pytest.approx(1 / 3)
    assert metrics["auc"] == pytest.approx((2 / 2 + 1 / 2 + 0 / 1) / 3)
    # Full ranking, training positives removed: user 2 ranks item 1 first of {1, 2, 3, 4},
    # user 1 item 2 first of {2, 3, 4}, user 0 item 3 behind item 4 (tied at 0).
    assert metrics["full_hr_1"] == pytest.approx(2 / 3)
    assert metrics["full_recall_1"] == pytest.approx(2 / 3)
    wide = evaluate(scorer, test, k=2, full=full)
    assert wide["ndcg_2"] == pytest.approx((1 + 2 / math.log2(3)) / 3)
    assert wide["full_ndcg_2"] == pytest.approx((1 + 1 + 1 / math.log2(3)) / 3)


def test_factor_scorer_is_a_dot_product_on_both_paths() -> None:
    g = torch.Generator().manual_seed(0)
    users, items = torch.randn(4, 3, generator=g), torch.randn(6, 3, generator=g)
    scorer = FactorScorer(users, items)
    pairs = torch.tensor([0, 3, 2]), torch.tensor([5, 0, 2])
    assert scorer(*pairs).tolist() == pytest.approx(
        [float(users[u] @ items[i]) for u, i in zip(*pairs, strict=True)], abs=1e-6)
    all_items = scorer.score_all_items(torch.tensor([1, 3]))
    assert all_items.shape == (2, 6)
    assert all_items[1].tolist() == pytest.approx((items @ users[3]).tolist(), abs=1e-6)
    with pytest.raises(ValueError, match="same rank"):
        FactorScorer(users, items[:, :2])


# --- the stage on a tiny lake -------------------------------------------------------------

def _write(folder: Path, schema: layout.Schema, columns: list[list]) -> None:
    folder.mkdir(parents=True)
    table = pa.Table.from_arrays([pa.array(c) for c in columns], schema=layout.arrow_schema(schema))
    pq.write_table(table, folder / "part-00000.parquet")


def _tiny_lake(root: Path) -> layout.LakePaths:
    """Two taste groups (even users like items 0..11, odd ones 12..23); per user 7 train
    positives, one validation and one test positive, N_EVAL_NEG sampled negatives each; and
    ALS factors that know the groups (as jobs/als.py would write them)."""
    paths = layout.LakePaths(root, "tiny", DATE)
    splits: dict[str, list[tuple[int, int, int]]] = {"train": [], "validation": [], "test": []}
    for user in range(N_USERS):
        rng = random.Random(user)
        liked = list(range(12)) if user % 2 == 0 else list(range(12, 24))
        picks = rng.sample(liked, 9)
        untouched = [i for i in range(N_ITEMS) if i not in picks]
        splits["train"] += [(user, i, 1) for i in picks[:7]]
        splits["train"] += [(user, rng.choice(untouched), 0) for _ in range(4)]
        for name, positive in (("validation", picks[7]), ("test", picks[8])):
            splits[name] += [(user, positive, 1)]
            splits[name] += [(user, i, 0) for i in rng.sample(untouched, N_EVAL_NEG)]
    for name, rows in splits.items():
        _write(paths.path(name), layout.PAIRS_SCHEMA, [list(c) for c in zip(*rows, strict=True)])
    _write(paths.path(layout.USERS), layout.USERS_SCHEMA,
           [[f"u{n}" for n in range(N_USERS)], list(range(N_USERS))])
    _write(paths.path(layout.ITEMS), layout.ITEMS_SCHEMA,
           [[f"i{n}" for n in range(N_ITEMS)], list(range(N_ITEMS))])
    layout.update_manifest(paths, "prepare", {"n_users": N_USERS, "n_items": N_ITEMS})
    # User 0 has no factors (as for a user without training positives): it scores 0.
    _write(paths.path(layout.ALS) / layout.USER_FACTORS, layout.USER_FACTORS_SCHEMA,
           [list(range(1, N_USERS)), [[1.0, 0.0] if u % 2 == 0 else [0.0, 1.0]
                                      for u in range(1, N_USERS)]])
    _write(paths.path(layout.ALS) / layout.ITEM_FACTORS, layout.ITEM_FACTORS_SCHEMA,
           [list(range(N_ITEMS)), [[1.0, 0.0] if i < 12 else [0.0, 1.0]
                                   for i in range(N_ITEMS)]])
    layout.update_manifest(paths, "als", {"params": {"rank": 2, "reg_param": 0.1, "alpha": 1.0,
                                                     "max_iter": 1, "seed": 0},
                                          "seconds": 12.5})
    return paths


def _config(tmp_path: Path, **baselines_section: object) -> Path:
    path = tmp_path / "tiny.yaml"
    path.write_text(yaml.safe_dump({
        "dataset": "tiny",
        "source": {"format": "movielens-100k", "path": "u.data", "sha256": "0" * 64},
        "model": {"kind": "gmf", "factors": 8},
        "train": {"epochs": 2, "batch_size": 64, "lr": 0.01, "seed": 1, "k": K},
        "evaluate": {"k": K, "chunk_users": 7},
        "baselines": {"mf": {"factors": 8, "epochs": 3, "batch_size": 64, "lr": 0.01,
                             "n_negatives": 4}, **baselines_section},
    }))
    return path




def _main(stage: str, config: Path, paths: layout.LakePaths) -> int:
    return cli.main([stage, "--config", str(config), "--logical-date", DATE, "--lake-root",
                     str(paths.root), "--device", "cpu"])


def test_baselines_stage_logs_a_run_per_baseline_beside_ncf(
        tmp_path: Path, mlflow_store: str, capsys: pytest.CaptureFixture[str]) -> None:
    from mlflow.tracking import MlflowClient

    torch.set_num_threads(1)
    paths = _tiny_lake(tmp_path / "lake")
    config = _config(tmp_path)
    assert _main("baselines", config, paths) == 0
    printed = capsys.readouterr().out.strip().splitlines()[-1]
    run_ids = dict(part.split("=") for part in printed.split(","))
    assert list(run_ids) == ["popularity", "mf", "als"]

    client = MlflowClient(tracking_uri=mlflow_store)
    for name, run_id in run_ids.items():
        run = client.get_run(run_id)
        assert run.data.tags["ncf.baseline"] == name
        assert run.data.tags["ncf.logical_date"] == DATE
        assert set(run.data.metrics) >= METRICS, name
        artifacts = {a.path for a in client.list_artifacts(run_id)}
        assert {tracking.HR_AT_K_PLOT, tracking.HR_AT_K_DATA} <= artifacts
    assert set(tracking.find_runs("tiny", {"ncf.logical_date": DATE})) == set(run_ids.values())
    mf_run = client.get_run(run_ids["mf"])
    assert mf_run.data.params["mf.factors"] == "8"
    assert len(client.get_metric_history(run_ids["mf"], f"val_hr_{K}")) >= 1
    assert tracking.TRAINING_CURVES_PLOT in {a.path for a in client.list_artifacts(run_ids["mf"])}
    assert client.get_run(run_ids["als"]).data.params["als.rank"] == "2"
    assert client.get_run(run_ids["als"]).data.metrics["als_job_seconds"] == 12.5

    entry = layout.read_manifest(paths)["baselines"]
    assert {name: entry[name]["run_id"] for name in run_ids} == run_ids
    metrics = {name: entry[name]["metrics"] for name in run_ids}
    assert all(set(m) == METRICS for m in metrics.values())
    # The planted ALS factors know each user's group: every test positive (in the group)
    # beats the negatives of the other group; user 0 (no factors) ties everything: a miss.
    assert metrics["als"][f"test_full_hr_{K}"] > 0.3
    assert metrics["als"]["test_auc"] > metrics["popularity"]["test_auc"]
    # MF learns the groups in 3 epochs (seen: 0.95); popularity cannot (seen: 0.50).
    assert metrics["mf"][f"test_hr_{K}"] > 0.8 > metrics["popularity"][f"test_hr_{K}"] + 0.2
    assert 1 <= entry["mf"]["best_epoch"] <= 3
    assert entry["als"]["als_job_seconds"] == 12.5

    # NCF's own run (train + evaluate) carries the same metric names and the two plots.
    assert _main("train", config, paths) == 0
    assert _main("evaluate", config, paths) == 0
    ncf_run = layout.read_manifest(paths)["train"]["run_id"]
    assert set(client.get_run(ncf_run).data.metrics) >= METRICS
    artifacts = {a.path for a in client.list_artifacts(ncf_run)}
    assert {tracking.HR_AT_K_PLOT, tracking.TRAINING_CURVES_PLOT} <= artifacts
    evaluated = layout.read_manifest(paths)["evaluate"]
    assert len(evaluated["hr_at_k"]) == 50 and evaluated["hr_at_k"][-1] == 1.0
    assert evaluated["hr_at_k"][K - 1] == pytest.approx(evaluated["metrics"][f"test_hr_{K}"])


def test_only_the_enabled_baselines_run_and_als_needs_its_factors(
        tmp_path: Path, mlflow_store: str) -> None:
    paths = _tiny_lake(tmp_path / "lake")
    assert _main("baselines", _config(tmp_path, enabled=["popularity"]), paths) == 0
    entry = layout.read_manifest(paths)["baselines"]
    assert "popularity" in entry and "mf" not in entry and "als" not in entry
    assert entry["params"]["enabled"] == ["popularity"]
    popularity = json.loads(paths.manifest.read_text())["baselines"]["popularity"]["metrics"]
    # Popularity does not know the groups: about chance among 1 + 8 candidates (5/9 = 0.56).
    assert 0.2 < popularity[f"test_hr_{K}"] < 0.9

    stale = {**layout.read_manifest(paths)["als"], "input_sha256": "0" * 64}
    layout.update_manifest(paths, "als", stale)
    with pytest.raises(data.BaselineError, match="another train/"):
        _main("baselines", _config(tmp_path, enabled=["als"]), paths)
    shutil.rmtree(paths.path(layout.ALS))
    runs_before = len(tracking.find_runs("tiny", {"ncf.logical_date": DATE}))
    with pytest.raises(data.BaselineError, match="run jobs/als.py"):
        _main("baselines", _config(tmp_path), paths)
    # Checked first: neither popularity nor MF ran (nor logged a run) before the failure.
    assert len(tracking.find_runs("tiny", {"ncf.logical_date": DATE})) == runs_before


def test_a_retried_baselines_task_logs_to_the_runs_of_its_first_attempt(
        tmp_path: Path, mlflow_store: str, capsys: pytest.CaptureFixture[str]) -> None:
    from mlflow.tracking import MlflowClient

    torch.set_num_threads(1)
    paths = _tiny_lake(tmp_path / "lake")
    config = _config(tmp_path)

    def run_stage() -> dict[str, str]:
        assert _main("baselines", config, paths) == 0
        printed = capsys.readouterr().out.strip().splitlines()[-1]
        return dict(part.split("=") for part in printed.split(","))

    first = run_stage()
    retried = run_stage()  # the Airflow retry: the same lake run, the same config
    assert retried == first
    assert sorted(tracking.find_runs("tiny", {"ncf.logical_date": DATE})) == sorted(
        first.values())
    client = MlflowClient(tracking_uri=mlflow_store)
    for name, run_id in first.items():
        assert tracking.find_runs("tiny", {"ncf.baseline": name}) == [run_id]
        run = client.get_run(run_id)
        assert run.info.status == "FINISHED" and set(run.data.metrics) >= METRICS

    # Another prepare run of the same date is another lake run: new runs beside the old.
    layout.update_manifest(paths, "prepare", {"n_users": N_USERS, "n_items": N_ITEMS,
                                              "input_sha256": "1" * 64})
    rerun = run_stage()
    assert not set(rerun.values()) & set(first.values())
    assert len(tracking.find_runs("tiny", {"ncf.logical_date": DATE})) == 2 * len(first)
    # So is another baseline configuration: MF with other factors gets a run of its own.
    other = yaml.safe_load(config.read_text())
    other["baselines"]["mf"]["factors"] = 4
    config.write_text(yaml.safe_dump(other))
    changed = run_stage()
    assert changed["mf"] != rerun["mf"]
    assert {name: changed[name] for name in ("popularity", "als")} == {
        name: rerun[name] for name in ("popularity", "als")}


def test_evaluate_report_with_a_popularity_scorer_gives_the_hr_curve() -> None:
    train = _pairs([(0, 0, 1), (0, 1, 1), (1, 0, 1)])
    test = _pairs([(0, 2, 1), (0, 3, 0), (1, 1, 1), (1, 2, 0)])
    report = evaluate_report(popularity_scorer(train, 4), test, k=1, curve_max_k=3)
    # user 0: item 2 (0) vs item 3 (0): tie -> rank 1; user 1: item 1 (1) vs 2 (0) -> rank 0.
    assert report.hr_at_k == [0.5, 1.0, 1.0]
