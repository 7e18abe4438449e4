"""The candidates task: every configured model family under one protocol, the winner on
validation refitted on everything known at the cut.

    python -m ncf_model candidates --config configs/ml-100k.yaml --logical-date 2026-11-23

Reads   train/, validation/, test/ (positives and the shared evaluation negatives), model/
        (the flagship NCF fitted by the train task), baselines/als/ (jobs/als.py).
Writes  served/ (the winner refitted on all positives: the model the evaluate task
        registers), the manifest entry "candidates" and, in MLflow, one child run per family
        under the DAG run's parent run, which holds the comparison (candidates.json,
        candidates.png) and the tag ncf.served_family.

Per family (ncf_model.families): (a) fit on train with settings chosen on validation ->
validation metrics, the only ones selection reads; (b) refit on train + validation ->
test metrics, reported and never used to choose; (c) the winner refitted on every positive
-> served/. `candidates.refit: false` skips (b) and (c): test metrics and the served model
are then the (a) fits'.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from typing import Any

import torch
from torch import nn

from jobs.lake import layout
from jobs.lake.config import CandidatesConfig
from ncf_model import checkpoint, tracking
from ncf_model.config import NCFConfig
from ncf_model.data import (
    lake_ids,
    load_als_scorer,
    load_pairs,
    load_positives,
    load_sequences,
    load_side_features,
)
from ncf_model.evaluate import evaluate_report
from ncf_model.families import (
    SELECT_ON,
    SERVE_ON,
    TEST_ON,
    Als,
    Ease,
    Family,
    FamilySkipped,
    Popularity,
    ProtocolData,
    Selected,
    Sequential,
    Trained,
    json_safe,
    mf_family,
)
from ncf_model.models import PairScorer
from ncf_model.resume import fingerprint
from ncf_model.stages.common import SERVED_ARTIFACT, StageError, manifest_entry

log = logging.getLogger(__name__)

def _flagship(cfg: NCFConfig, paths: layout.LakePaths, data: ProtocolData) -> Trained:
    """The ncf family, its (a) already done by the train task: model/ and its best epochs."""
    trained = manifest_entry(paths, "train", "candidates")
    model, _meta = checkpoint.load_model(paths.path(layout.MODEL), data.device)
    features = None
    if cfg.model.kind == "hybrid":
        features = load_side_features(paths, *lake_ids(paths))
    best = {key: float(value) for key, value in trained.get("best_metrics", {}).items()
            if key.startswith("val_")}
    selected = Selected(model, {"epochs": dict(trained["best_epochs"])},
                        {**{f"best_{key}": value for key, value in best.items()},
                         "best_epoch": float(trained["best_epoch"])})
    return Trained("ncf", cfg.model, cfg.train, features=features, selected=selected)


def build_families(cfg: NCFConfig, paths: layout.LakePaths, data: ProtocolData,
                   manifest: dict[str, Any]) -> list[Family]:
    """The families `candidates.families` lists, in that order (ties go to the earlier)."""
    metric = cfg.candidates.select_metric.removeprefix("full_")
    families: list[Family] = []
    sequences = load_sequences(paths)  # time order: sasrec's input, ease's recency
    for name in cfg.candidates.families:
        if name == "ncf":
            families.append(_flagship(cfg, paths, data))
        elif name == "mf":
            families.append(mf_family(cfg.mf, cfg.evaluate.k))
        elif name == "ease":
            families.append(Ease(cfg.ease, metric if metric.startswith(("hr_", "ndcg_"))
                                 else f"ndcg_{cfg.evaluate.k}", sequences))
        elif name == "sasrec":
            families.append(Sequential(cfg.sasrec, sequences))
        elif name == "als":
            params = (manifest.get("als") or {}).get("params") or {}
            families.append(Als(lambda splits: load_als_scorer(
                paths, data.n_users, data.n_items, splits), params))
        else:
            families.append(Popularity())
    return families


def _metrics(prefix: str, model: nn.Module, pairs: Any, data: ProtocolData,
             seen: tuple[str, ...]) -> tuple[dict[str, float], list[float]]:
    report = evaluate_report(model.to(data.device), pairs, data.k, full=data.full(seen))
    return {f"{prefix}{key}": value for key, value in report.metrics.items()}, report.hr_at_k


@dataclasses.dataclass
class Outcome:
    """One family's run through the protocol."""

    family: Family
    selected: Selected | None = None
    validation: dict[str, float] = dataclasses.field(default_factory=dict)
    test: dict[str, float] = dataclasses.field(default_factory=dict)
    test_hr_at_k: list[float] = dataclasses.field(default_factory=list)
    seconds: dict[str, float] = dataclasses.field(default_factory=dict)
    skipped: str | None = None

    def record(self, run_id: str | None) -> dict[str, Any]:
        settings = json_safe(self.selected.settings) if self.selected else None
        return {"run_id": run_id, "skipped": self.skipped, "settings": settings,
                "recipe": {**self.family.recipe(), "settings": settings},
                "validation": self.validation, "test": self.test,
                "seconds": {key: round(value, 3) for key, value in self.seconds.items()}}


