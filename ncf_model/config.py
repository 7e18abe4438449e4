"""Model-side configuration sections (`model`, `train`, `evaluate`, `recommend`, `mf`,
`ease`; `candidates` is shared with the data side and owned by jobs.lake.config).

Loaded from the same `configs/<dataset>.yaml` as the data jobs, with the same strict
loader (`jobs.lake.config`, which imports no pyspark).
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

from jobs.lake.config import CandidatesConfig, PublishConfig
from jobs.lake.loader import build_section, check_field, load_sections, read_yaml

MODEL_KINDS = ("gmf", "mlp", "neumf", "mf", "hybrid")
NEGATIVE_MODES = ("resample", "lake")
LOSSES = ("bce", "bpr")
OPTIMIZERS = ("adam", "sgd")


@dataclasses.dataclass(frozen=True)
class ModelConfig:
    """Architecture. `factors` is the GMF (and MF) embedding size; the MLP tower's input is
    `mlp_layers[0]`, i.e. user and item MLP embeddings of `mlp_layers[0] // 2` each.

    kind "mf" is a plain dot product with user, item and global biases (Rendle et al. 2020);
    "hybrid" is NeuMF whose user and item vectors add embedded side features, so it also
    scores users and items it never saw (see ncf_model.features).
    """

    kind: str = "neumf"
    factors: int = 32
    mlp_layers: tuple[int, ...] = (64, 32, 16, 8)
    dropout: float = 0.0
    batch_norm: bool = False  # BatchNorm1d after each Linear of the MLP tower
    # neumf only: train GMF, then MLP (each its best validation epoch), start NeuMF from
    # them (head mixed by pretrain_alpha), then fine-tune with train.finetune_optimizer.
    pretrain: bool = False
    pretrain_alpha: float = 0.5
    # hybrid only: the probability, per training pair, of replacing the user id (and,
    # independently, the item id) by the out-of-vocabulary row, so that feature-only
    # vectors are learned for the users and items a later day brings.
    id_dropout: float = 0.1

    def __post_init__(self) -> None:
        check_field(self.kind in MODEL_KINDS, "kind", f"{self.kind!r} is not one of {MODEL_KINDS}")
        check_field(self.factors >= 1, "factors", "must be >= 1")
        check_field(len(self.mlp_layers) >= 1 and all(n >= 1 for n in self.mlp_layers),
               "mlp_layers", "must be a non-empty list of positive sizes")
        check_field(self.mlp_layers[0] % 2 == 0, "mlp_layers",
               "the first size must be even (user and item embeddings are half each)")
        check_field(0.0 <= self.dropout < 1.0, "dropout", "must be in [0, 1)")
        check_field(not self.pretrain or self.kind == "neumf", "pretrain",
                    f"only kind neumf is pre-trained (from GMF and MLP), not {self.kind!r}")
        check_field(0.0 <= self.pretrain_alpha <= 1.0, "pretrain_alpha", "must be in [0, 1]")
        check_field(0.0 <= self.id_dropout < 1.0, "id_dropout", "must be in [0, 1)")


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    """Optimisation. The best epoch is chosen on validation HR@k, never on test."""

    epochs: int = 20
    batch_size: int = 1024  # rows per step; with loss bpr, (positive, negative) pairs per step
    lr: float = 0.001
    weight_decay: float = 0.0
    optimizer: str = "adam"
    loss: str = "bce"  # bce: pointwise, label 1/0; bpr: -log sigmoid(s(u, i+) - s(u, i-))
    negatives: str = "resample"  # resample on the device each epoch, or use the lake's as-is
    n_negatives: int = 8  # per positive when resampling
    patience: int = 5  # epochs without a better validation HR@k before stopping
    k: int = 10
    seed: int = 42
    # model.pretrain: the optimiser and learning rate that fine-tune NeuMF after it starts
    # from GMF and MLP. The paper uses plain SGD: Adam's moment estimates are not carried
    # over from the pre-training, and a fresh Adam's first steps undo it.
    finetune_optimizer: str = "sgd"
    finetune_lr: float = 0.1  # ML-100K, 5 epochs: 0.01 barely moves NeuMF, 0.1-1.0 improve it

    def __post_init__(self) -> None:
        check_field(self.epochs >= 1, "epochs", "must be >= 1")
        check_field(self.batch_size >= 1, "batch_size", "must be >= 1")
        check_field(self.lr > 0, "lr", "must be > 0")
        check_field(self.weight_decay >= 0, "weight_decay", "must be >= 0")
        check_field(self.optimizer in OPTIMIZERS, "optimizer",
                    f"{self.optimizer!r} is not one of {OPTIMIZERS}")
        check_field(self.loss in LOSSES, "loss", f"{self.loss!r} is not one of {LOSSES}")
        check_field(self.negatives in NEGATIVE_MODES, "negatives",
               f"{self.negatives!r} is not one of {NEGATIVE_MODES}")
        check_field(self.loss != "bpr" or self.negatives == "resample", "loss",
                    "bpr pairs each positive with its own sampled negatives: use "
                    "negatives: resample (the lake's negatives are not paired)")
        check_field(self.n_negatives >= 1, "n_negatives", "must be >= 1")
        check_field(self.patience >= 1, "patience", "must be >= 1")
        check_field(self.k >= 1, "k", "must be >= 1")
        check_field(self.finetune_optimizer in OPTIMIZERS, "finetune_optimizer",
                    f"{self.finetune_optimizer!r} is not one of {OPTIMIZERS}")
        check_field(self.finetune_lr > 0, "finetune_lr", "must be > 0")


REFUSAL_ACTIONS = ("skip", "serve_champion")


@dataclasses.dataclass(frozen=True)
class EvaluateConfig:
    """Metrics and the champion gate. The gate compares validation scores only (the
    candidates' selection metric): a new model becomes `champion` when its score clears
    `min_score` and is at most `tolerance` below that of the champion's family refitted on
    today's data (docs/DESIGN.md, "The champion gate").

    When it does not: `skip` publishes nothing new (the table keeps its set); with
    `serve_champion` recommend and publish run with the current champion on today's data.
    """

    k: int = 10
    min_score: float = 0.0  # absolute floor on the validation selection metric
    tolerance: float = 0.01  # how much worse than the champion's score is still accepted
    on_refusal: str = "skip"
    # Full-ranking metrics (full_hr_k, full_ndcg_k, full_recall_k) beside the sampled ones:
    # every unseen item scored for each test user, chunk_users users at a time.
    full_ranking: bool = True
    chunk_users: int = 256
    # Past this many evaluated users, full ranking ranks a sample of this many drawn with
    # full_ranking_seed (the same users for every family; metric full_sampled_users);
    # null: every user. ML-20M's 138k users x 26.7k items is 3.7G scores per split.
    full_ranking_max_users: int | None = 50_000
    full_ranking_seed: int = 0

    def __post_init__(self) -> None:
        check_field(self.k >= 1, "k", "must be >= 1")
        check_field(0.0 <= self.min_score <= 1.0, "min_score", "must be in [0, 1]")
        check_field(0.0 <= self.tolerance <= 1.0, "tolerance", "must be in [0, 1]")
        check_field(self.on_refusal in REFUSAL_ACTIONS, "on_refusal",
                    f"{self.on_refusal!r} is not one of {REFUSAL_ACTIONS}")
        check_field(self.chunk_users >= 1, "chunk_users", "must be >= 1")
        check_field(self.full_ranking_max_users is None or self.full_ranking_max_users >= 1,
                    "full_ranking_max_users", "must be >= 1, or null for every user")


@dataclasses.dataclass(frozen=True)
class RecommendConfig:
    k: int = 10
    chunk_users: int = 1024  # users scored at once against all items (bounds memory)

    def __post_init__(self) -> None:
        check_field(self.k >= 1, "k", "must be >= 1")
        check_field(self.chunk_users >= 1, "chunk_users", "must be >= 1")


@dataclasses.dataclass(frozen=True)
class MFConfig:
    """The `mf` section: a dot-product MF (model kind mf) trained by `train()` with
    resampled negatives, its epoch chosen on validation HR@k like NCF's.

    The defaults were tuned on MovieLens-100K's validation split (see configs/ml-100k.yaml).
    """

    factors: int = 64
    epochs: int = 30
    batch_size: int = 1024
    lr: float = 0.001
    weight_decay: float = 0.0
    loss: str = "bce"
    n_negatives: int = 8
    patience: int = 5
    seed: int = 42

    def __post_init__(self) -> None:
        # The same checks as the NCF sections, naming this section's fields.
        self.model_config()
        self.train_config(k=10)

    def model_config(self) -> ModelConfig:
        return ModelConfig(kind="mf", factors=self.factors)

    def train_config(self, k: int) -> TrainConfig:
        return TrainConfig(epochs=self.epochs, batch_size=self.batch_size, lr=self.lr,
                           weight_decay=self.weight_decay, loss=self.loss,
                           negatives="resample", n_negatives=self.n_negatives,
                           patience=self.patience, k=k, seed=self.seed)


SASREC_LOSSES = ("bce", "sampled_softmax", "softmax")


@dataclasses.dataclass(frozen=True)
class SASRecTrainConfig:
    """How SASRec is trained (the paper's settings where it gives them: Adam at 1e-3,
    batches of 128 sequences); `ncf_model.train_sasrec`."""

    epochs: int = 200
    batch_size: int = 128  # sequences
    lr: float = 1e-3
    weight_decay: float = 0.0
    patience: int = 20  # epochs without a better `monitor` before stopping
    loss: str = "bce"  # bce (one negative per position), sampled_softmax or softmax (all items)
    n_negatives: int = 100  # per batch, sampled_softmax only (bce draws one per position)
    monitor: str = "hr_10"  # validate()'s key that picks the best epoch (higher is better)
    compile: bool = False  # torch.compile the model on CUDA (ignored on the CPU)

    def __post_init__(self) -> None:
        for name in ("epochs", "batch_size", "patience", "n_negatives"):
            check_field(getattr(self, name) >= 1, name, "must be >= 1")
        check_field(self.lr > 0, "lr", "must be > 0")
        check_field(self.weight_decay >= 0, "weight_decay", "must be >= 0")
        check_field(self.loss in SASREC_LOSSES, "loss",
                    f"{self.loss!r} is not one of {SASREC_LOSSES}")


@dataclasses.dataclass(frozen=True)
class SASRecConfig:
    """The `sasrec` section: SASRec (Kang & McAuley, ICDM 2018) over each user's training
    positives in time order (sequences/ of the lake), the epoch chosen on validation."""

    max_len: int = 200  # the latest items of a history the model reads
    # Train on the whole history, in windows of max_len + 1 items overlapping by one
    # (models.sasrec.build_windows), not only on its latest max_len + 1 items. The lake
    # keeps prepare.sequence_length items of a history: raise it to give windows more.
    # A bce negative then avoids the items of its own window (not the whole history).
    windows: bool = False
    hidden: int = 64
    n_blocks: int = 2
    n_heads: int = 1
    dropout: float = 0.2
    epochs: int = 200
    batch_size: int = 128
    lr: float = 1e-3
    weight_decay: float = 0.0
    patience: int = 20
    loss: str = "bce"
    n_negatives: int = 100
    compile: bool = False
    seed: int = 42

    def __post_init__(self) -> None:
        for name in ("max_len", "hidden", "n_blocks", "n_heads"):
            check_field(getattr(self, name) >= 1, name, "must be >= 1")
        check_field(self.hidden % self.n_heads == 0, "n_heads", "must divide hidden")
        check_field(0.0 <= self.dropout < 1.0, "dropout", "must be in [0, 1)")
        self.train_config(k=10)  # the training fields' checks, naming them

    def shape(self) -> dict[str, int | float]:
        """The architecture: SASRec's keyword arguments (checkpoints rebuild it from this)."""
        return {"max_len": self.max_len, "hidden": self.hidden, "n_blocks": self.n_blocks,
                "n_heads": self.n_heads, "dropout": self.dropout}

    def train_config(self, k: int) -> SASRecTrainConfig:
        return SASRecTrainConfig(epochs=self.epochs, batch_size=self.batch_size, lr=self.lr,
                                 weight_decay=self.weight_decay, patience=self.patience,
                                 loss=self.loss, n_negatives=self.n_negatives,
                                 monitor=f"hr_{k}", compile=self.compile)


# EASE^R's lambda grid: Steck (WWW 2019) reports lambda ~ 500 on ML-20M; small datasets
# prefer smaller ones, and the grid is cheap (one closed form per value).
DEFAULT_L2_GRID = (50.0, 100.0, 200.0, 500.0, 1000.0, 2000.0)


@dataclasses.dataclass(frozen=True)
class EaseConfig:
    """The `ease` section: EASE^R's lambda grid (chosen on validation), the memory it may
    take (about 3 x n_items^2 floats: ML-20M's 26,744 items need 8.6 GB; about one with
    fewer users than items, solved on the users' side) and the time its
    fits may take (estimated on the device first). Over either limit, the family is skipped
    with the reason logged; the other candidates go on."""

    l2_grid: tuple[float, ...] = DEFAULT_L2_GRID
    # Recency-weighted scoring: a user's item weighs 0.5 ** (age / half_life) in X[u] @ B,
    # age = how many of the user's positives are later (time order from sequences/). Each
    # half-life is tried with each lambda on validation, beside the binary X (always a
    # choice); without sequences/ (no timestamps) only the binary X. Empty: binary only.
    half_life_grid: tuple[float, ...] = (5.0, 10.0, 20.0, 50.0, 100.0)
    max_memory_gb: float = 8.0
    # The fits' time budget: len(l2_grid) + 2 fits (the grid, the refit for test, the
    # served refit), estimated before the first; over it the family is skipped with the
    # reason. None: no limit. ML-20M's 26,744 items: ~28 min estimated on 2 CPU cores.
    max_minutes: float | None = 20.0

    def __post_init__(self) -> None:
        check_field(bool(self.l2_grid) and all(value > 0 for value in self.l2_grid),
                    "l2_grid", "must hold at least one lambda, each > 0")
        check_field(all(value > 0 for value in self.half_life_grid), "half_life_grid",
                    "each half-life must be > 0 (items)")
        check_field(self.max_memory_gb > 0, "max_memory_gb", "must be > 0")
        check_field(self.max_minutes is None or self.max_minutes > 0, "max_minutes",
                    "must be > 0, or null for no limit")


@dataclasses.dataclass(frozen=True)
class NCFConfig:
    dataset: str
    model: ModelConfig
    train: TrainConfig
    evaluate: EvaluateConfig
    recommend: RecommendConfig
    candidates: CandidatesConfig = dataclasses.field(default_factory=CandidatesConfig)
    mf: MFConfig = dataclasses.field(default_factory=MFConfig)
    ease: EaseConfig = dataclasses.field(default_factory=EaseConfig)
    sasrec: SASRecConfig = dataclasses.field(default_factory=SASRecConfig)
    # The registered model: publish.model_name (the one key the table and the registry
    # share, owned by the data side's PublishConfig), else ncf-<dataset>.
    model_name: str = ""

    def __post_init__(self) -> None:
        if not self.model_name:
            object.__setattr__(self, "model_name", f"ncf-{self.dataset}")


def load_ncf_config(path: str | Path) -> NCFConfig:
    publish = build_section(PublishConfig, read_yaml(path).get("publish"), f"{path}: publish")
    return load_sections(NCFConfig, path, model_name=publish.model_name or "")
