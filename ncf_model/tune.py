"""Hyper-parameter search for the candidate families: one seeded Optuna study per family,
each with the same number of trials, scored on validation only.

    python -m ncf_model.tune --config configs/ml-100k.yaml --logical-date 2026-11-23 \\
        [--lake-root R] [--trials 20] [--families ncf mf ease als sasrec] [--seed 0] \\
        [--device cpu]
    make tune DATASET=ml-100k [TRIALS=20] [DATE=...]

Reads   train/ and validation/ of one lake run (positives and the shared evaluation
        negatives) and sequences/ for sasrec and ease; the run must exist (`make run`
        writes it).
        test/ is dropped before any trial starts: no setting is ever chosen on test.
Writes  nothing to the lake. MLflow: a parent run "<dataset>-<date>-tune" (tag
        ncf.stage=tune) with one child run per trial (the sampled values as params, the
        objective as metric, the per-epoch curves, ncf.trial_state complete/pruned).
Prints  per family, the best validation score and a YAML block of the config sections to
        paste into configs/<dataset>.yaml.

A trial replaces the sampled fields of the family's config section(s) (dataclasses.replace)
and runs the family's protocol step (a), `Family.select`: fit on train, epochs chosen on
validation by early stopping (the configured epoch counts are kept as the ceiling). Its
objective is `candidates.select_metric` of that fit on validation, the number the
candidates stage chooses the served family by. ALS trials fit with jobs/als.py, the DAG's
Spark job, in a subprocess on a scratch lake without test/ (ncf_model.tune_als). Families
trained per epoch (ncf, mf, sasrec) report each epoch's validation score to a MedianPruner,
which stops trials running below the median of earlier trials at the same epoch. Same seed,
same trials on the CPU: the sampler is seeded with --seed and each fit seeds torch from its
section's `seed`.
"""

from __future__ import annotations

import dataclasses
import functools
import logging
import os
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import optuna
import torch
import yaml
from torch import Tensor

from jobs.lake import layout
from jobs.lake.cli import configure_logging, lake_root, stage_parser
from ncf_model import tracking
from ncf_model.config import NCFConfig, load_ncf_config
from ncf_model.data import Pairs, load_sequences
from ncf_model.evaluate import evaluate_report
from ncf_model.families import (
    SELECT_ON,
    Ease,
    Family,
    FamilySkipped,
    ProtocolData,
    Sequential,
    Trained,
    json_safe,
    mf_family,
)
from ncf_model.stages.candidates import protocol_data
from ncf_model.stages.common import StageError, manifest_entry
from ncf_model.train import select_device
from ncf_model.tune_als import AlsTrials, TrialAls, suggest_als

log = logging.getLogger(__name__)

TUNABLE = ("ncf", "mf", "ease", "als", "sasrec")  # popularity has nothing to tune
ENV_TORCH_THREADS = "NCF_TORCH_THREADS"  # as in ncf_model.cli
# Judge no trial before PRUNE_STARTUP_TRIALS have finished (a median of one or two trials is
# noise), nor at an epoch below PRUNE_WARMUP_EPOCHS (epochs count from 1): a small learning
# rate starts slowly, so epoch 1 alone says little.
PRUNE_STARTUP_TRIALS = 3
PRUNE_WARMUP_EPOCHS = 2
# Optuna's categorical choices must be scalars: the MLP towers are named by their sizes.
MLP_LAYERS = ("64-32-16-8", "128-64-32-16", "256-128-64-32")

OnEpoch = Callable[[int, dict[str, float]], None]
Overrides = dict[str, dict[str, Any]]  # config section -> the fields a trial replaces


def _suggest_ncf(trial: optuna.trial.BaseTrial) -> Overrides:
    """NeuMF (pre-training is one of the choices, so the kind is fixed to neumf)."""
    layers = trial.suggest_categorical("mlp_layers", MLP_LAYERS)
    return {
        "model": {"kind": "neumf",
                  "factors": trial.suggest_categorical("factors", (8, 16, 32, 64)),
                  "mlp_layers": tuple(int(size) for size in str(layers).split("-")),
                  "dropout": trial.suggest_categorical("dropout", (0.0, 0.1, 0.2)),
                  "pretrain": trial.suggest_categorical("pretrain", (False, True))},
        "train": _suggest_training(trial),
    }


