"""Baselines beside NCF, evaluated exactly like it: popularity, a dot-product MF, Spark ALS.

    python -m ncf_model baselines --config configs/ml-100k.yaml --logical-date 2026-11-23

Reads   train/, validation/ (MF's epoch choice), test/ and, for ALS, baselines/als/ (the
        factors jobs/als.py wrote) of <lake>/<dataset>/<logical_date>/.
Writes  one MLflow run per baseline in the dataset's experiment (`ncf-<dataset>`), tagged
        ncf.baseline=<name> and ncf.logical_date, with the metric names of NCF's run
        (test_hr_10, test_full_ndcg_10, ...) so the UI compares them side by side, and the
        manifest entry "baselines": each baseline's run id, metrics and parameters.
        A retried task logs to the runs of its first attempt: a run is found again by its
        baseline, the lake run (ncf.lake_run: the fingerprint of the manifest's prepare
        entry, new with every prepare) and its parameters (ncf.params_sha256).

popularity  score(u, i) = the number of training positives of item i (the same list for
            every user; ties against the positive as everywhere).
mf          `<p_u, q_i> + biases` (model kind mf) trained by the same `fit`/`train` as NCF,
            its epoch chosen on validation HR@k.
als         `<x_u, y_i>` of Spark MLlib's implicit ALS factors; a user or item without
            factors (no training positive) scores 0. The ALS job's wall seconds (its
            manifest entry) are logged as als_job_seconds.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from jobs.lake import layout
from ncf_model import tracking
from ncf_model.config import NCFConfig
from ncf_model.data import Pairs, TrainingData, load_als_scorer, load_pairs, load_split
from ncf_model.evaluate import Evaluation, evaluate_report
from ncf_model.models.baselines import popularity_scorer
from ncf_model.resume import fingerprint
from ncf_model.stages.common import StageError
from ncf_model.train import fit

log = logging.getLogger(__name__)


@dataclasses.dataclass
class Baseline:
    """A baseline's scorer with what its MLflow run records beside the test metrics."""

    scorer: nn.Module
    params: dict[str, Any]
    metrics: dict[str, float] = dataclasses.field(default_factory=dict)  # e.g. best_epoch
    history: list[dict[str, float]] = dataclasses.field(default_factory=list)


def _train_mf(cfg: NCFConfig, train: Pairs, validation: Pairs, *, n_users: int, n_items: int,
              device: torch.device,
              on_epoch: Callable[[int, dict[str, float]], None]) -> Baseline:
    mf = cfg.baselines.mf
    data = TrainingData(train, n_users=n_users, n_items=n_items)
    fitted = fit(mf.model_config(), mf.train_config(cfg.train.k), data, validation,
                 device=device, on_epoch=on_epoch)
    result = fitted.result
    best = {f"best_{key}": value for key, value in result.best_metrics.items()
            if key.startswith("val_")}
    return Baseline(fitted.model.eval(), dataclasses.asdict(mf),
                    {**best, "best_epoch": float(result.best_epoch)}, result.history)


def _params(name: str, cfg: NCFConfig, manifest: dict[str, Any]) -> dict[str, Any]:
    """What a baseline's run records as its parameters (ALS: those it was fitted with)."""
    if name == "popularity":
        return {"score": "item_count"}
    if name == "mf":
        return dataclasses.asdict(cfg.baselines.mf)
    fitted_with = (manifest.get("als") or {}).get("params")
    return dict(fitted_with or dataclasses.asdict(cfg.baselines.als))


def _run_tags(cfg: NCFConfig, paths: layout.LakePaths, name: str, params: dict[str, Any], *,
              prepared: dict[str, Any], device: torch.device) -> dict[str, Any]:
    """The run's tags; all but ncf.device find the run again when the task is retried.

    `prepared` is the manifest's prepare entry: rewritten by every prepare run (written_at,
    checksums), so its fingerprint names the lake run the baselines are evaluated on.
    """
    return {"ncf.dataset": cfg.dataset, "ncf.logical_date": paths.logical_date,
            "ncf.stage": "baselines", "ncf.baseline": name, "ncf.lake_run": fingerprint(prepared),
            "ncf.params_sha256": fingerprint({name: params, "evaluate": {"k": cfg.evaluate.k}}),
            "ncf.device": device.type}


