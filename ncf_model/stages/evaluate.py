"""The evaluate task: test metrics, a registered version and the champion gate.

    python -m ncf_model evaluate --config configs/ml-100k.yaml --logical-date 2026-11-23

Reads model/ and test/, logs test HR@k / NDCG@k / AUC, full-ranking HR@k / NDCG@k /
recall@k and the hr_at_k.png / training_curves.png plots to the training run, registers a
model version, scores the current `champion` on the same test split and moves the alias
only if the new HR@k clears `evaluate.min_hr` and is at most `evaluate.tolerance` worse
(`ncf_model.champion.champion_gate`). Returns (version, promoted); the CLI exits
SKIP_EXIT_CODE when refused and `evaluate.on_refusal` is `skip`.
"""

from __future__ import annotations

import dataclasses
import logging
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

from jobs.lake import layout
from ncf_model import champion, checkpoint, tracking
from ncf_model.champion import champion_gate
from ncf_model.config import NCFConfig
from ncf_model.data import load_split
from ncf_model.evaluate import evaluate, evaluate_report
from ncf_model.stages.common import manifest_entry, serving_folder

log = logging.getLogger(__name__)


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


def run(cfg: NCFConfig, paths: layout.LakePaths, device: torch.device,
                 model_name: str) -> tuple[str, bool]:
    """Test metrics (sampled and full-ranking), the HR@K and training-curve plots, a
    registered version and the champion gate (on sampled test HR@k); (version, promoted)."""
    trained = manifest_entry(paths, "train", "evaluate")
    prepared = manifest_entry(paths, "prepare", "evaluate")
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
                    serving_folder(current, paths, Path(scratch)), paths, device)
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
