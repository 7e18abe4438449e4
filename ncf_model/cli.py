"""Entry points of the torch stages; each reads and writes one lake folder.

    python -m ncf_model train     --config configs/ml-100k.yaml --logical-date 2026-11-23
    python -m ncf_model evaluate  --config configs/ml-100k.yaml --logical-date 2026-11-23
    python -m ncf_model recommend --config configs/ml-100k.yaml --logical-date 2026-11-23

train      reads train/ and validation/, trains on CUDA if present (else CPU), keeps the epoch
           with the best validation HR@k, writes model/, logs params, per-epoch metrics and
           the model to a new MLflow run; prints the run id (the Airflow task's XCom).
evaluate   reads model/ and test/, logs test HR@k / NDCG@k / AUC to the same run, registers
           a model version and moves `champion` to it if it clears `evaluate.min_hr`;
           fails (publishing nothing) if it does not. Prints the model version.
recommend  reads model/ and every split's positives, writes topk/: the top-k unseen items
           per user.
Each stage records its counts and parameters in the run's `_manifest.json`.
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import os
import sys
import time
from collections.abc import Sequence
from typing import Any

import torch

from jobs import layout
from jobs.cli import configure_logging, lake_root, stage_parser
from ncf_model import checkpoint, tracking
from ncf_model.config import NCFConfig, load_ncf_config
from ncf_model.data import Pairs, TrainingData, load_pairs
from ncf_model.evaluate import evaluate
from ncf_model.models import PairScorer, build_model
from ncf_model.topk import recommend_top_k
from ncf_model.train import select_device, train

log = logging.getLogger("ncf_model")
ENV_TORCH_THREADS = "NCF_TORCH_THREADS"  # deployment setting: torch CPU threads


class StageError(RuntimeError):
    """A stage cannot run on what the lake holds; the message says which stage to run first."""


class PromotionRefused(RuntimeError):
    """The new model did not clear the champion gate: nothing new is published."""


def _paths(cfg: NCFConfig, args: argparse.Namespace) -> layout.LakePaths:
    return layout.LakePaths(lake_root(args.lake_root), cfg.dataset, args.logical_date)


def _manifest_entry(paths: layout.LakePaths, stage: str, needed_by: str) -> dict[str, Any]:
    entry = layout.read_manifest(paths).get(stage)
    if not entry:
        raise StageError(f"{paths.manifest}: no '{stage}' entry; run the {stage} task for "
                         f"{paths.logical_date} before {needed_by}")
    return dict(entry)


def _generator(device: torch.device, seed: int) -> torch.Generator:
    generator = torch.Generator(device=device)
    generator.manual_seed(seed)
    return generator


def run_train(cfg: NCFConfig, paths: layout.LakePaths, device: torch.device) -> str:
    prepared = _manifest_entry(paths, "prepare", "train")
    n_users, n_items = int(prepared["n_users"]), int(prepared["n_items"])
    torch.manual_seed(cfg.train.seed)  # initial weights (and dropout) are seeded too
    train_pairs = load_pairs(paths.path(layout.TRAIN), device)
    validation = load_pairs(paths.path(layout.VALIDATION), device)
    data = TrainingData(train_pairs, n_users=n_users, n_items=n_items)
    model = build_model(cfg.model, n_users, n_items).to(device)

    tags = {"ncf.dataset": cfg.dataset, "ncf.logical_date": paths.logical_date,
            "ncf.stage": "train", "ncf.device": device.type}
    with tracking.start_run(cfg.dataset, run_name=f"{cfg.dataset}-{paths.logical_date}",
                            tags=tags) as run:
        run.log_params({"model": dataclasses.asdict(cfg.model),
                        "train": dataclasses.asdict(cfg.train),
                        "data": {"n_users": n_users, "n_items": n_items,
                                 "train_rows": len(train_pairs),
                                 "validation_rows": len(validation)}})
        run.log_lineage(lake_path=paths.base, manifest_sha256=layout.sha256_file(paths.manifest),
                        context="training")
        started = time.perf_counter()
        result = train(model, data, validation, cfg.train, device=device, generator=
                       _generator(device, cfg.train.seed),
                       on_epoch=lambda epoch, metrics: run.log_metrics(metrics, step=epoch))
        seconds = time.perf_counter() - started
        best = {f"best_{key}": value for key, value in result.best_metrics.items()
                if key.startswith("val_")}
        run.log_metrics({**best, "best_epoch": result.best_epoch, "train_seconds": seconds})
        run.log_dict({"history": result.history, "best_epoch": result.best_epoch},
                     "training_history.json")
        model.load_state_dict(result.best_state)
        model.eval()
        checkpoint.save_model(model, cfg.model, n_users=n_users, n_items=n_items,
                              folder=paths.path(layout.MODEL),
                              extra={"run_id": run.run_id, "best_epoch": result.best_epoch})
        example = torch.tensor([[0, 0], [n_users - 1, n_items - 1]], dtype=torch.int64)
        model_uri = run.log_torch_model(PairScorer(model.to("cpu")).eval(), example.numpy())
        run_id = run.run_id

    layout.update_manifest(paths, "train", {
        "run_id": run_id, "model_uri": model_uri, "best_epoch": result.best_epoch,
        "epochs_run": len(result.history),
        "best_metrics": result.best_metrics, "seconds": round(seconds, 2),
        "device": device.type, "params": {"model": dataclasses.asdict(cfg.model),
                                          "train": dataclasses.asdict(cfg.train)},
    })
    log.info("trained %s: best epoch %d, %s", cfg.dataset, result.best_epoch, best)
    return run_id


def run_evaluate(cfg: NCFConfig, paths: layout.LakePaths, device: torch.device,
                 model_name: str) -> str:
    trained = _manifest_entry(paths, "train", "evaluate")
    run_id = str(trained["run_id"])
    model, _meta = checkpoint.load_model(paths.path(layout.MODEL), device)
    test = load_pairs(paths.path(layout.TEST), device)
    k = cfg.evaluate.k
    metrics = {f"test_{key}": value for key, value in evaluate(model, test, k).items()}
    with tracking.start_run(cfg.dataset, run_name="", run_id=run_id) as run:
        run.log_metrics(metrics)
        version = tracking.register_model(str(trained["model_uri"]), model_name, tags={
            "run_id": run_id, "logical_date": paths.logical_date,
            "manifest_sha256": layout.sha256_file(paths.manifest),
            **{key: round(value, 6) for key, value in metrics.items()},
        })
        promoted, reason = tracking.promote_if_better(
            model_name, version, metric=f"test_hr_{k}", value=metrics[f"test_hr_{k}"],
            floor=cfg.evaluate.min_hr)
        run.set_tags({"ncf.model_name": model_name, "ncf.model_version": version,
                      "ncf.promoted": promoted, "ncf.promotion": reason})
    layout.update_manifest(paths, "evaluate", {
        "run_id": run_id, "model_name": model_name, "model_version": version,
        "metrics": metrics, "promoted": promoted, "reason": reason,
        "params": dataclasses.asdict(cfg.evaluate),
    })
    log.info("evaluated %s version %s: %s", model_name, version,
             ", ".join(f"{key}={value:.4f}" for key, value in metrics.items()))
    if not promoted:
        raise PromotionRefused(f"{model_name} version {version} not promoted: {reason}; "
                               "nothing new is published and the table keeps its previous set")
    return version


def _all_positives(paths: layout.LakePaths) -> Pairs:
    parts = [load_pairs(paths.path(name), "cpu")
             for name in (layout.TRAIN, layout.VALIDATION, layout.TEST)]
    user = torch.cat([p.user[p.label == 1] for p in parts])
    item = torch.cat([p.item[p.label == 1] for p in parts])
    return Pairs(user, item, torch.ones_like(user, dtype=torch.float32))


def run_recommend(cfg: NCFConfig, paths: layout.LakePaths, device: torch.device) -> int:
    import pyarrow as pa
    import pyarrow.parquet as pq

    evaluated = _manifest_entry(paths, "evaluate", "recommend")
    model, meta = checkpoint.load_model(paths.path(layout.MODEL), device)
    n_users, n_items = int(meta["n_users"]), int(meta["n_items"])
    seen = _all_positives(paths)
    k = cfg.recommend.k
    started = time.perf_counter()
    items, scores = recommend_top_k(model, n_users=n_users, n_items=n_items,
                                    seen_user=seen.user, seen_item=seen.item, k=k,
                                    chunk_users=cfg.recommend.chunk_users, device=device)
    seconds = time.perf_counter() - started
    users = torch.arange(n_users, dtype=torch.int32).repeat_interleave(k)
    ranks = torch.arange(1, k + 1, dtype=torch.int32).repeat(n_users)  # 1 = best
    table = pa.Table.from_arrays(
        [pa.array(users.numpy()), pa.array(ranks.numpy()),
         pa.array(items.flatten().to(torch.int32).numpy()),
         pa.array(scores.flatten().to(torch.float32).numpy())],
        schema=layout.arrow_schema(layout.TOPK_SCHEMA))
    with layout.staged_dir(paths.path(layout.TOPK)) as tmp:
        tmp.mkdir(parents=True)
        pq.write_table(table, tmp / "part-00000.parquet")
    layout.update_manifest(paths, "recommend", {
        "rows": table.num_rows, "users": n_users, "k": k, "seconds": round(seconds, 3),
        "model_version": evaluated.get("model_version"), "run_id": evaluated.get("run_id"),
        "params": dataclasses.asdict(cfg.recommend),
    })
    log.info("top-%d for %d users in %.2fs -> %s", k, n_users, seconds, paths.path(layout.TOPK))
    return int(table.num_rows)


def main(argv: Sequence[str] | None = None) -> int:
    parser = stage_parser("NCF torch stages: train, evaluate, recommend")
    parser.prog = "python -m ncf_model"
    parser.add_argument("stage", choices=("train", "evaluate", "recommend"))
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
    if args.stage == "train":
        result: object = run_train(cfg, paths, device)
    elif args.stage == "evaluate":
        result = run_evaluate(cfg, paths, device, args.model_name or f"ncf-{cfg.dataset}")
    else:
        result = run_recommend(cfg, paths, device)
    # The last stdout line is the Airflow task's XCom (BashOperator).
    sys.stdout.write(f"{result}\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