def _suggest_training(trial: optuna.trial.BaseTrial) -> dict[str, Any]:
    return {"lr": trial.suggest_float("lr", 1e-4, 1e-2, log=True),
            "weight_decay": trial.suggest_categorical("weight_decay", (0.0, 1e-6, 1e-5)),
            "n_negatives": trial.suggest_categorical("n_negatives", (2, 4, 8)),
            "batch_size": trial.suggest_categorical("batch_size", (256, 1024, 4096))}


def _suggest_mf(trial: optuna.trial.BaseTrial) -> Overrides:
    factors = trial.suggest_categorical("factors", (8, 16, 32, 64))
    return {"mf": {"factors": factors, **_suggest_training(trial)}}


def _suggest_ease(trial: optuna.trial.BaseTrial, *, recency: bool = True) -> Overrides:
    # One lambda and one half-life per trial: the sampler, not EASE's own grids, explores
    # them (a trial still scores the binary X beside its half-life and keeps the better).
    # Without time order (recency=False) a half-life would change nothing: lambda alone.
    half_life = (trial.suggest_categorical("half_life", (0, 5, 10, 20, 50, 100))  # 0: none
                 if recency else 0)
    return {"ease": {"l2_grid": (trial.suggest_float("l2", 1.0, 5000.0, log=True),),
                     "half_life_grid": (float(half_life),) if half_life else ()}}


def _suggest_sasrec(trial: optuna.trial.BaseTrial) -> Overrides:
    return {"sasrec": {"max_len": trial.suggest_categorical("max_len", (50, 100, 200)),
                       "hidden": trial.suggest_categorical("hidden", (32, 64)),
                       "n_blocks": trial.suggest_categorical("n_blocks", (1, 2)),
                       "dropout": trial.suggest_categorical("dropout", (0.1, 0.2, 0.3)),
                       "lr": trial.suggest_float("lr", 3e-4, 3e-3, log=True),
                       "loss": trial.suggest_categorical("loss", ("bce", "softmax")),
                       "windows": trial.suggest_categorical("windows", (False, True))}}


SPACES: dict[str, Callable[[optuna.trial.BaseTrial], Overrides]] = {
    "ncf": _suggest_ncf, "mf": _suggest_mf, "ease": _suggest_ease, "sasrec": _suggest_sasrec,
    "als": lambda trial: {"als": suggest_als(trial)}}


def apply_overrides(cfg: NCFConfig, overrides: Overrides) -> NCFConfig:
    """`cfg` with each section's sampled fields replaced; the sections validate themselves."""
    sections = {name: dataclasses.replace(getattr(cfg, name), **fields)
                for name, fields in overrides.items()}
    return dataclasses.replace(cfg, **sections)


def build_family(name: str, cfg: NCFConfig, *, on_epoch: OnEpoch | None = None,
                 sequences: tuple[Tensor, Tensor, Tensor] | None = None) -> Family:
    """The family `name` as the candidates stage builds it, from `cfg`'s sections, except
    that ncf is trained here (the stage reuses the train task's model). ALS: AlsTrials."""
    if name == "ncf":
        return Trained("ncf", cfg.model, cfg.train, on_epoch=on_epoch)
    if name == "mf":
        return mf_family(cfg.mf, cfg.evaluate.k, on_epoch=on_epoch)
    if name == "ease":
        # Ease ranks its lambda grid on a sampled metric; with one lambda it ranks nothing.
        return Ease(cfg.ease, f"ndcg_{cfg.evaluate.k}", sequences)
    if name == "sasrec":
        return Sequential(cfg.sasrec, sequences, on_epoch=on_epoch)
    raise ValueError(f"family {name!r} cannot be tuned: choose among {list(TUNABLE)}")


