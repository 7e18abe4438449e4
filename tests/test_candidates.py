"""The candidates protocol (ncf_model.families, ncf_model.stages.candidates and the gate of
ncf_model.stages.evaluate): every family fitted on train and chosen on validation, test
reported after a refit on train + validation, the winner refitted on every positive."""

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
from jobs.lake.config import CandidatesConfig
from jobs.lake.protocol import MLFLOW_COMPARISON_VIEW
from ncf_model import checkpoint, cli, data, tracking
from ncf_model.data import FullRanking, Pairs
from ncf_model.evaluate import evaluate, evaluate_report
from ncf_model.families import Popularity, Selected
from ncf_model.models.baselines import FactorScorer, popularity_scorer
from ncf_model.models.ease import EASE
from ncf_model.stages import candidates as stage

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


def _tiny_lake(root: Path, date: str = DATE, extra_train: int = 0) -> layout.LakePaths:
    """Two taste groups (even users like items 0..11, odd ones 12..23); per user 7 train
    positives (+ `extra_train`: a log that grew), one validation and one test positive,
    N_EVAL_NEG sampled negatives each; and ALS factors that know the groups (as jobs/als.py
    would write them, for each step of the protocol)."""
    paths = layout.LakePaths(root, "tiny", date)
    splits: dict[str, list[tuple[int, int, int]]] = {"train": [], "validation": [], "test": []}
    for user in range(N_USERS):
        rng = random.Random(user)
        liked = list(range(12)) if user % 2 == 0 else list(range(12, 24))
        picks = rng.sample(liked, 9)
        untouched = [i for i in range(N_ITEMS) if i not in picks]
        grown = untouched[:extra_train]
        splits["train"] += [(user, i, 1) for i in picks[:7] + grown]
        for name, positive in (("validation", picks[7]), ("test", picks[8])):
            splits[name] += [(user, positive, 1)]
            splits[name] += [(user, i, 0) for i in rng.sample(untouched[extra_train:],
                                                              N_EVAL_NEG)]
    for name, rows in splits.items():
        _write(paths.path(name), layout.PAIRS_SCHEMA, [list(c) for c in zip(*rows, strict=True)])
    _write(paths.path(layout.USERS), layout.USERS_SCHEMA,
           [[f"u{n}" for n in range(N_USERS)], list(range(N_USERS))])
    _write(paths.path(layout.ITEMS), layout.ITEMS_SCHEMA,
           [[f"i{n}" for n in range(N_ITEMS)], list(range(N_ITEMS))])
    layout.update_manifest(paths, "prepare", {"n_users": N_USERS, "n_items": N_ITEMS})
    for splits_fitted in (("train",), ("train", "validation"), ("train", "validation", "test")):
        folder = paths.path(layout.als_folder(splits_fitted))
        # User 0 has no factors (as for a user without training positives): it scores 0.
        _write(folder / layout.USER_FACTORS, layout.USER_FACTORS_SCHEMA,
               [list(range(1, N_USERS)), [[1.0, 0.0] if u % 2 == 0 else [0.0, 1.0]
                                          for u in range(1, N_USERS)]])
        _write(folder / layout.ITEM_FACTORS, layout.ITEM_FACTORS_SCHEMA,
               [list(range(N_ITEMS)), [[1.0, 0.0] if i < 12 else [0.0, 1.0]
                                       for i in range(N_ITEMS)]])
    layout.update_manifest(paths, "als", {"params": {"rank": 2, "reg_param": 0.1, "alpha": 1.0,
                                                     "max_iter": 1, "seed": 0},
                                          "seconds": 12.5})
    return paths


