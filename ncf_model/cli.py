"""Entry points of the torch stages; each reads and writes one lake folder.

    python -m ncf_model train     --config configs/ml-100k.yaml --logical-date 2026-11-23
    python -m ncf_model evaluate  --config configs/ml-100k.yaml --logical-date 2026-11-23
    python -m ncf_model recommend --config configs/ml-100k.yaml --logical-date 2026-11-23
    python -m ncf_model baselines --config configs/ml-100k.yaml --logical-date 2026-11-23

train      reads train/ and validation/, trains on CUDA if present (else CPU), keeps the epoch
           with the best validation HR@k, writes model/, logs params, per-epoch metrics and
           the model to a new MLflow run; prints the run id (the Airflow task's XCom). A
           retry after a kill continues from the last epoch's state (_train_state/) in the
           same MLflow run.
evaluate   reads model/ and test/, logs test HR@k / NDCG@k / AUC, full-ranking HR@k /
           NDCG@k / recall@k and the hr_at_k.png / training_curves.png plots to the same
           run, registers
           a model version, scores the current `champion` on the same test split and moves
           the alias only if the new HR@k clears `evaluate.min_hr` and is at most
           `evaluate.tolerance` worse. Prints the version; exits 99 (Airflow: skipped, so
           nothing new is published) when refused and `evaluate.on_refusal` is `skip`.
recommend  scores every user of this date's data with the registry's champion (downloaded
           from MLflow when it is an earlier run's model) and writes topk/: the top-k unseen
           items per user; users the champion does not know get popular items instead
           (a hybrid champion scores them from their side features).
baselines  evaluates popularity, a dot-product MF and Spark ALS (factors from jobs/als.py)
           on test/ like evaluate, one MLflow run each (ncf_model.baselines; a retry on the
           same lake run logs to the same runs); prints name=run_id pairs.
Each stage records its counts and parameters in the run's `_manifest.json`.
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import os
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from jobs.lake import layout
from jobs.lake.cli import configure_logging, lake_root, stage_parser
from ncf_model import baselines, champion, checkpoint, resume, tracking
from ncf_model.config import NCFConfig, load_ncf_config
from ncf_model.data import Pairs, TrainingData, load_pairs
from ncf_model.evaluate import champion_gate, evaluate, evaluate_report, load_split
from ncf_model.features import load_side_features
from ncf_model.models import PairScorer
from ncf_model.topk import popularity_top_k, recommend_top_k
from ncf_model.train import fit, select_device

log = logging.getLogger("ncf_model")
ENV_TORCH_THREADS = "NCF_TORCH_THREADS"  # deployment setting: torch CPU threads


class StageError(RuntimeError):
    """A stage cannot run on what the lake holds; the message says which stage to run first."""


CHECKPOINT_ARTIFACT = "checkpoint"  # the model/ folder, logged to the training run
# Airflow's BashOperator marks a task skipped on this exit code (its default
# skip_on_exit_code), and recommend/publish downstream are skipped with it.
SKIP_EXIT_CODE = 99


def _paths(cfg: NCFConfig, args: argparse.Namespace) -> layout.LakePaths:
    return layout.LakePaths(lake_root(args.lake_root), cfg.dataset, args.logical_date)


def _manifest_entry(paths: layout.LakePaths, stage: str, needed_by: str) -> dict[str, Any]:
    entry = layout.read_manifest(paths).get(stage)
    if not entry:
        raise StageError(f"{paths.manifest}: no '{stage}' entry; run the {stage} task for "
                         f"{paths.logical_date} before {needed_by}")
    return dict(entry)


def run_train(cfg: NCFConfig, paths: layout.LakePaths, device: torch.device) -> str:
    """Train, keep the best validation epoch, write model/ and log it all to MLflow.

    Each epoch's state is saved under `_train_state/` (ncf_model.resume): a retry of a
    killed task with the same config and data continues from it, in the same MLflow run.
    """
    prepared = _manifest_entry(paths, "prepare", "train")
    n_users, n_items = int(prepared["n_users"]), int(prepared["n_items"])
    train_pairs = load_pairs(paths.path(layout.TRAIN), device)
    validation = load_pairs(paths.path(layout.VALIDATION), device)
    data = TrainingData(train_pairs, n_users=n_users, n_items=n_items)
    features = None
    if cfg.model.kind == "hybrid":
        user_ids, item_ids = champion.lake_ids(paths)
        features = load_side_features(paths, user_ids, item_ids)
    states = resume.TrainingStates(paths.path(resume.TRAIN_STATE_DIR), resume.fingerprint({
        "model": dataclasses.asdict(cfg.model), "train": dataclasses.asdict(cfg.train),
        "prepare": prepared, "device": device.type, "torch": torch.__version__}))
    resumed_run = states.run_id()

    tags = {"ncf.dataset": cfg.dataset, "ncf.logical_date": paths.logical_date,
            "ncf.stage": "train", "ncf.device": device.type}
    with tracking.start_run(cfg.dataset, run_name=f"{cfg.dataset}-{paths.logical_date}",
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
        "best_metrics": result.best_metrics, "seconds": round(seconds, 2),
        "device": device.type, "params": {"model": dataclasses.asdict(cfg.model),
                                          "train": dataclasses.asdict(cfg.train)},
    })
    states.clear()  # done: a re-run of this date trains afresh
    log.info("trained %s: best epoch %d, %s", cfg.dataset, result.best_epoch, best)
    return run_id


def _serving_folder(ref: tracking.ModelVersionRef, paths: layout.LakePaths,
                    scratch: Path) -> Path:
    """The champion's model folder: this run's lake model/, else downloaded from MLflow."""
    trained = layout.read_manifest(paths).get("train", {})
    if trained.get("run_id") == ref.run_id and paths.path(layout.MODEL).is_dir():
        return paths.path(layout.MODEL)
    return tracking.download_artifacts(ref.run_id, CHECKPOINT_ARTIFACT, scratch)


def _register(model_name: str, trained: dict[str, Any], paths: layout.LakePaths,
              metrics: dict[str, float]) -> str:
    """This run's model version: registered once, found again when evaluate is retried."""
    run_id = str(trained["run_id"])
    tags = {"run_id": run_id, "logical_date": paths.logical_date,
            "manifest_sha256": layout.sha256_file(paths.manifest),
            **{key: round(value, 6) for key, value in metrics.items()}}
    version = tracking.find_version(model_name, run_id)
    if version is None:
        return tracking.register_model(str(trained["model_uri"]), model_name, tags=tags)
    tracking.tag_version(model_name, version, tags)
    return version