@dataclass(frozen=True)
class ConfigFamilies:
    """Builds a trial's family from `cfg`'s sections with the trial's fields replaced (every
    tunable family but ALS, whose section lives in the data config: tune_als.AlsTrials)."""

    cfg: NCFConfig
    sequences: tuple[Tensor, Tensor, Tensor] | None = None

    def space(self, name: str) -> Callable[[optuna.trial.BaseTrial], Overrides]:
        """The family's search space on this data (EASE^R's half-life needs time order)."""
        if name == "ease" and self.sequences is None:
            return functools.partial(_suggest_ease, recency=False)
        return SPACES[name]

    def family(self, name: str, overrides: Overrides,
               on_epoch: OnEpoch | None = None) -> Family:
        return build_family(name, apply_overrides(self.cfg, overrides),
                            sequences=self.sequences, on_epoch=on_epoch)

    def sections(self, overrides: Overrides) -> dict[str, Any]:
        """The whole config sections the overrides touch, as YAML-ready values."""
        tuned = apply_overrides(self.cfg, overrides)
        return {section: json_safe(getattr(tuned, section)) for section in overrides}


Builder = ConfigFamilies | AlsTrials


def validation_score(family: Family | TrialAls, data: ProtocolData, metric: str) -> float:
    """The objective: `metric` (candidates.select_metric) of the family's (a) fit on
    validation, as the candidates stage computes it. Test is never read."""
    selected = family.select(data)
    full = data.full(SELECT_ON) if metric.startswith("full_") else None
    report = evaluate_report(selected.scorer.to(data.device), data.validation, data.k,
                             full=full)
    if metric not in report.metrics:
        raise ValueError(f"candidates.select_metric {metric!r} is not among the validation "
                         f"metrics {sorted(report.metrics)} (evaluate.k is {data.k})")
    return float(report.metrics[metric])


def pruning_callback(trial: optuna.Trial, metric: str,
                     run: tracking.RunLogger | None = None) -> OnEpoch:
    """An `on_epoch` that logs each epoch to the trial's run and reports its validation
    score to the pruner: `val_<metric>`, else its sampled counterpart for a full_ metric
    (full ranking is not run per epoch). Pre-training phases (prefixed keys) are not
    reported: their epochs would collide with the fine-tuning's. Raises TrialPruned when
    the pruner says so."""
    keys = (f"val_{metric}", f"val_{metric.removeprefix('full_')}")

    def on_epoch(epoch: int, metrics: dict[str, float]) -> None:
        if run is not None:
            run.log_metrics(metrics, step=epoch)
        key = next((name for name in keys if name in metrics), None)
        if key is None:
            return
        trial.report(float(metrics[key]), epoch)
        if trial.should_prune():
            raise optuna.TrialPruned(f"epoch {epoch}: validation {key} {metrics[key]:.4f} "
                                     "below the median of earlier trials")

    return on_epoch


def _objective(family_name: str, cfg: NCFConfig, data: ProtocolData, *, metric: str,
               parent: str, run_name: str, runs: list[str],
               builder: Builder) -> Callable[[optuna.Trial], float]:
    def objective(trial: optuna.Trial) -> float:
        overrides = builder.space(family_name)(trial)
        tags = {"mlflow.parentRunId": parent, "ncf.stage": "tune", "ncf.family": family_name,
                "ncf.trial": trial.number, "ncf.dataset": cfg.dataset}
        pruned: optuna.TrialPruned | None = None
        value = float("nan")
        started = time.perf_counter()
        with tracking.start_run(cfg.dataset, run_name=f"{run_name}-{family_name}-"
                                f"{trial.number}", tags=tags) as run:
            runs.append(run.run_id)
            trial.set_user_attr("run_id", run.run_id)
            run.log_params(trial.params)
            family = builder.family(family_name, overrides,
                                    on_epoch=pruning_callback(trial, metric, run))
            try:
                value = validation_score(family, data, metric)
            except optuna.TrialPruned as exc:  # the run ends FINISHED, tagged pruned
                pruned = exc
                run.set_tags({"ncf.trial_state": "pruned", "ncf.pruned": exc})
            else:
                run.log_metrics({f"val_{metric}": value})
                run.set_tags({"ncf.trial_state": "complete"})
            run.log_metrics({"seconds": time.perf_counter() - started})
        log.info("tune %s trial %d %s (%.1f s): %s", family_name, trial.number,
                 f"pruned, {pruned}" if pruned else f"validation {metric} {value:.4f}",
                 time.perf_counter() - started, trial.params)
        if pruned is not None:
            raise pruned
        return value

    return objective