def _config(tmp_path: Path, families: tuple[str, ...] = ("ncf", "mf", "als", "ease",
                                                          "popularity"),
            name: str = "tiny", **sections: object) -> Path:
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump({
        "dataset": "tiny",
        "source": {"format": "movielens-100k", "path": "u.data", "sha256": "0" * 64},
        "model": {"kind": "gmf", "factors": 8},
        "train": {"epochs": 2, "batch_size": 64, "lr": 0.01, "seed": 1, "k": K},
        "evaluate": {"k": K, "chunk_users": 7, "min_score": 0.0, "tolerance": 0.0},
        "candidates": {"families": list(families), "select_metric": f"ndcg_{K}"},
        "mf": {"factors": 8, "epochs": 3, "batch_size": 64, "lr": 0.01, "n_negatives": 4},
        "ease": {"l2_grid": [1.0, 10.0, 100.0]},
        **sections,
    }))
    return path


def _main(stage: str, config: Path, paths: layout.LakePaths, date: str = DATE) -> int:
    return cli.main([stage, "--config", str(config), "--logical-date", date, "--lake-root",
                     str(paths.root), "--device", "cpu"])


def test_every_family_is_scored_alike_and_the_best_on_validation_is_served(
        tmp_path: Path, mlflow_store: str, capsys: pytest.CaptureFixture[str]) -> None:
    from mlflow.tracking import MlflowClient

    torch.set_num_threads(1)
    paths = _tiny_lake(tmp_path / "lake")
    config = _config(tmp_path)
    assert _main("train", config, paths) == 0
    assert _main("candidates", config, paths) == 0
    served = capsys.readouterr().out.strip().splitlines()[-1]
    entry = layout.read_manifest(paths)["candidates"]
    families = entry["families"]
    order = ["ncf", "mf", "als", "ease", "popularity"]  # the config's (the manifest sorts)
    assert sorted(families) == sorted(order)
    key = f"val_ndcg_{K}"
    for name, record in families.items():
        assert record["skipped"] is None, name
        assert set(record["test"]) == METRICS, name
        assert {f"val_hr_{K}", key, f"val_full_ndcg_{K}"} <= set(record["validation"]), name
        assert record["recipe"]["family"] == name
    # The served family is the best on validation, earlier families winning ties.
    best = max(order, key=lambda n: (families[n]["validation"][key], -order.index(n)))
    assert served == entry["served_family"] == best
    assert 0.0 <= entry["val_unseen_item_share"] <= 1.0
    assert 0.0 <= entry["test_unseen_item_share"] <= 1.0
    # The groups are easy: every family but popularity is far above chance (about 0.17).
    for name in ("mf", "als", "ease"):
        assert families[name]["validation"][key] > 0.5, name
    assert families["ease"]["settings"]["l2"] in (1.0, 10.0, 100.0)
    # served/: the winner refitted on every positive, with its id vocabulary.
    model, meta = checkpoint.load_model(paths.path(layout.SERVED))
    assert meta["family"] == best and meta["trained_on"] == ["train", "validation", "test"]
    # MLflow: a child run per family under the DAG run's parent, the comparison on it.
    client = MlflowClient(tracking_uri=mlflow_store)
    parent = client.get_run(entry["parent_run_id"])
    assert parent.data.tags["ncf.served_family"] == best
    artifacts = {a.path for a in client.list_artifacts(parent.info.run_id)}
    assert {tracking.CANDIDATES_TABLE, tracking.CANDIDATES_PLOT} <= artifacts
    for name, record in families.items():
        child = client.get_run(record["run_id"])
        assert child.data.tags["mlflow.parentRunId"] == parent.info.run_id, name
        assert child.data.metrics[f"test_hr_{K}"] == pytest.approx(record["test"][f"test_hr_{K}"])
        # ... and on the parent, one metric per family: a DAG run is one row to compare.
        assert parent.data.metrics[f"test_hr_{K}/{name}"] == pytest.approx(
            record["test"][f"test_hr_{K}"]), name
    experiment = client.get_experiment(parent.info.experiment_id)
    assert experiment.tags[tracking.EXPERIMENT_KIND_TAG] == tracking.EXPERIMENT_KIND
    # The saved comparison the UI opens: parent runs, each family's test HR@10 a column.
    view = json.loads(experiment.tags[tracking.SHARED_VIEW_TAG + MLFLOW_COMPARISON_VIEW])
    assert view["searchFilter"] == f"tags.`ncf.role` = '{tracking.PARENT_ROLE}'"
    assert {f"metrics.`test_hr_{K}/{name}`" for name in families} <= set(view["selectedColumns"])
    # A retried task logs to the runs of its first attempt.
    assert _main("candidates", config, paths) == 0
    again = layout.read_manifest(paths)["candidates"]["families"]
    assert {n: r["run_id"] for n, r in again.items()} == {
        n: r["run_id"] for n, r in families.items()}


