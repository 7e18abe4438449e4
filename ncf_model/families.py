"""Candidate model families under one protocol, so that the served model is the best the
data supports and every family is judged the same way (docs/DESIGN.md, "Serving the best
model"):

    (a) select  fit on train/ positives, settings (epochs, lambda, ...) chosen on validation/
    (b) refit   the same settings on train + validation positives: its test/ metrics are
                the reported ones (no model ever saw a test event)
    (c) refit   the same settings on every positive up to the as-of cut: the served model

A `Family` implements `select` (a) and `refit` (b, c); `ncf_model.stages.candidates` runs
the protocol, picks the family with the best validation score and writes the served model.
Families: ncf (the flagship: model/ and train/ sections; its (a) is the train task's
model), mf, ease (EASE^R), als (Spark MLlib factors from jobs/als.py) and popularity.
"""

from __future__ import annotations

import dataclasses
import logging
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

import torch
from torch import Tensor, nn

from jobs.lake.loader import build_section
from ncf_model.config import EaseConfig, MFConfig, ModelConfig, SASRecConfig, TrainConfig
from ncf_model.data import FullRanking, Pairs, TrainingData
from ncf_model.evaluate import evaluate
from ncf_model.features import SideFeatures
from ncf_model.models.baselines import popularity_scorer
from ncf_model.models.ease import EASE, fit_best_l2, fit_ease
from ncf_model.models.ease_limits import (
    EaseMemoryError,
    EaseTimeError,
    check_ease_memory,
    check_ease_time,
)
from ncf_model.models.sasrec import SASRec, build_histories, build_windows
from ncf_model.recency import positive_ages, recency_weights, timeline
from ncf_model.train import TrainResult, fit, refit
from ncf_model.train_sasrec import pairs_validator, train_sasrec

log = logging.getLogger(__name__)

# The splits whose positives each protocol step trains on.
SELECT_ON = ("train",)
TEST_ON = ("train", "validation")
SERVE_ON = ("train", "validation", "test")


class FamilySkipped(RuntimeError):
    """A family cannot run on this data (e.g. EASE^R over its memory limit): the reason is
    logged and recorded, and the other families go on."""


@dataclass
class ProtocolData:
    """What every family fits and is scored on: the positives of each split (CPU) and the
    evaluation pairs (validation/ and test/ with their sampled negatives, on the device)."""

    positives: Mapping[str, Pairs]  # "train", "validation", "test": label-1 pairs, CPU
    validation: Pairs
    test: Pairs
    n_users: int
    n_items: int
    k: int
    device: torch.device
    full_ranking: bool = True
    chunk_users: int = 256
    full_ranking_max_users: int | None = None  # evaluate.full_ranking_max_users
    full_ranking_seed: int = 0

    def union(self, splits: tuple[str, ...]) -> Pairs:
        """The positives of `splits`, one Pairs (label 1), on the CPU."""
        parts = [self.positives[name] for name in splits]
        return Pairs(torch.cat([p.user for p in parts]), torch.cat([p.item for p in parts]),
                     torch.cat([p.label for p in parts]))

    _full: dict[tuple[str, ...], FullRanking] = field(default_factory=dict, init=False,
                                                      repr=False)

    def full(self, seen: tuple[str, ...]) -> FullRanking | None:
        """Full-ranking evaluation with the positives of `seen` as the items never ranked;
        built once per `seen` (every family is scored against the same one)."""
        if not self.full_ranking:
            return None
        if seen not in self._full:
            pairs = self.union(seen)
            self._full[seen] = FullRanking(self.n_items, pairs.user, pairs.item,
                                           chunk_users=self.chunk_users,
                                           max_users=self.full_ranking_max_users,
                                           seed=self.full_ranking_seed)
        return self._full[seen]


@dataclass
class Selected:
    """The outcome of (a): a scorer fitted on train, and the settings (b) and (c) reuse."""

    scorer: nn.Module
    settings: dict[str, Any]  # e.g. {"epochs": {"model": 12}}, {"l2": 200.0}
    metrics: dict[str, float] = field(default_factory=dict)  # e.g. best_epoch, per-lambda
    history: list[dict[str, float]] = field(default_factory=list)  # per epoch, for plots