def run_protocol(family: Family, data: ProtocolData, *, refit: bool) -> Outcome:
    """(a) and, with `refit`, (b) for one family; validation and test metrics."""
    outcome = Outcome(family)
    started = time.perf_counter()
    try:
        outcome.selected = family.select(data)
    except FamilySkipped as exc:
        outcome.skipped = str(exc)
        log.warning("candidate %s skipped: %s", family.name, exc)
        return outcome
    outcome.seconds["select"] = time.perf_counter() - started
    outcome.validation, _ = _metrics("val_", outcome.selected.scorer, data.validation, data,
                                     SELECT_ON)
    started = time.perf_counter()
    tested = (family.refit(data, TEST_ON, outcome.selected.settings) if refit
              else outcome.selected.scorer)
    outcome.seconds["refit_test"] = time.perf_counter() - started
    outcome.test, outcome.test_hr_at_k = _metrics("test_", tested, data.test, data,
                                                  TEST_ON if refit else SELECT_ON)
    # One line per family as soon as it is scored: a long run shows its figures early.
    log.info("candidate %s: %s (%s)", family.name, ", ".join(
        f"{name} {value:.4f}" for name, value in {**outcome.validation, **outcome.test}.items()
        if name.endswith((f"hr_{data.k}", f"ndcg_{data.k}"))),
        ", ".join(f"{step} {value:.0f} s" for step, value in outcome.seconds.items()))
    return outcome


def choose(outcomes: list[Outcome], cfg: CandidatesConfig) -> Outcome:
    """The family with the best validation `select_metric`; ties go to the earlier family
    in the config. Reads validation metrics only: test metrics never choose."""
    key = f"val_{cfg.select_metric}"
    ranked = [o for o in outcomes if o.skipped is None and key in o.validation]
    if not ranked:
        raise StageError(f"no candidate has a validation {cfg.select_metric}: every family was "
                         "skipped (see the log) or full ranking is off for a full_ metric")
    return max(ranked, key=lambda o: (o.validation[key], -outcomes.index(o)))


def unseen_item_shares(data: ProtocolData, *, refit: bool) -> dict[str, float]:
    """Per held-out split, the share of its positives whose item has no positive in the
    pairs its metrics are fitted on (validation: train; test: train + validation, or train
    without `refit`). A family that knows items only by id scores such an item as it scores
    any unknown one, so no such family's HR@K can exceed 1 minus this share (ties count
    against the positive); only side features could reach them. Data, not a model: logged
    once per run."""
    shares = {}
    for prefix, split, fitted_on in (("val", layout.VALIDATION, SELECT_ON),
                                     ("test", layout.TEST, TEST_ON if refit else SELECT_ON)):
        held = data.positives[split].item.long()
        if held.numel():
            known = torch.zeros(data.n_items, dtype=torch.bool)
            known[data.union(fitted_on).item.long()] = True
            shares[f"{prefix}_unseen_item_share"] = float((~known[held]).float().mean())
    return shares


def protocol_data(cfg: NCFConfig, paths: layout.LakePaths, device: torch.device,
                   prepared: dict[str, Any]) -> ProtocolData:
    return ProtocolData(
        positives=load_positives(paths), n_users=int(prepared["n_users"]),
        validation=load_pairs(paths.path(layout.VALIDATION), device),
        test=load_pairs(paths.path(layout.TEST), device), n_items=int(prepared["n_items"]),
        k=cfg.evaluate.k, device=device, full_ranking=cfg.evaluate.full_ranking,
        chunk_users=cfg.evaluate.chunk_users,
        full_ranking_max_users=cfg.evaluate.full_ranking_max_users,
        full_ranking_seed=cfg.evaluate.full_ranking_seed)


def _child_tags(cfg: NCFConfig, paths: layout.LakePaths, parent: str, family: Family,
                lake_run: str) -> dict[str, Any]:
    """A family's run tags; all but the parent find the run again when the task is retried
    on the same lake run (a new prepare, or another recipe, gets a run of its own)."""
    return {"ncf.dataset": cfg.dataset, "ncf.logical_date": paths.logical_date,
            "ncf.stage": "candidates", "ncf.family": family.name, "mlflow.parentRunId": parent,
            "ncf.lake_run": lake_run, "ncf.recipe_sha256": fingerprint(json_safe(
                {"recipe": family.recipe(), "config": getattr(family, "cfg", None)}))}


