"""The evaluate task: register the served model and apply the champion gate.

    python -m ncf_model evaluate --config configs/ml-100k.yaml --logical-date 2026-11-23

Reads the manifest entry "candidates" (the family chosen on validation, its scores, the
logged served/ model) and registers that model as a version of `publish.model_name`
(default ncf-<dataset>), tagged with its family, settings and scores.

The champion gate compares validation scores only, on today's split: the new model's
selection metric against the champion's *recipe* (family, configuration and the settings
its run chose: a registry tag) fitted on today's train. It never scores a model on events
that model was trained on: the registered champion was refitted on every positive up to
its cut, which on a static dataset includes today's validation and test events, so its
own weights are never scored again; on a growing log the recipe is judged on the new
data like the challenger. When today's candidate of the champion's family has the same
recipe, its validation score is reused; otherwise the recipe is refitted here. The alias moves
when the new score clears `evaluate.min_score` and is at most `evaluate.tolerance` below
the champion family's. Returns (version, promoted); the CLI exits SKIP_EXIT_CODE when
refused and `evaluate.on_refusal` is `skip`.
"""

from __future__ import annotations

import dataclasses
import json
import logging
from typing import Any

import torch

from jobs.lake import layout
from ncf_model import tracking
from ncf_model.champion import GateDecision, champion_gate
from ncf_model.config import NCFConfig
from ncf_model.data import lake_ids, load_sequences, load_side_features
from ncf_model.evaluate import evaluate
from ncf_model.families import SELECT_ON, from_recipe
from ncf_model.stages.candidates import protocol_data
from ncf_model.stages.common import manifest_entry

log = logging.getLogger(__name__)


def _register(model_name: str, candidates: dict[str, Any], paths: layout.LakePaths) -> str:
    """This run's served model as a version: registered once, found again on a retry."""
    run_id = str(candidates["served_run_id"])
    family = str(candidates["served_family"])
    entry = candidates["families"][family]
    tags = {"run_id": run_id, "logical_date": paths.logical_date, "family": family,
            "settings": json.dumps(entry["settings"], sort_keys=True),
            "recipe": json.dumps(entry["recipe"], sort_keys=True),
            "select_metric": candidates["select_metric"],
            "manifest_sha256": layout.sha256_file(paths.manifest),
            **{key: round(value, 6) for key, value in
               {**entry["validation"], **entry["test"]}.items()}}
    version = tracking.find_version(model_name, run_id)
    if version is None:
        return tracking.register_model(str(candidates["model_uri"]), model_name, tags=tags)
    tracking.tag_version(model_name, version, tags)
    return version


def champion_score(cfg: NCFConfig, paths: layout.LakePaths, device: torch.device, *,
                   candidates: dict[str, Any], recipe: dict[str, Any] | None,
                   key: str) -> tuple[float | None, str]:
    """The champion's recipe (family, configuration, settings) fitted on today's train and
    scored on today's validation, and how that score was found. Never the champion's own
    weights: they were refitted on every positive up to their cut, today's validation and
    test events included when the data did not change."""
    if recipe is None:
        return None, "the champion has no recipe (registered before the candidates protocol)"
    family = str(recipe["family"])
    today = candidates["families"].get(family) or {}
    if not today.get("skipped") and today.get("recipe") == recipe and key in today.get(
            "validation", {}):
        return float(today["validation"][key]), f"the champion's recipe is today's {family}"
    metric = key.removeprefix("val_")
    features = None
    if family == "ncf" and recipe.get("model", {}).get("kind") == "hybrid":
        features = load_side_features(paths, *lake_ids(paths))
    rebuilt = from_recipe(recipe, ease=cfg.ease, metric=metric.removeprefix("full_"),
                          features=features, sequences=load_sequences(paths))
    if rebuilt is None:
        return None, (f"the champion's recipe ({family}, other settings than today's) is "
                      "fitted by Spark only")
    data = protocol_data(cfg, paths, device, manifest_entry(paths, "prepare", "evaluate"))
    model = rebuilt.refit(data, SELECT_ON, recipe["settings"] or {})
    scores = evaluate(model, data.validation, data.k, full=data.full(SELECT_ON))
    if metric not in scores:
        return None, f"the champion's recipe has no {metric} (full ranking off?)"
    return float(scores[metric]), f"the champion's recipe ({family}) refitted on today's train"


def gate(cfg: NCFConfig, paths: layout.LakePaths, device: torch.device,
         candidates: dict[str, Any],
         current: tracking.ModelVersionRef | None) -> tuple[GateDecision, dict[str, Any]]:
    """The gate's decision on validation scores (see the module docstring)."""
    key = f"val_{candidates['select_metric']}"
    served = candidates["families"][candidates["served_family"]]
    value = float(served["validation"][key])
    if current is None:
        champion_value, source = None, "there is no champion yet"
    else:
        recipe = json.loads(current.tags["recipe"]) if "recipe" in current.tags else None
        champion_value, source = champion_score(cfg, paths, device, candidates=candidates,
                                                recipe=recipe, key=key)
    decision = champion_gate(value, champion_value, metric=key, floor=cfg.evaluate.min_score,
                             tolerance=cfg.evaluate.tolerance, no_champion=source)
    return decision, {"metric": key, "value": value, "champion_value": champion_value,
                      "champion_source": source}


def run(cfg: NCFConfig, paths: layout.LakePaths, device: torch.device,
        model_name: str) -> tuple[str, bool]:
    """Register today's served model and move `champion` if the gate passes it."""
    candidates = manifest_entry(paths, "candidates", "evaluate")
    family = str(candidates["served_family"])
    run_id = str(candidates["served_run_id"])
    current = tracking.champion(model_name)
    version = _register(model_name, candidates, paths)
    decision, scores = gate(cfg, paths, device, candidates,
                            None if current is None or current.version == version else current)
    if decision.promote:
        tracking.set_champion(model_name, version)
    serving = version if decision.promote or current is None else current.version
    tracking.tag_version(model_name, version, {"ncf.promoted": decision.promote,
                                               "ncf.gate": decision.reason})
    gate_tags = {"ncf.model_name": model_name, "ncf.model_version": version,
                 "ncf.promoted": decision.promote, "ncf.gate": decision.reason,
                 "ncf.champion_version": serving}
    for tagged in (run_id, str(candidates["parent_run_id"])):
        with tracking.start_run(cfg.dataset, run_name="", run_id=tagged) as run:
            run.set_tags(gate_tags)
    metrics = dict(candidates["families"][family]["test"])
    layout.update_manifest(paths, "evaluate", {
        "run_id": run_id, "model_name": model_name, "model_version": version,
        "family": family, "metrics": metrics,
        "validation": candidates["families"][family]["validation"], "gate": scores,
        "previous_champion": None if current is None else current.version,
        "champion_version": serving, "promoted": decision.promote, "reason": decision.reason,
        "params": dataclasses.asdict(cfg.evaluate),
    })
    log.info("registered %s version %s (%s): %s", model_name, version, family,
             ", ".join(f"{key}={value:.4f}" for key, value in metrics.items()))
    if decision.promote:
        log.info("champion gate: version %s promoted: %s", version, decision.reason)
    else:
        log.warning("champion gate: version %s NOT promoted: %s; champion stays %s", version,
                    decision.reason, serving if current is not None else "(none)")
    return version, decision.promote