def run_evaluate(cfg: NCFConfig, paths: layout.LakePaths, device: torch.device,
                 model_name: str) -> tuple[str, bool]:
    """Test metrics (sampled and full-ranking), the HR@K and training-curve plots, a
    registered version and the champion gate (on sampled test HR@k); (version, promoted)."""
    trained = _manifest_entry(paths, "train", "evaluate")
    prepared = _manifest_entry(paths, "prepare", "evaluate")
    run_id = str(trained["run_id"])
    model, _meta = checkpoint.load_model(paths.path(layout.MODEL), device)
    test, full = load_split(paths, layout.TEST, device, n_items=int(prepared["n_items"]),
                            full_ranking=cfg.evaluate.full_ranking,
                            chunk_users=cfg.evaluate.chunk_users)
    k = cfg.evaluate.k
    metric = f"test_hr_{k}"
    started = time.perf_counter()
    report = evaluate_report(model, test, k, full=full)
    metrics = {f"test_{key}": value for key, value in report.metrics.items()}
    seconds = time.perf_counter() - started
    with tracking.start_run(cfg.dataset, run_name="", run_id=run_id) as run:
        run.log_evaluation({**metrics, "evaluate_seconds": seconds}, report.hr_at_k, k=k,
                           title=f"{model_name} test")
        trained_history = tracking.load_run_dict(run_id, tracking.TRAINING_HISTORY) or {}
        if trained_history.get("history"):
            run.log_training_curves(trained_history["history"],
                                    title=f"{model_name} {paths.logical_date}")
        version = _register(model_name, trained, paths, metrics)
        current = tracking.champion(model_name)
        champion_metrics: dict[str, float] = {}
        if current is not None and current.run_id != run_id:
            # The champion scored on the same test split: today's data, its own weights.
            with tempfile.TemporaryDirectory(prefix="ncf-champion-") as scratch:
                scorer, _known = champion.load_for_lake(
                    _serving_folder(current, paths, Path(scratch)), paths, device)
                champion_metrics = {f"champion_test_{key}": value
                                    for key, value in evaluate(scorer, test, k).items()}
            run.log_metrics(champion_metrics)
        decision = champion_gate(metrics[metric], champion_metrics.get(f"champion_{metric}"),
                                 metric=metric, floor=cfg.evaluate.min_hr,
                                 tolerance=cfg.evaluate.tolerance)
        if decision.promote:
            tracking.set_champion(model_name, version)
        serving = version if decision.promote or current is None else current.version
        tracking.tag_version(model_name, version, {"ncf.promoted": decision.promote,
                                                   "ncf.gate": decision.reason})
        run.set_tags({"ncf.model_name": model_name, "ncf.model_version": version,
                      "ncf.promoted": decision.promote, "ncf.gate": decision.reason,
                      "ncf.champion_version": serving})
    layout.update_manifest(paths, "evaluate", {
        "run_id": run_id, "model_name": model_name, "model_version": version,
        "metrics": metrics, "champion_metrics": champion_metrics,
        "previous_champion": None if current is None else current.version,
        "champion_version": serving, "promoted": decision.promote, "reason": decision.reason,
        "hr_at_k": report.hr_at_k, "seconds": round(seconds, 2),
        "params": dataclasses.asdict(cfg.evaluate),
    })
    log.info("evaluated %s version %s: %s", model_name, version,
             ", ".join(f"{key}={value:.4f}" for key, value in metrics.items()))
    if decision.promote:
        log.info("champion gate: version %s promoted: %s", version, decision.reason)
    else:
        log.warning("champion gate: version %s NOT promoted: %s; champion stays %s", version,
                    decision.reason, serving if current is not None else "(none)")
    return version, decision.promote