def tune_family(name: str, cfg: NCFConfig, data: ProtocolData, *, trials: int, seed: int,
                parent: str, run_name: str, builder: Builder) -> dict[str, Any]:
    """One study of `trials` trials for family `name`; its best settings as config sections.
    A family that cannot run on this data (FamilySkipped) is returned with the reason."""
    metric = cfg.candidates.select_metric
    study = optuna.create_study(
        direction="maximize", study_name=f"{run_name}-{name}",
        sampler=optuna.samplers.TPESampler(seed=seed),
        pruner=optuna.pruners.MedianPruner(n_startup_trials=PRUNE_STARTUP_TRIALS,
                                           n_warmup_steps=PRUNE_WARMUP_EPOCHS))
    runs: list[str] = []
    started = time.perf_counter()
    entry: dict[str, Any] = {"metric": metric, "trials": trials, "runs": runs, "skipped": None,
                             "best_value": None, "best_params": {}, "sections": {}}
    try:
        study.optimize(_objective(name, cfg, data, metric=metric, parent=parent,
                                  run_name=run_name, runs=runs, builder=builder),
                       n_trials=trials)
    except FamilySkipped as exc:
        log.warning("tune %s skipped: %s", name, exc)
        entry["skipped"] = str(exc)
    states = [trial.state for trial in study.trials]
    entry["complete"] = states.count(optuna.trial.TrialState.COMPLETE)
    entry["pruned"] = states.count(optuna.trial.TrialState.PRUNED)
    entry["seconds"] = round(time.perf_counter() - started, 3)
    if entry["complete"]:
        best = study.best_trial
        # The best trial's values replayed through the search space: the same overrides.
        overrides = builder.space(name)(optuna.trial.FixedTrial(best.params))
        entry |= {"best_value": float(best.values[0]), "best_params": dict(best.params),
                  "best_run": best.user_attrs["run_id"],
                  "sections": builder.sections(overrides)}
    return entry


def without_test(data: ProtocolData) -> ProtocolData:
    """`data` with its test pairs and positives emptied: tuning has no way to read them."""
    empty = Pairs(torch.empty(0, dtype=torch.int64), torch.empty(0, dtype=torch.int64),
                  torch.empty(0, dtype=torch.float32))
    return dataclasses.replace(data, test=empty.to(data.device), positives={
        name: pairs for name, pairs in data.positives.items() if name != "test"})


def load_data(cfg: NCFConfig, paths: layout.LakePaths, device: torch.device) -> ProtocolData:
    """The lake run's ProtocolData as the candidates stage loads it, test dropped."""
    prepared = manifest_entry(paths, "prepare", "tune")
    return without_test(protocol_data(cfg, paths, device, prepared))