class Family(Protocol):
    name: str

    def recipe(self) -> dict[str, Any]:
        """What, with the settings (a) chose, rebuilds this family's model on other data:
        the gate refits the champion's recipe on today's train (ncf_model.stages.evaluate)."""
        ...

    def select(self, data: ProtocolData) -> Selected: ...

    def refit(self, data: ProtocolData, splits: tuple[str, ...],
              settings: Mapping[str, Any]) -> nn.Module: ...


def _training_data(data: ProtocolData, splits: tuple[str, ...]) -> TrainingData:
    return TrainingData(data.union(splits).to(data.device), n_users=data.n_users,
                        n_items=data.n_items)


@dataclass
class Popularity:
    """score(u, i) = the item's positives among the fitted splits; nothing to choose."""

    name: str = "popularity"

    def recipe(self) -> dict[str, Any]:
        return {"family": self.name}

    def select(self, data: ProtocolData) -> Selected:
        return Selected(self.refit(data, SELECT_ON, {}), {})

    def refit(self, data: ProtocolData, splits: tuple[str, ...],
              settings: Mapping[str, Any]) -> nn.Module:
        return popularity_scorer(data.union(splits), data.n_items).eval()


@dataclass
class Trained:
    """A family trained by `ncf_model.train` (MF, or the flagship NCF): (a) early stopping on
    validation picks each phase's epochs; (b) and (c) train exactly that many epochs.

    `selected` (the train task's model and its best epochs) skips (a) for the flagship,
    which the train task has already fitted (with resume after a kill)."""

    name: str
    model_cfg: ModelConfig
    train_cfg: TrainConfig
    features: SideFeatures | None = None
    on_epoch: Callable[[int, dict[str, float]], None] | None = None
    selected: Selected | None = None

    def recipe(self) -> dict[str, Any]:
        return {"family": self.name, "model": json_safe(self.model_cfg),
                "train": json_safe(self.train_cfg)}

    def select(self, data: ProtocolData) -> Selected:
        if self.selected is not None:
            return self.selected
        fitted = fit(self.model_cfg, self.train_cfg, _training_data(data, SELECT_ON),
                     data.validation, device=data.device, features=self.features,
                     on_epoch=self.on_epoch)
        best = {f"best_{key}": value for key, value in fitted.result.best_metrics.items()
                if key.startswith("val_")}
        return Selected(fitted.model.eval(), {"epochs": fitted.best_epochs()},
                        {**best, "best_epoch": float(fitted.result.best_epoch)},
                        fitted.result.history)

    def refit(self, data: ProtocolData, splits: tuple[str, ...],
              settings: Mapping[str, Any]) -> nn.Module:
        model = refit(self.model_cfg, self.train_cfg, _training_data(data, splits),
                      epochs=dict(settings["epochs"]), device=data.device,
                      features=self.features)
        return model.eval()


def mf_family(cfg: MFConfig, k: int,
              on_epoch: Callable[[int, dict[str, float]], None] | None = None) -> Trained:
    return Trained("mf", cfg.model_config(), cfg.train_config(k), on_epoch=on_epoch)


@dataclass
class _Scored:
    """One lambda's best model over the half-lives (see Ease.select)."""

    model: EASE
    half_life: float | None
    score: float