def _positives(paths: layout.LakePaths) -> dict[str, Pairs]:
    """Each split's positive pairs (label 1), on the CPU, each split read once."""
    positives = {}
    for name in (layout.TRAIN, layout.VALIDATION, layout.TEST):
        pairs = load_pairs(paths.path(name), "cpu")
        keep = pairs.label == 1
        positives[name] = Pairs(pairs.user[keep], pairs.item[keep], pairs.label[keep])
    return positives


def run_recommend(cfg: NCFConfig, paths: layout.LakePaths, device: torch.device,
                  model_name: str) -> int:
    """Top-k unseen items for every user of this run's data, from the registry's champion.

    Users the champion does not know (cold start: new since it was trained) get the most
    popular unseen training items instead, marked source = popularity in topk/. A hybrid
    champion knows them from their side features: they are scored by it (source = model).
    """
    import pyarrow as pa
    import pyarrow.parquet as pq

    _manifest_entry(paths, "evaluate", "recommend")
    prepared = _manifest_entry(paths, "prepare", "recommend")
    n_users, n_items = int(prepared["n_users"]), int(prepared["n_items"])
    ref = tracking.champion(model_name)
    if ref is None:
        raise StageError(f"{model_name} has no champion: no version has passed the gate; "
                         "nothing to recommend with")
    positives = _positives(paths)
    seen_user = torch.cat([p.user for p in positives.values()])  # never recommended again
    seen_item = torch.cat([p.item for p in positives.values()])
    k = cfg.recommend.k
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="ncf-champion-") as scratch:
        scorer, known = champion.load_for_lake(_serving_folder(ref, paths, Path(scratch)),
                                               paths, device)
        items, scores = recommend_top_k(scorer, n_users=n_users, n_items=n_items,
                                        seen_user=seen_user, seen_item=seen_item, k=k,
                                        chunk_users=cfg.recommend.chunk_users, device=device)
    cold = (~known).nonzero().flatten()
    source = [layout.SOURCE_MODEL] * n_users
    if cold.numel():
        counts = torch.bincount(positives[layout.TRAIN].item.long(), minlength=n_items)
        items[cold], scores[cold] = popularity_top_k(counts, users=cold, seen_user=seen_user,
                                                     seen_item=seen_item, k=k)
        for user in cold.tolist():
            source[user] = layout.SOURCE_POPULARITY
    seconds = time.perf_counter() - started
    users = torch.arange(n_users, dtype=torch.int32).repeat_interleave(k)
    ranks = torch.arange(1, k + 1, dtype=torch.int32).repeat(n_users)  # 1 = best
    table = pa.Table.from_arrays(
        [pa.array(users.numpy()), pa.array(ranks.numpy()),
         pa.array(items.flatten().to(torch.int32).numpy()),
         pa.array(scores.flatten().to(torch.float32).numpy()),
         pa.array([s for s in source for _ in range(k)], type=pa.string())],
        schema=layout.arrow_schema(layout.TOPK_SCHEMA))
    with layout.staged_dir(paths.path(layout.TOPK)) as tmp:
        tmp.mkdir(parents=True)
        pq.write_table(table, tmp / "part-00000.parquet")
    layout.update_manifest(paths, "recommend", {
        "rows": table.num_rows, "users": n_users, "k": k, "seconds": round(seconds, 3),
        "popularity_users": int(cold.numel()), "model_name": model_name,
        "model_version": ref.version, "run_id": ref.run_id,
        "params": dataclasses.asdict(cfg.recommend),
    })
    log.info("top-%d for %d users (%d cold-start -> popularity) with %s version %s in %.2fs "
             "-> %s", k, n_users, cold.numel(), model_name, ref.version, seconds,
             paths.path(layout.TOPK))
    return int(table.num_rows)