def _sequential_lake(root: Path) -> layout.LakePaths:
    """Each user walks the items in order from its own start: 6 training steps, then the
    next item is validation and the one after test. Only order tells what comes next."""
    paths = layout.LakePaths(root, "tiny", DATE)
    splits: dict[str, list[tuple[int, int, int]]] = {"train": [], "validation": [], "test": []}
    sequences = []
    for user in range(N_USERS):
        rng = random.Random(user)
        walk = [(user * 5 + step) % N_ITEMS for step in range(8)]
        splits["train"] += [(user, item, 1) for item in walk[:6]]
        sequences.append(walk[:6])
        untouched = [i for i in range(N_ITEMS) if i not in walk]
        for name, positive in (("validation", walk[6]), ("test", walk[7])):
            splits[name] += [(user, positive, 1)]
            splits[name] += [(user, i, 0) for i in rng.sample(untouched, N_EVAL_NEG)]
    for name, rows in splits.items():
        _write(paths.path(name), layout.PAIRS_SCHEMA, [list(c) for c in zip(*rows, strict=True)])
    _write(paths.path(layout.SEQUENCES), layout.SEQUENCES_SCHEMA,
           [list(range(N_USERS)), sequences])
    _write(paths.path(layout.USERS), layout.USERS_SCHEMA,
           [[f"u{n}" for n in range(N_USERS)], list(range(N_USERS))])
    _write(paths.path(layout.ITEMS), layout.ITEMS_SCHEMA,
           [[f"i{n}" for n in range(N_ITEMS)], list(range(N_ITEMS))])
    layout.update_manifest(paths, "prepare", {"n_users": N_USERS, "n_items": N_ITEMS})
    return paths


def test_sasrec_reads_the_order_and_its_served_history_ends_with_the_held_out_items(
        tmp_path: Path, mlflow_store: str) -> None:
    torch.set_num_threads(1)
    paths = _sequential_lake(tmp_path / "lake")
    sasrec = {"max_len": 8, "hidden": 16, "n_blocks": 1, "dropout": 0.1, "epochs": 30,
              "batch_size": 8, "lr": 0.01, "patience": 30, "seed": 3}
    config = _config(tmp_path, families=("sasrec", "popularity"), sasrec=sasrec)
    assert _main("train", config, paths) == 0
    assert _main("candidates", config, paths) == 0
    entry = layout.read_manifest(paths)["candidates"]
    families = entry["families"]
    # Popularity cannot tell what comes next; the walk's next step is all SASRec needs.
    assert families["sasrec"]["validation"][f"val_hr_{K}"] > 0.9
    assert families["popularity"]["validation"][f"val_hr_{K}"] < 0.8
    assert entry["served_family"] == "sasrec"
    assert families["sasrec"]["settings"]["epochs"] >= 1
    model, meta = checkpoint.load_model(paths.path(layout.SERVED))
    assert meta["family"] == "sasrec" and meta["sasrec"]["max_len"] == 8
    for user in range(N_USERS):
        walk = [(user * 5 + step) % N_ITEMS for step in range(8)]
        # (c): the whole walk, validation and test appended in time order (tokens = item + 1).
        assert model.histories[user].tolist() == [item + 1 for item in walk]


def _outcome(name: str, val: float, test: float) -> stage.Outcome:
    return stage.Outcome(Popularity(name=name), Selected(torch.nn.Identity(), {}),
                         {"val_ndcg_10": val}, {"test_ndcg_10": test})