@dataclass
class Ease:
    """EASE^R (Steck, WWW 2019): closed form, lambda and the recency half-life (or none)
    chosen together on validation from their grids; its item-item fit needs ~3 x n_items^2
    floats (about one with fewer users than items), checked against `max_memory_gb` and
    `max_minutes` first. Recency needs the time order of sequences/: without it (or with
    an empty `half_life_grid`) X stays binary."""

    cfg: EaseConfig
    metric: str  # the validation metric lambda is chosen on, e.g. "ndcg_10"
    sequences: tuple[Tensor, Tensor, Tensor] | None = None  # (user, item, position), CPU
    name: str = "ease"

    def recipe(self) -> dict[str, Any]:
        return {"family": self.name}

    def _ages(self, data: ProtocolData, splits: tuple[str, ...], positives: Pairs) -> Tensor:
        assert self.sequences is not None  # checked by the callers
        return positive_ages(self.sequences, data.positives, splits, positives,
                             n_users=data.n_users, n_items=data.n_items)

    def _scorer(self, data: ProtocolData, weights: Tensor, positives: Pairs,
                values: Tensor | None) -> EASE:
        return EASE.from_pairs(weights, positives.user.to(data.device),
                               positives.item.to(data.device), data.n_users, values).eval()

    def select(self, data: ProtocolData) -> Selected:
        try:
            check_ease_memory(data.n_items, int(self.cfg.max_memory_gb * 1e9),
                              n_users=data.n_users, limit_key="ease.max_memory_gb")
            if self.cfg.max_minutes is not None:
                check_ease_time(data.n_items, len(self.cfg.l2_grid) + 2,
                                self.cfg.max_minutes * 60, device=data.device,
                                n_users=data.n_users, limit_key="ease.max_minutes")
        except (EaseMemoryError, EaseTimeError) as exc:
            raise FamilySkipped(str(exc)) from exc
        positives = data.union(SELECT_ON)
        recency = self.sequences is not None and bool(self.cfg.half_life_grid)
        ages = self._ages(data, SELECT_ON, positives) if recency else None
        half_lives = (None, *self.cfg.half_life_grid) if recency else (None,)
        scores: dict[str, float] = {}

        def best_half_life(l2: float) -> _Scored:
            weights = fit_ease(positives.user, positives.item, data.n_users, data.n_items,
                               l2=l2, device=data.device)
            best: _Scored | None = None
            for half_life in half_lives:  # ties go to the earlier: binary X, then shorter
                values = None if ages is None or half_life is None else recency_weights(
                    ages, half_life)
                model = self._scorer(data, weights, positives, values)
                score = float(evaluate(model, data.validation, data.k)[self.metric])
                if half_life is not None:
                    scores[f"val_{self.metric}_l2_{l2:g}_half_life_{half_life:g}"] = score
                if best is None or score > best.score or math.isnan(best.score):
                    best = _Scored(model, half_life, score)
            assert best is not None
            return best

        best, per_l2, scored = fit_best_l2(self.cfg.l2_grid, best_half_life,
                                           lambda fitted: fitted.score)
        log.info("ease: validation %s per lambda (best half-life each) %s -> lambda %g, "
                 "half-life %s", self.metric, {l2: round(v, 4) for l2, v in per_l2.items()},
                 best, scored.half_life)
        metrics = {f"val_{self.metric}_l2_{l2:g}": value for l2, value in per_l2.items()}
        return Selected(scored.model, {"l2": best, "half_life": scored.half_life},
                        {**metrics, **scores, "l2": best,
                         "half_life": float(scored.half_life or 0.0)})

    def refit(self, data: ProtocolData, splits: tuple[str, ...],
              settings: Mapping[str, Any]) -> nn.Module:
        positives = data.union(splits)
        weights = fit_ease(positives.user, positives.item, data.n_users, data.n_items,
                           l2=float(settings["l2"]), device=data.device)
        half_life = settings.get("half_life")  # absent in recipes from before recency
        values = None
        if half_life is not None:
            if self.sequences is None:
                raise ValueError(f"ease half_life {half_life} needs the time order of "
                                 "sequences/, which this lake run does not have")
            values = recency_weights(self._ages(data, splits, positives), float(half_life))
        return self._scorer(data, weights, positives, values)