def _earlier_run(dataset: str, tags: dict[str, Any]) -> str | None:
    """The run an earlier attempt of this task logged this baseline to, if any."""
    found = tracking.find_runs(dataset, {k: v for k, v in tags.items() if k != "ncf.device"})
    if found:
        log.info("baseline %s: run %s of an earlier attempt on this lake run is logged to "
                 "again", tags["ncf.baseline"], found[0])
    return found[0] if found else None


def _log_baseline(run: tracking.RunLogger, cfg: NCFConfig, paths: layout.LakePaths, *,
                  name: str, baseline: Baseline, evaluation: Evaluation) -> None:
    k = cfg.evaluate.k
    run.log_params({name: baseline.params, "evaluate": {"k": k}})
    run.log_lineage(lake_path=paths.base, manifest_sha256=layout.sha256_file(paths.manifest),
                    context="evaluation")
    metrics = {f"test_{key}": value for key, value in evaluation.metrics.items()}
    run.log_evaluation({**metrics, **baseline.metrics}, evaluation.hr_at_k, k=k,
                       title=f"{name} test")
    if baseline.history:
        run.log_dict({"history": baseline.history}, tracking.TRAINING_HISTORY)
        run.log_training_curves(baseline.history, title=f"{name} training")


def run(cfg: NCFConfig, paths: layout.LakePaths,
                  device: torch.device) -> dict[str, str]:
    """Evaluate every enabled baseline on test/, one MLflow run each; {name: run_id}."""
    manifest = layout.read_manifest(paths)
    prepared = manifest.get("prepare")
    if not prepared:
        raise StageError(f"{paths.manifest}: no 'prepare' entry; run the prepare task for "
                            f"{paths.logical_date} before the baselines")
    n_users, n_items = int(prepared["n_users"]), int(prepared["n_items"])
    train = load_pairs(paths.path(layout.TRAIN), device)
    test, full = load_split(paths, layout.TEST, device, n_items=n_items,
                            full_ranking=cfg.evaluate.full_ranking,
                            chunk_users=cfg.evaluate.chunk_users)
    k = cfg.evaluate.k
    # Checked before anything is trained or logged: a missing or stale ALS fit fails fast.
    als = (load_als_scorer(paths, n_users, n_items) if "als" in cfg.baselines.enabled
           else None)
    entry: dict[str, Any] = {}
    for name in cfg.baselines.enabled:
        params = _params(name, cfg, manifest)
        tags = _run_tags(cfg, paths, name, params, prepared=prepared, device=device)
        started = time.perf_counter()
        with tracking.start_run(cfg.dataset, run_name=f"{cfg.dataset}-{paths.logical_date}-"
                                f"{name}", tags=tags,
                                run_id=_earlier_run(cfg.dataset, tags)) as run:
            if name == "popularity":
                baseline = Baseline(popularity_scorer(train, n_items), params)
            elif name == "mf":
                validation = load_pairs(paths.path(layout.VALIDATION), device)
                baseline = _train_mf(cfg, train, validation, n_users=n_users, n_items=n_items,
                                     device=device,
                                     on_epoch=lambda epoch, m: run.log_metrics(m, step=epoch))
            else:
                assert als is not None  # loaded above, since "als" is enabled
                job_seconds = (manifest.get("als") or {}).get("seconds")
                baseline = Baseline(als, params, {} if job_seconds is None else
                                    {"als_job_seconds": float(job_seconds)})
            evaluation = evaluate_report(baseline.scorer.to(device), test, k, full=full)
            _log_baseline(run, cfg, paths, name=name, baseline=baseline, evaluation=evaluation)
            seconds = time.perf_counter() - started
            run.log_metrics({"baseline_seconds": seconds})
        entry[name] = {"run_id": run.run_id, "params": baseline.params,
                       "metrics": {f"test_{key}": value
                                   for key, value in evaluation.metrics.items()},
                       **baseline.metrics, "seconds": round(seconds, 2)}
        log.info("baseline %s: %s", name, ", ".join(
            f"{key}={value:.4f}" for key, value in entry[name]["metrics"].items()))
    layout.update_manifest(paths, "baselines", {
        **entry, "device": device.type, "params": dataclasses.asdict(cfg.baselines)})
    return {name: str(value["run_id"]) for name, value in entry.items()}