def main(argv: Sequence[str] | None = None) -> int:
    parser = stage_parser("NCF torch stages: train, evaluate, recommend, baselines")
    parser.prog = "python -m ncf_model"
    parser.add_argument("stage", choices=("train", "evaluate", "recommend", "baselines"))
    parser.add_argument("--device", help="cuda, cuda:1, cpu (default: CUDA when available)")
    parser.add_argument("--model-name", help="registered model (default ncf-<dataset>)")
    args = parser.parse_args(argv)
    configure_logging()

    threads = os.environ.get(ENV_TORCH_THREADS)
    if threads:
        # On a small shared node, torch's intra-op threads spin against other processes
        # (measured: 2 threads ran 5-25x slower than 1 beside a Spark JVM on 2 cores).
        torch.set_num_threads(int(threads))
    cfg = load_ncf_config(args.config)
    paths = _paths(cfg, args)
    device = select_device(args.device)
    log.info("%s %s for %s on %s", args.stage, cfg.dataset, paths.logical_date, device)
    model_name = args.model_name or f"ncf-{cfg.dataset}"
    code = 0
    if args.stage == "train":
        result: object = run_train(cfg, paths, device)
    elif args.stage == "evaluate":
        result, promoted = run_evaluate(cfg, paths, device, model_name)
        if not promoted and cfg.evaluate.on_refusal == "skip":
            log.warning("nothing new is published: the table keeps serving the champion's "
                        "set (exit %d: Airflow skips recommend and publish)", SKIP_EXIT_CODE)
            code = SKIP_EXIT_CODE
    elif args.stage == "baselines":
        result = ",".join(f"{name}={run}" for name, run in
                          baselines.run_baselines(cfg, paths, device).items())
    else:
        result = run_recommend(cfg, paths, device, model_name)
    # The last stdout line is the Airflow task's XCom (BashOperator).
    sys.stdout.write(f"{result}\n")
    return code


if __name__ == "__main__":
    raise SystemExit(main())