def test_unseen_item_shares_bound_what_an_id_only_family_can_hit() -> None:
    # Items 0-2 in train; validation adds item 3 (unseen by train), test holds item 3 (seen
    # once validation is refitted in) and item 4 (never seen): 1/2 unseen, then 1/2.
    positives = {"train": _pairs([(0, 0, 1), (1, 1, 1), (2, 2, 1)]),
                 "validation": _pairs([(0, 3, 1), (1, 1, 1)]),
                 "test": _pairs([(0, 4, 1), (2, 3, 1)])}
    data = stage.ProtocolData(positives=positives, validation=positives["validation"],
                              test=positives["test"], n_users=3, n_items=5, k=K,
                              device=torch.device("cpu"))
    assert stage.unseen_item_shares(data, refit=True) == {
        "val_unseen_item_share": 0.5, "test_unseen_item_share": 0.5}
    # Without the refit, test's metrics come from the fit on train: both test items unseen.
    assert stage.unseen_item_shares(data, refit=False)["test_unseen_item_share"] == 1.0


def test_selection_never_reads_test_metrics() -> None:
    outcomes = [_outcome("a", 0.30, 0.90), _outcome("b", 0.40, 0.10), _outcome("c", 0.40, 0.95)]
    cfg = CandidatesConfig(families=("ncf",), select_metric="ndcg_10")
    assert stage.choose(outcomes, cfg).family.name == "b"  # best validation, earlier on ties
    for outcome in outcomes:  # test metrics gone or absurd: the same choice
        outcome.test = {"test_ndcg_10": float("nan")}
    assert stage.choose(outcomes, cfg).family.name == "b"
    skipped = _outcome("d", 0.99, 0.99)
    skipped.skipped = "over the memory limit"
    assert stage.choose([*outcomes, skipped], cfg).family.name == "b"
    with pytest.raises(cli.StageError, match="no candidate"):
        stage.choose([skipped], cfg)


def test_the_served_refit_has_seen_validation_and_test(
        tmp_path: Path, mlflow_store: str) -> None:
    """(c): the served model is fitted on every positive, validation and test included;
    (b)'s test metrics come from a fit on train + validation."""
    torch.set_num_threads(1)
    paths = _tiny_lake(tmp_path / "lake")
    config = _config(tmp_path, families=("ncf", "ease"))
    assert _main("train", config, paths) == 0
    config = _config(tmp_path, families=("ease",))
    assert _main("candidates", config, paths) == 0
    model, meta = checkpoint.load_model(paths.path(layout.SERVED))
    assert isinstance(model, EASE) and meta["family"] == "ease"
    positives = data.load_positives(paths)
    offsets = model.history_offsets.tolist()
    for user in range(N_USERS):
        history = set(model.history_items[offsets[user]:offsets[user + 1]].tolist())
        for split in ("train", "validation", "test"):
            mine = positives[split].item[positives[split].user == user].tolist()
            assert set(mine) <= history, (user, split)
    # Popularity served: the counts of all three splits.
    config = _config(tmp_path, families=("popularity",))
    assert _main("candidates", config, paths) == 0
    model, _ = checkpoint.load_model(paths.path(layout.SERVED))
    counts = torch.zeros(N_ITEMS)
    for pairs in positives.values():
        counts += torch.bincount(pairs.item.long(), minlength=N_ITEMS).float()
    assert model.item_count.tolist() == counts.tolist()


def test_ease_over_its_memory_limit_is_skipped_with_the_reason(
        tmp_path: Path, mlflow_store: str) -> None:
    torch.set_num_threads(1)
    paths = _tiny_lake(tmp_path / "lake")
    config = _config(tmp_path, families=("ncf", "ease", "popularity"),
                     ease={"max_memory_gb": 1e-9})
    assert _main("train", config, paths) == 0
    assert _main("candidates", config, paths) == 0
    families = layout.read_manifest(paths)["candidates"]["families"]
    assert "ease.max_memory_gb" in families["ease"]["skipped"]
    assert families["ease"]["validation"] == {} and families["ncf"]["skipped"] is None
    assert layout.read_manifest(paths)["candidates"]["served_family"] in ("ncf", "popularity")