def _log_family(cfg: NCFConfig, paths: layout.LakePaths, outcome: Outcome, *,
                parent: str, lake_run: str, ncf_run: str | None) -> str | None:
    """The family's child run (the train task's run for ncf): params, metrics, curves."""
    name = outcome.family.name
    tags = _child_tags(cfg, paths, parent, outcome.family, lake_run)
    run_id = ncf_run
    if name != "ncf":  # a retried task logs to the runs of its first attempt
        found = tracking.find_runs(cfg.dataset, {k: v for k, v in tags.items()
                                                 if k != "mlflow.parentRunId"})
        run_id = found[0] if found else None
    with tracking.start_run(cfg.dataset, run_name=f"{cfg.dataset}-{paths.logical_date}-{name}",
                            tags=tags, run_id=run_id) as run:
        if outcome.skipped is not None:
            run.set_tags({"ncf.skipped": outcome.skipped})
            return run.run_id
        assert outcome.selected is not None  # not skipped
        if name != "ncf":
            run.log_params({name: json_safe(outcome.selected.settings),
                            "evaluate": {"k": cfg.evaluate.k}})
            run.log_lineage(lake_path=paths.base,
                            manifest_sha256=layout.sha256_file(paths.manifest),
                            context="candidates")
        run.log_evaluation({**outcome.validation, **outcome.test, **outcome.selected.metrics,
                            **{f"{key}_seconds": value
                               for key, value in outcome.seconds.items()}},
                           outcome.test_hr_at_k, k=cfg.evaluate.k, title=f"{name} test")
        if outcome.selected.history:
            run.log_dict({"history": outcome.selected.history}, tracking.TRAINING_HISTORY)
            run.log_training_curves(outcome.selected.history, title=f"{name} training")
        return run.run_id


def run(cfg: NCFConfig, paths: layout.LakePaths, device: torch.device) -> str:
    """Fit, score and choose among the candidates; write served/; returns the winner."""
    manifest = layout.read_manifest(paths)
    prepared = manifest_entry(paths, "prepare", "candidates")
    trained = manifest_entry(paths, "train", "candidates")
    data = protocol_data(cfg, paths, device, prepared)
    families = build_families(cfg, paths, data, manifest)
    outcomes = [run_protocol(family, data, refit=cfg.candidates.refit) for family in families]
    winner = choose(outcomes, cfg.candidates)
    assert winner.selected is not None  # chosen among the fitted
    key = f"val_{cfg.candidates.select_metric}"
    unseen = unseen_item_shares(data, refit=cfg.candidates.refit)
    log.info("held-out positives whose item the fit never saw (an HR@K ceiling for id-only "
             "families): %s", ", ".join(f"{k} {v:.3f}" for k, v in unseen.items()))
    log.info("candidates on validation %s: %s -> serving %s", cfg.candidates.select_metric,
             ", ".join(f"{o.family.name}={o.validation.get(key, float('nan')):.4f}"
                       if o.skipped is None else f"{o.family.name}=skipped" for o in outcomes),
             winner.family.name)

    started = time.perf_counter()
    served = (winner.family.refit(data, SERVE_ON, winner.selected.settings)
              if cfg.candidates.refit else winner.selected.scorer)
    winner.seconds["refit_serve"] = time.perf_counter() - started
    ncf_cfg = {"ncf": cfg.model, "mf": cfg.mf.model_config()}.get(winner.family.name)
    checkpoint.save_model(served.to("cpu"), ncf_cfg, family=winner.family.name,
                          n_users=data.n_users, n_items=data.n_items,
                          folder=paths.path(layout.SERVED),
                          vocabulary=(paths.path(layout.USERS), paths.path(layout.ITEMS)),
                          extra={"settings": json_safe(winner.selected.settings),
                                 "trained_on": list(SERVE_ON if cfg.candidates.refit
                                                    else SELECT_ON)})

    parent = str(trained["parent_run_id"])
    lake_run = fingerprint(prepared)  # new with every prepare run
    runs = {o.family.name: _log_family(cfg, paths, o, parent=parent, lake_run=lake_run,
                                       ncf_run=str(trained["run_id"])) for o in outcomes}
    with tracking.start_run(cfg.dataset, run_name="", run_id=runs[winner.family.name]) as run:
        run.log_artifacts(paths.path(layout.SERVED), SERVED_ARTIFACT)
        example = torch.tensor([[0, 0], [data.n_users - 1, data.n_items - 1]],
                               dtype=torch.int64)
        model_uri = run.log_torch_model(PairScorer(served.to("cpu")).eval(), example.numpy())
        run.log_metrics({"refit_serve_seconds": winner.seconds["refit_serve"]})
    table = {o.family.name: o.record(runs[o.family.name]) for o in outcomes}
    with tracking.start_run(cfg.dataset, run_name="", run_id=parent) as run:
        run.log_dict({"select_metric": cfg.candidates.select_metric,
                      "served_family": winner.family.name, "candidates": table},
                     tracking.CANDIDATES_TABLE)
        run.log_candidates(table, select_metric=key, served=winner.family.name)
        run.set_tags({"ncf.served_family": winner.family.name,
                      "ncf.select_metric": cfg.candidates.select_metric})
        run.log_metrics({**{f"served_{name}": value for name, value in
                            {**winner.validation, **winner.test}.items()}, **unseen})
    layout.update_manifest(paths, "candidates", {
        "served_family": winner.family.name, "select_metric": cfg.candidates.select_metric,
        "served_run_id": runs[winner.family.name], "model_uri": model_uri,
        "parent_run_id": parent, "families": table, **unseen,
        "params": json_safe({"candidates": cfg.candidates, "mf": cfg.mf, "ease": cfg.ease}),
    })
    return winner.family.name