@dataclass
class Sequential:
    """SASRec over each user's training positives in time order (sequences/ of the lake):
    (a) trained on the train sequences, its epoch chosen on validation (the validation item
    scored after the train history); (b) and (c) append the user's held-out validation
    (then test) item to the history, as time ordered them, and train exactly that many
    epochs."""

    cfg: SASRecConfig
    sequences: tuple[Tensor, Tensor, Tensor] | None  # (user, item, position), CPU
    on_epoch: Callable[[int, dict[str, float]], None] | None = None
    name: str = "sasrec"

    def recipe(self) -> dict[str, Any]:
        return {"family": self.name, "sasrec": json_safe(self.cfg)}

    def _histories(self, data: ProtocolData, splits: tuple[str, ...], length: int, *,
                   windows: bool = False) -> Tensor:
        """Each user's latest `length` tokens (one row per user), or with `windows` the
        training windows of the whole history (`build_windows`)."""
        assert self.sequences is not None  # checked by select
        build = build_windows if windows else build_histories
        return build(*timeline(self.sequences, data.positives, splits), data.n_users,
                     length).to(data.device)

    def _fit(self, data: ProtocolData, splits: tuple[str, ...], *,
             epochs: int | None) -> tuple[SASRec, TrainResult]:
        torch.manual_seed(self.cfg.seed)
        model = SASRec(data.n_users, data.n_items, **self.cfg.shape())  # type: ignore[arg-type]
        model.to(data.device).set_histories(self._histories(data, splits, self.cfg.max_len))
        train_cfg = self.cfg.train_config(data.k)
        if epochs is not None:  # a refit: exactly the epochs (a) chose, no validation
            train_cfg = dataclasses.replace(train_cfg, epochs=epochs, patience=epochs)
        generator = torch.Generator(device=data.device).manual_seed(self.cfg.seed)
        validate = pairs_validator(data.validation, data.k) if epochs is None else None
        train_seqs = self._histories(data, splits, self.cfg.max_len + 1,
                                     windows=self.cfg.windows)
        result = train_sasrec(model, train_seqs,
                              validate, train_cfg, device=data.device, generator=generator,
                              on_epoch=self.on_epoch if epochs is None else None,
                              name=f"sasrec {'+'.join(splits)}")
        return model.eval(), result

    def select(self, data: ProtocolData) -> Selected:
        if self.sequences is None:
            raise FamilySkipped("the lake has no sequences/ (prepare.sequence_length 0, or a "
                                "split other than leave_one_out): sasrec needs time order")
        model, result = self._fit(data, SELECT_ON, epochs=None)
        best = {f"best_{key}": value for key, value in result.best_metrics.items()
                if key.startswith("val_")}
        return Selected(model, {"epochs": result.best_epoch},
                        {**best, "best_epoch": float(result.best_epoch)}, result.history)

    def refit(self, data: ProtocolData, splits: tuple[str, ...],
              settings: Mapping[str, Any]) -> nn.Module:
        return self._fit(data, splits, epochs=int(settings["epochs"]))[0]


# The factors jobs/als.py fitted on a set of splits' positives, as a scorer.
FactorLoader = Callable[[tuple[str, ...]], nn.Module]


@dataclass
class Als:
    """Spark MLlib implicit ALS (jobs/als.py fits the factors on train, and on train +
    validation and all positives when refit is on); settings come from the `als:` section."""

    load: FactorLoader
    params: Mapping[str, Any]
    name: str = "als"

    def recipe(self) -> dict[str, Any]:
        return {"family": self.name, "params": json_safe(self.params)}

    def select(self, data: ProtocolData) -> Selected:
        return Selected(self.load(SELECT_ON).to(data.device).eval(), {})

    def refit(self, data: ProtocolData, splits: tuple[str, ...],
              settings: Mapping[str, Any]) -> nn.Module:
        return self.load(splits).to(data.device).eval()


def json_safe(value: Any) -> Any:
    if isinstance(value, Mapping):
        return {str(key): json_safe(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [json_safe(item) for item in value]
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return json_safe(dataclasses.asdict(value))
    return value


def from_recipe(recipe: Mapping[str, Any], *, ease: EaseConfig, metric: str,
                features: SideFeatures | None = None,
                sequences: tuple[Tensor, Tensor, Tensor] | None = None) -> Family | None:
    """The family a recipe describes, ready to `refit` with its settings; None for ALS,
    whose factors only the Spark job fits (its recipe is compared as a whole instead), and
    for SASRec on a lake without sequences/."""
    family = str(recipe["family"])
    if family in ("ncf", "mf"):
        where = f"recipe of {family}"
        return Trained(family, build_section(ModelConfig, recipe["model"], f"{where}: model"),
                       build_section(TrainConfig, recipe["train"], f"{where}: train"),
                       features=features if family == "ncf" else None)
    if family == "ease":
        if (recipe.get("settings") or {}).get("half_life") is not None and sequences is None:
            return None  # its recency weights need the time order this lake lacks
        return Ease(ease, metric, sequences)
    if family == "popularity":
        return Popularity()
    if family == "sasrec" and sequences is not None:
        return Sequential(build_section(SASRecConfig, recipe["sasrec"], "recipe of sasrec"),
                          sequences)
    return None