def test_als_needs_its_factors(tmp_path: Path, mlflow_store: str) -> None:
    torch.set_num_threads(1)
    paths = _tiny_lake(tmp_path / "lake")
    config = _config(tmp_path, families=("ncf", "als"))
    assert _main("train", config, paths) == 0
    shutil.rmtree(paths.path(layout.ALS))
    with pytest.raises(data.BaselineError, match="run jobs/als.py"):
        _main("candidates", config, paths)


@pytest.mark.parametrize("grown", [0, 3], ids=["static-data", "growing-log"])
def test_the_gate_never_scores_a_model_on_its_training_events(
        tmp_path: Path, mlflow_store: str, monkeypatch: pytest.MonkeyPatch,
        grown: int) -> None:
    """Day 1 serves EASE^R refitted on every positive. Day 2 holds the same events (static)
    or more (a growing log); its own EASE^R has another lambda grid, so the gate refits the
    champion's recipe: what it scores on day 2's validation was fitted on day 2's train
    only, and the champion's own weights (which saw day 2's validation and test events on
    static data) are never loaded."""
    from ncf_model.stages import evaluate as evaluate_stage

    torch.set_num_threads(1)
    lake = tmp_path / "lake"
    day1 = _tiny_lake(lake)
    config = _config(tmp_path, families=("ncf", "ease"))
    for name in ("train", "candidates", "evaluate"):
        assert _main(name, config, day1) == 0
    assert layout.read_manifest(day1)["candidates"]["served_family"] == "ease"

    day2 = _tiny_lake(lake, "2026-11-24", extra_train=grown)
    other = _config(tmp_path, families=("ncf", "ease"), name="other",
                    ease={"l2_grid": [1000.0]})
    scored: list[torch.nn.Module] = []
    real_evaluate = evaluate_stage.evaluate

    def spy(model: torch.nn.Module, pairs: Pairs, k: int, **kw: object) -> dict[str, float]:
        scored.append(model)
        return real_evaluate(model, pairs, k, **kw)  # type: ignore[arg-type]

    def no_champion_weights(*args: object, **kw: object) -> None:
        raise AssertionError("the gate loaded the champion's own weights")

    for name in ("train", "candidates"):
        assert _main(name, other, day2, "2026-11-24") == 0
    monkeypatch.setattr(evaluate_stage, "evaluate", spy)
    monkeypatch.setattr(tracking, "download_artifacts", no_champion_weights)
    monkeypatch.setattr(checkpoint, "load_model", no_champion_weights)
    _main("evaluate", other, day2, "2026-11-24")
    gate = layout.read_manifest(day2)["evaluate"]["gate"]
    assert gate["champion_source"] == "the champion's recipe (ease) refitted on today's train"
    assert len(scored) == 1 and isinstance(scored[0], EASE)
    positives = data.load_positives(day2)
    held_out = {(int(u), int(i)) for split in ("validation", "test")
                for u, i in zip(positives[split].user, positives[split].item, strict=True)}
    offsets = scored[0].history_offsets.tolist()
    history = {(user, int(item)) for user in range(N_USERS)
               for item in scored[0].history_items[offsets[user]:offsets[user + 1]]}
    assert not history & held_out  # fitted on day 2's train alone
    train = positives["train"]
    assert history == {(int(u), int(i)) for u, i in zip(train.user, train.item, strict=True)}


def test_evaluate_report_with_a_popularity_scorer_gives_the_hr_curve() -> None:
    train = _pairs([(0, 0, 1), (0, 1, 1), (1, 0, 1)])
    test = _pairs([(0, 2, 1), (0, 3, 0), (1, 1, 1), (1, 2, 0)])
    report = evaluate_report(popularity_scorer(train, 4), test, k=1, curve_max_k=3)
    # user 0: item 2 (0) vs item 3 (0): tie -> rank 1; user 1: item 1 (1) vs 2 (0) -> rank 0.
    assert report.hr_at_k == [0.5, 1.0, 1.0]