def tune(cfg: NCFConfig, data: ProtocolData, *, logical_date: str, families: Sequence[str],
         trials: int, seed: int = 0,
         sequences: tuple[Tensor, Tensor, Tensor] | None = None,
         als: AlsTrials | None = None) -> dict[str, Any]:
    """One study per family in `families`, each of `trials` trials (a fair budget), under
    one MLflow parent run. Returns {"parent_run_id", "metric", "families": {name: {
    best_value, best_params, sections (config sections to paste), trials, complete, pruned,
    seconds, runs, skipped}}}."""
    if trials < 1:
        raise ValueError(f"trials must be >= 1, got {trials}")
    unknown = [name for name in families if name not in SPACES]
    if unknown:
        raise ValueError(f"families {unknown} cannot be tuned: choose among {list(TUNABLE)}")
    if "als" in families and als is None:
        raise ValueError("tuning als needs AlsTrials (the dataset config and the lake run)")
    from_config = ConfigFamilies(cfg, sequences)
    metric = cfg.candidates.select_metric
    if metric.startswith("full_") and not data.full_ranking:
        raise ValueError(f"candidates.select_metric {metric!r} needs evaluate.full_ranking")
    run_name = f"{cfg.dataset}-{logical_date}-tune"
    tags = {"ncf.stage": "tune", "ncf.dataset": cfg.dataset, "ncf.logical_date": logical_date}
    with tracking.start_run(cfg.dataset, run_name=run_name, tags=tags) as run:
        run.log_params({"tune": {"families": ",".join(families), "trials": trials,
                                 "seed": seed, "select_metric": metric}})
        parent = run.run_id
    # The parent is closed while the children run: MLflow allows one active run, and the
    # children name their parent by the mlflow.parentRunId tag.
    results = {name: tune_family(name, cfg, data, trials=trials, seed=seed, parent=parent,
                                 run_name=run_name,
                                 builder=als if name == "als" and als else from_config)
               for name in families}
    with tracking.start_run(cfg.dataset, run_name="", run_id=parent) as run:
        run.log_metrics({f"{name}_best_val_{metric}": entry["best_value"]
                         for name, entry in results.items() if entry["best_value"] is not None})
        run.log_dict({"metric": metric, "families": results}, "tune.json")
    return {"parent_run_id": parent, "metric": metric, "families": results}


def format_yaml(result: Mapping[str, Any]) -> str:
    """Per family a comment with the study's result and the config sections to paste."""
    blocks = []
    for name, entry in result["families"].items():
        if entry["skipped"] is not None:
            blocks.append(f"# {name}: skipped: {entry['skipped']}\n")
            continue
        header = (f"# {name}: {entry['complete']} complete, {entry['pruned']} pruned of "
                  f"{entry['trials']} trials in {entry['seconds']:.1f} s")
        if entry["best_value"] is None:
            blocks.append(f"{header}; none completed\n")
            continue
        header += f"; best validation {entry['metric']} {entry['best_value']:.4f}"
        body = yaml.safe_dump(entry["sections"], sort_keys=False, default_flow_style=None)
        blocks.append(f"{header}\n{body}")
    return "\n".join(blocks)


def main(argv: Sequence[str] | None = None) -> int:
    parser = stage_parser(
        "tune each family's settings on validation (Optuna, seeded TPE, median pruning); "
        "the lake must already hold --logical-date (`make run DATE=...` writes it)")
    parser.prog = "python -m ncf_model.tune"
    parser.add_argument("--trials", type=int, default=20, help="trials per family (default 20)")
    parser.add_argument("--families", nargs="+", choices=TUNABLE,
                        help="default: those of candidates.families that can be tuned")
    parser.add_argument("--seed", type=int, default=0, help="the sampler's seed (default 0)")
    parser.add_argument("--device", help="cuda, cuda:1, cpu (default: CUDA when available)")
    args = parser.parse_args(argv)
    configure_logging()
    optuna.logging.set_verbosity(optuna.logging.WARNING)  # one log line per trial is ours
    threads = os.environ.get(ENV_TORCH_THREADS)
    if threads:
        torch.set_num_threads(int(threads))
    cfg = load_ncf_config(args.config)
    paths = layout.LakePaths(lake_root(args.lake_root), cfg.dataset, args.logical_date)
    families = args.families or [n for n in cfg.candidates.families if n in TUNABLE]
    try:
        data = load_data(cfg, paths, select_device(args.device))
    except StageError as exc:
        log.error("%s (make run DATE=%s writes it)", exc, paths.logical_date)
        return 2
    sequences = load_sequences(paths) if {"sasrec", "ease"} & set(families) else None
    result = tune(cfg, data, logical_date=paths.logical_date, families=families,
                  trials=args.trials, seed=args.seed, sequences=sequences,
                  als=AlsTrials.load(args.config, paths) if "als" in families else None)
    sys.stdout.write(format_yaml(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
