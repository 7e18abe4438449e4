"""ncf_model.tune: seeded Optuna studies over the candidate families, scored on validation
only, logged to MLflow as one parent run with a child run per trial."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import optuna
import pytest
import torch
import yaml

from jobs.lake import layout
from ncf_model import tune as tuning
from ncf_model.config import EaseConfig, MFConfig, load_ncf_config
from ncf_model.evaluate import evaluate
from ncf_model.families import Ease, ProtocolData, mf_family
from ncf_model.stages import candidates as stage

# The candidates tests' lake (two taste groups): the same data the protocol is tested on.
from tests.test_candidates import DATE, N_EVAL_NEG, N_ITEMS, N_USERS, K, _tiny_lake

METRIC = f"ndcg_{K}"


def _config(tmp_path: Path) -> Path:
    path = tmp_path / "tiny.yaml"
    path.write_text(yaml.safe_dump({
        "dataset": "tiny",
        "source": {"format": "movielens-100k", "path": "u.data", "sha256": "0" * 64},
        "model": {"kind": "neumf", "factors": 8, "mlp_layers": [16, 8]},
        "train": {"epochs": 2, "batch_size": 64, "lr": 0.01, "seed": 1, "k": K},
        "evaluate": {"k": K, "chunk_users": 7},
        "candidates": {"families": ["mf", "ease", "popularity"], "select_metric": METRIC},
        "mf": {"factors": 8, "epochs": 3, "batch_size": 64, "lr": 0.01, "n_negatives": 4,
               "seed": 3},
        "ease": {"l2_grid": [1.0, 10.0]},
    }))
    return path


class _Untouchable:
    """Stands in for the test pairs: any read of it fails the test."""

    def __getattr__(self, name: str) -> Any:
        raise AssertionError(f"tuning read test ({name})")


def _poisoned(data: ProtocolData) -> ProtocolData:
    poison: Any = _Untouchable()
    return dataclasses.replace(data, test=poison, positives={**data.positives, "test": poison})


def test_studies_pick_settings_on_validation_and_log_a_run_per_trial(
        tmp_path: Path, mlflow_store: str) -> None:
    from mlflow.tracking import MlflowClient

    torch.set_num_threads(1)
    paths = _tiny_lake(tmp_path / "lake")
    cfg = load_ncf_config(_config(tmp_path))
    clean = stage.protocol_data(cfg, paths, torch.device("cpu"),
                                {"n_users": N_USERS, "n_items": N_ITEMS})
    result = tuning.tune(cfg, _poisoned(clean), logical_date=DATE, families=["mf", "ease"],
                         trials=3, seed=0)

    assert result["metric"] == METRIC
    mf, ease = result["families"]["mf"], result["families"]["ease"]
    for entry in (mf, ease):
        assert entry["skipped"] is None and entry["trials"] == 3
        assert entry["complete"] + entry["pruned"] == 3
        assert 0.0 <= entry["best_value"] <= 1.0
    assert set(mf["best_params"]) == {"factors", "lr", "weight_decay", "n_negatives",
                                      "batch_size"}
    assert 1.0 <= ease["best_params"]["l2"] <= 5000.0
    assert "half_life" not in ease["best_params"]  # no sequences/: no recency to sample
    # The settings are the whole sections, sampled keys replaced, the rest as configured.
    assert mf["sections"]["mf"]["factors"] == mf["best_params"]["factors"]
    assert mf["sections"]["mf"]["epochs"] == 3 and mf["sections"]["mf"]["seed"] == 3
    assert ease["sections"]["ease"]["l2_grid"] == [ease["best_params"]["l2"]]

    # The objective is the validation metric of the family's (a) fit, recomputed apart (and
    # the same again on the CPU: torch is seeded from the section's seed).
    best_mf = mf_family(MFConfig(**mf["sections"]["mf"]), K).select(clean)
    assert evaluate(best_mf.scorer, clean.validation, K)[METRIC] == pytest.approx(
        mf["best_value"], abs=1e-6)
    best_ease = Ease(EaseConfig(l2_grid=(ease["best_params"]["l2"],)), METRIC).select(clean)
    assert evaluate(best_ease.scorer, clean.validation, K)[METRIC] == pytest.approx(
        ease["best_value"], abs=1e-6)

    # MLflow: the parent, and one child per trial under it with the objective.
    client = MlflowClient(tracking_uri=mlflow_store)
    parent = client.get_run(result["parent_run_id"])
    assert parent.data.tags["ncf.stage"] == "tune"
    assert parent.info.run_name == f"tiny-{DATE}-tune"
    assert parent.data.metrics[f"mf_best_val_{METRIC}"] == pytest.approx(mf["best_value"])
    children = client.search_runs([parent.info.experiment_id],
                                  f"tags.`mlflow.parentRunId` = '{parent.info.run_id}'")
    assert len(children) == 6
    assert {c.info.run_id for c in children} == set(mf["runs"]) | set(ease["runs"])
    for child in children:
        assert child.info.status == "FINISHED"
        state = child.data.tags["ncf.trial_state"]
        assert state in ("complete", "pruned")
        assert (f"val_{METRIC}" in child.data.metrics) == (state == "complete")
    best_run = client.get_run(ease["best_run"])
    assert best_run.data.metrics[f"val_{METRIC}"] == pytest.approx(ease["best_value"])
    assert float(best_run.data.params["l2"]) == pytest.approx(ease["best_params"]["l2"])

    # The printed block loads as YAML and sets the tuned keys.
    loaded = yaml.safe_load(tuning.format_yaml(result))
    assert loaded["mf"] == mf["sections"]["mf"]
    assert loaded["ease"]["l2_grid"] == [ease["best_params"]["l2"]]
    assert f"best validation {METRIC} {mf['best_value']:.4f}" in tuning.format_yaml(result)


def test_cli_is_deterministic_and_needs_the_lake_date(
        tmp_path: Path, mlflow_store: str, capsys: pytest.CaptureFixture[str]) -> None:
    paths = _tiny_lake(tmp_path / "lake")
    config = _config(tmp_path)
    def argv(date: str = DATE, *extra: str) -> list[str]:
        return ["--config", str(config), "--logical-date", date, "--lake-root",
                str(paths.root), "--trials", "4", "--families", "ease", "--device", "cpu",
                *extra]

    assert tuning.main(argv()) == 0
    first = capsys.readouterr().out
    assert tuning.main(argv(DATE, "--seed", "0")) == 0
    second = capsys.readouterr().out
    assert yaml.safe_load(first) == yaml.safe_load(second)
    assert "# ease: 4 complete, 0 pruned of 4 trials" in first
    assert len(yaml.safe_load(first)["ease"]["l2_grid"]) == 1
    # Another seed samples other lambdas.
    assert tuning.main(argv(DATE, "--seed", "1")) == 0
    assert yaml.safe_load(capsys.readouterr().out) != yaml.safe_load(first)
    # A date the lake does not hold: exit 2, nothing tuned.
    assert tuning.main(argv("2026-01-01")) == 2
    with pytest.raises(ValueError, match="cannot be tuned"):
        tuning.tune(load_ncf_config(config), tuning.load_data(
            load_ncf_config(config), paths, torch.device("cpu")), logical_date=DATE,
            families=["popularity"], trials=1)


def test_load_data_drops_test(tmp_path: Path) -> None:
    paths = _tiny_lake(tmp_path / "lake")
    data = tuning.load_data(load_ncf_config(_config(tmp_path)), paths, torch.device("cpu"))
    assert len(data.test) == 0 and "test" not in data.positives
    assert len(data.validation) == N_USERS * (1 + N_EVAL_NEG)


def _study_with_a_good_trial() -> optuna.Study:
    study = optuna.create_study(direction="maximize",
                                pruner=optuna.pruners.MedianPruner(n_startup_trials=1,
                                                                   n_warmup_steps=0))
    good = study.ask()
    for epoch, value in enumerate((0.5, 0.7, 0.8), start=1):
        good.report(value, epoch)
    study.tell(good, 0.8)
    return study


def test_a_bad_trial_is_pruned_on_its_validation_epochs() -> None:
    study = _study_with_a_good_trial()
    trial = study.ask()
    on_epoch = tuning.pruning_callback(trial, METRIC)
    on_epoch(1, {"loss": 0.3, f"val_hr_{K}": 0.9, f"val_{METRIC}": 0.6})  # above the median
    # Pre-training phases are not the objective's curve: not reported, never pruned.
    on_epoch(2, {f"pretrain_gmf_val_{METRIC}": 0.0})
    assert trial.storage.get_trial(trial._trial_id).intermediate_values == {1: 0.6}
    with pytest.raises(optuna.TrialPruned, match="epoch 2"):
        on_epoch(2, {f"val_{METRIC}": 0.1})
    # A full-ranking objective is followed by its sampled counterpart each epoch.
    trial = study.ask()
    with pytest.raises(optuna.TrialPruned):
        tuning.pruning_callback(trial, f"full_{METRIC}")(1, {f"val_{METRIC}": 0.05})


def test_a_pruned_trial_is_recorded_as_such(tmp_path: Path, mlflow_store: str,
                                            monkeypatch: pytest.MonkeyPatch) -> None:
    from mlflow.tracking import MlflowClient

    paths = _tiny_lake(tmp_path / "lake")
    cfg = load_ncf_config(_config(tmp_path))
    data = tuning.load_data(cfg, paths, torch.device("cpu"))
    real = tuning.validation_score
    calls: list[int] = []

    def second_is_bad(family: Any, data: ProtocolData, metric: str) -> float:
        calls.append(1)
        if len(calls) == 2:
            raise optuna.TrialPruned("epoch 1: deliberately bad")
        return real(family, data, metric)

    monkeypatch.setattr(tuning, "validation_score", second_is_bad)
    result = tuning.tune(cfg, data, logical_date=DATE, families=["ease"], trials=3)
    ease = result["families"]["ease"]
    assert (ease["complete"], ease["pruned"]) == (2, 1)
    pruned = MlflowClient(tracking_uri=mlflow_store).get_run(ease["runs"][1])
    assert pruned.data.tags["ncf.trial_state"] == "pruned"
    assert pruned.info.status == "FINISHED" and f"val_{METRIC}" not in pruned.data.metrics


@pytest.mark.spark
def test_als_trials_fit_with_the_spark_job_and_never_see_test(
        tmp_path: Path, mlflow_store: str) -> None:
    """Each ALS trial runs jobs/als.py on a scratch lake whose test/ is empty; the study's
    best value is the validation metric of those factors, the same again on a refit with
    the best settings (ALS is seeded and its blocks fixed), and the printed `als` section
    keeps the configured fields it does not sample."""
    paths = _tiny_lake(tmp_path / "lake")
    config = _config(tmp_path)
    raw = yaml.safe_load(config.read_text())
    config.write_text(yaml.safe_dump({**raw, "als": {"rank": 4, "max_iter": 3, "seed": 0}}))
    cfg = load_ncf_config(config)
    clean = stage.protocol_data(cfg, paths, torch.device("cpu"),
                                {"n_users": N_USERS, "n_items": N_ITEMS})
    trials = tuning.AlsTrials.load(config, paths)
    result = tuning.tune(cfg, _poisoned(clean), logical_date=DATE, families=["als"],
                         trials=2, seed=0, als=trials)
    als = result["families"]["als"]
    assert als["skipped"] is None and als["complete"] == 2
    assert set(als["best_params"]) == {"rank", "reg_param", "alpha"}
    section = als["sections"]["als"]
    assert section["rank"] == als["best_params"]["rank"]
    assert (section["max_iter"], section["seed"]) == (3, 0)  # configured, not sampled
    again = trials.family("als", {"als": als["best_params"]}).select(clean)
    assert evaluate(again.scorer, clean.validation, K)[METRIC] == pytest.approx(
        als["best_value"], abs=1e-6)
    # The two taste groups are easy: ALS finds them from train alone.
    assert als["best_value"] > 0.5
    assert yaml.safe_load(tuning.format_yaml(result))["als"] == section
    # The tuned lake's own als/ (the DAG's) is untouched: the trials wrote to scratch.
    assert (layout.read_manifest(paths)["als"]["params"]["rank"]) == 2
