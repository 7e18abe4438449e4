"""The train task: fit the configured model on train/, the epoch chosen on validation/.

    python -m ncf_model train --config configs/ml-100k.yaml --logical-date 2026-11-23

Reads train/ and validation/, trains on CUDA if present (else CPU), keeps the epoch with the
best validation HR@k, writes model/, logs params, per-epoch metrics and the model to a new
MLflow run; returns the run id (the Airflow task's XCom). A retry after a kill continues
from the last epoch's state (_train_state/) in the same MLflow run.
"""

from __future__ import annotations

import dataclasses
import logging
import time

import torch

from jobs.lake import layout
from ncf_model import checkpoint, resume, tracking
from ncf_model.config import NCFConfig
from ncf_model.data import TrainingData, lake_ids, load_pairs, load_side_features
from ncf_model.models import PairScorer
from ncf_model.stages.common import CHECKPOINT_ARTIFACT, manifest_entry
from ncf_model.train import fit

log = logging.getLogger(__name__)


def run(cfg: NCFConfig, paths: layout.LakePaths, device: torch.device) -> str:
    """Train, keep the best validation epoch, write model/ and log it all to MLflow.

    Each epoch's state is saved under `_train_state/` (ncf_model.resume): a retry of a
    killed task with the same config and data continues from it, in the same MLflow run.
    """
    prepared = manifest_entry(paths, "prepare", "train")
    n_users, n_items = int(prepared["n_users"]), int(prepared["n_items"])
    train_pairs = load_pairs(paths.path(layout.TRAIN), device)
    validation = load_pairs(paths.path(layout.VALIDATION), device)
    data = TrainingData(train_pairs, n_users=n_users, n_items=n_items)
    features = None
    if cfg.model.kind == "hybrid":
        user_ids, item_ids = lake_ids(paths)
        features = load_side_features(paths, user_ids, item_ids)
    states = resume.TrainingStates(paths.path(resume.TRAIN_STATE_DIR), resume.fingerprint({
        "model": dataclasses.asdict(cfg.model), "train": dataclasses.asdict(cfg.train),
        "prepare": prepared, "device": device.type, "torch": torch.__version__}))
    resumed_run = states.run_id()

    # The DAG run's parent run: every candidate (NCF first) is a child of it.
    parent = tracking.parent_run(cfg.dataset, paths.logical_date, resume.fingerprint(prepared))
    tags = {"ncf.dataset": cfg.dataset, "ncf.logical_date": paths.logical_date,
            "ncf.stage": "train", "ncf.family": "ncf", "ncf.device": device.type,
            "mlflow.parentRunId": parent}
    with tracking.start_run(cfg.dataset, run_name=f"{cfg.dataset}-{paths.logical_date}-ncf",
                            tags=tags, run_id=resumed_run) as run:
        if resumed_run is None:  # a resumed run has them already
            run.log_params({"model": dataclasses.asdict(cfg.model),
                            "train": dataclasses.asdict(cfg.train),
                            "data": {"n_users": n_users, "n_items": n_items,
                                     "train_rows": len(train_pairs),
                                     "validation_rows": len(validation)}})
            run.log_lineage(lake_path=paths.base,
                            manifest_sha256=layout.sha256_file(paths.manifest),
                            context="training")
        states.begin(run.run_id)  # from here on a retry continues this run
        started = time.perf_counter()
        fitted = fit(cfg.model, cfg.train, data, validation, device=device, features=features,
                     on_epoch=lambda epoch, metrics: run.log_metrics(metrics, step=epoch),
                     states=states)
        seconds = time.perf_counter() - started
        model, result = fitted.model, fitted.result
        best = {f"best_{key}": value for key, value in result.best_metrics.items()
                if key.startswith("val_")}
        for phase, phase_result in fitted.pretrained.items():
            best |= {f"pretrain_{phase}_best_{key}": value
                     for key, value in phase_result.best_metrics.items()
                     if key.startswith("val_")}
        run.log_metrics({**best, "best_epoch": result.best_epoch, "train_seconds": seconds})
        run.log_dict({"history": result.history, "best_epoch": result.best_epoch,
                      **{f"pretrain_{phase}": {"history": r.history, "best_epoch": r.best_epoch}
                         for phase, r in fitted.pretrained.items()}},
                     "training_history.json")
        model.eval()
        checkpoint.save_model(model, cfg.model, n_users=n_users, n_items=n_items,
                              folder=paths.path(layout.MODEL),
                              vocabulary=(paths.path(layout.USERS), paths.path(layout.ITEMS)),
                              extra={"run_id": run.run_id, "best_epoch": result.best_epoch})
        # The lake folder again in MLflow: a later day's run can load the champion from the
        # registry alone (weights, architecture, id vocabulary).
        run.log_artifacts(paths.path(layout.MODEL), CHECKPOINT_ARTIFACT)
        example = torch.tensor([[0, 0], [n_users - 1, n_items - 1]], dtype=torch.int64)
        model_uri = run.log_torch_model(PairScorer(model.to("cpu")).eval(), example.numpy())
        run_id = run.run_id

    layout.update_manifest(paths, "train", {
        "run_id": run_id, "model_uri": model_uri, "best_epoch": result.best_epoch,
        "epochs_run": len(result.history), "resumed": resumed_run is not None,
        "best_epochs": fitted.best_epochs(), "parent_run_id": parent,
        "best_metrics": result.best_metrics, "seconds": round(seconds, 2),
        "device": device.type, "params": {"model": dataclasses.asdict(cfg.model),
                                          "train": dataclasses.asdict(cfg.train)},
    })
    states.clear()  # done: a re-run of this date trains afresh
    log.info("trained %s: best epoch %d, %s", cfg.dataset, result.best_epoch, best)
    return run_id
