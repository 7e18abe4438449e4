"""Model-side configuration sections (`model`, `train`, `evaluate`, `recommend`).

Loaded from the same `configs/<dataset>.yaml` as the data jobs, with the same strict
loader (`jobs.config`, which imports no pyspark).
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

from jobs.config import build_section, check_field, read_yaml

MODEL_KINDS = ("gmf", "mlp", "neumf")
NEGATIVE_MODES = ("resample", "lake")


@dataclasses.dataclass(frozen=True)
class ModelConfig:
    """Architecture. `factors` is the GMF embedding size; the MLP tower's input is
    `mlp_layers[0]`, i.e. user and item MLP embeddings of `mlp_layers[0] // 2` each."""

    kind: str = "neumf"
    factors: int = 32
    mlp_layers: tuple[int, ...] = (64, 32, 16, 8)
    dropout: float = 0.0

    def __post_init__(self) -> None:
        check_field(self.kind in MODEL_KINDS, "kind", f"{self.kind!r} is not one of {MODEL_KINDS}")
        check_field(self.factors >= 1, "factors", "must be >= 1")
        check_field(len(self.mlp_layers) >= 1 and all(n >= 1 for n in self.mlp_layers),
               "mlp_layers", "must be a non-empty list of positive sizes")
        check_field(self.mlp_layers[0] % 2 == 0, "mlp_layers",
               "the first size must be even (user and item embeddings are half each)")
        check_field(0.0 <= self.dropout < 1.0, "dropout", "must be in [0, 1)")


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    """Optimisation. The best epoch is chosen on validation HR@k, never on test."""

    epochs: int = 20
    batch_size: int = 1024
    lr: float = 0.001
    weight_decay: float = 0.0
    negatives: str = "resample"  # resample on the device each epoch, or use the lake's as-is
    n_negatives: int = 8  # per positive when resampling
    patience: int = 5  # epochs without a better validation HR@k before stopping
    k: int = 10
    seed: int = 42

    def __post_init__(self) -> None:
        check_field(self.epochs >= 1, "epochs", "must be >= 1")
        check_field(self.batch_size >= 1, "batch_size", "must be >= 1")
        check_field(self.lr > 0, "lr", "must be > 0")
        check_field(self.weight_decay >= 0, "weight_decay", "must be >= 0")
        check_field(self.negatives in NEGATIVE_MODES, "negatives",
               f"{self.negatives!r} is not one of {NEGATIVE_MODES}")
        check_field(self.n_negatives >= 1, "n_negatives", "must be >= 1")
        check_field(self.patience >= 1, "patience", "must be >= 1")
        check_field(self.k >= 1, "k", "must be >= 1")


REFUSAL_ACTIONS = ("skip", "serve_champion")


@dataclasses.dataclass(frozen=True)
class EvaluateConfig:
    """Test metrics and the champion gate: a new model becomes `champion` when its test HR@k
    clears `min_hr` and is at most `tolerance` below the current champion's on the same split.

    When it does not: `skip` publishes nothing new (the table keeps its set); with
    `serve_champion` recommend and publish run with the current champion on today's data.
    """

    k: int = 10
    min_hr: float = 0.0  # absolute floor on test HR@k
    tolerance: float = 0.01  # how much worse than the champion's HR@k is still accepted
    on_refusal: str = "skip"

    def __post_init__(self) -> None:
        check_field(self.k >= 1, "k", "must be >= 1")
        check_field(0.0 <= self.min_hr <= 1.0, "min_hr", "must be in [0, 1]")
        check_field(0.0 <= self.tolerance <= 1.0, "tolerance", "must be in [0, 1]")
        check_field(self.on_refusal in REFUSAL_ACTIONS, "on_refusal",
                    f"{self.on_refusal!r} is not one of {REFUSAL_ACTIONS}")


@dataclasses.dataclass(frozen=True)
class RecommendConfig:
    k: int = 10
    chunk_users: int = 1024  # users scored at once against all items (bounds memory)

    def __post_init__(self) -> None:
        check_field(self.k >= 1, "k", "must be >= 1")
        check_field(self.chunk_users >= 1, "chunk_users", "must be >= 1")


@dataclasses.dataclass(frozen=True)
class NCFConfig:
    dataset: str
    model: ModelConfig
    train: TrainConfig
    evaluate: EvaluateConfig
    recommend: RecommendConfig


def load_ncf_config(path: str | Path) -> NCFConfig:
    raw = read_yaml(path)
    where = str(path)
    return NCFConfig(
        dataset=raw["dataset"],
        model=build_section(ModelConfig, raw.get("model"), f"{where}: model"),
        train=build_section(TrainConfig, raw.get("train"), f"{where}: train"),
        evaluate=build_section(EvaluateConfig, raw.get("evaluate"), f"{where}: evaluate"),
        recommend=build_section(RecommendConfig, raw.get("recommend"), f"{where}: recommend"),
    )
