"""Everything MLflow: the only module of the project that imports mlflow.

Training and evaluation code hand their numbers to the functions here. One MLflow
experiment per dataset (`ncf-<dataset>`), one run per DAG run, resumed by the
evaluate task; models are registered as `ncf-<dataset>` and the `champion` alias
is moved by an explicit threshold check (`promote_if_better`).

Settings (deployment, read here because this is the MLflow entry point):
  MLFLOW_TRACKING_URI       default sqlite:///<repo>/data/mlflow/mlflow.db
  NCF_MLFLOW_ARTIFACT_ROOT  where a new experiment keeps artifacts; default
                            <folder of the SQLite file>/artifacts for a local store
"""

from __future__ import annotations

import contextlib
import logging
import os
import warnings
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import mlflow
from mlflow.tracking import MlflowClient

log = logging.getLogger(__name__)

ENV_TRACKING_URI = "MLFLOW_TRACKING_URI"
ENV_ARTIFACT_ROOT = "NCF_MLFLOW_ARTIFACT_ROOT"
DEFAULT_TRACKING_DB = "data/mlflow/mlflow.db"
MODEL_ARTIFACT = "model"
CHAMPION = "champion"


def tracking_uri() -> str:
    uri = os.environ.get(ENV_TRACKING_URI)
    if uri:
        return uri
    return f"sqlite:///{Path(DEFAULT_TRACKING_DB).resolve()}"


def configure() -> str:
    """Point the MLflow client at the tracking store, creating a local SQLite folder if needed."""
    uri = tracking_uri()
    if uri.startswith("sqlite:///"):
        Path(uri.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)
    mlflow.set_tracking_uri(uri)
    # MLflow's own INFO chatter (alembic migrations, registry) drowns the task log.
    for name in ("mlflow", "alembic"):
        logging.getLogger(name).setLevel(logging.WARNING)
    return uri


def _artifact_root(uri: str) -> str | None:
    explicit = os.environ.get(ENV_ARTIFACT_ROOT)
    if explicit:
        return explicit
    if uri.startswith("sqlite:///"):
        return (Path(uri.removeprefix("sqlite:///")).parent / "artifacts").as_uri()
    return None  # a tracking server decides


def experiment_id(dataset: str) -> str:
    """The experiment `ncf-<dataset>`, created with an explicit artifact location."""
    uri = configure()
    name = f"ncf-{dataset}"
    found = mlflow.get_experiment_by_name(name)
    if found is not None:
        return str(found.experiment_id)
    root = _artifact_root(uri)
    location = f"{root}/{name}" if root else None
    return str(mlflow.create_experiment(name, artifact_location=location))


def _flatten(prefix: str, value: Any, out: dict[str, Any]) -> None:
    if isinstance(value, Mapping):
        for key, inner in value.items():
            _flatten(f"{prefix}.{key}" if prefix else str(key), inner, out)
    else:
        out[prefix] = value


def flatten_params(params: Mapping[str, Any]) -> dict[str, Any]:
    """{'train': {'lr': 1e-3}} -> {'train.lr': 1e-3}: config sections as MLflow params."""
    out: dict[str, Any] = {}
    _flatten("", params, out)
    return out


@dataclass
class RunLogger:
    """The handle training and evaluation get: numbers in, MLflow calls hidden."""

    run_id: str

    def log_params(self, params: Mapping[str, Any]) -> None:
        mlflow.log_params(flatten_params(params))

    def log_metrics(self, metrics: Mapping[str, float], step: int | None = None) -> None:
        mlflow.log_metrics({k: float(v) for k, v in metrics.items()}, step=step)

    def set_tags(self, tags: Mapping[str, Any]) -> None:
        mlflow.set_tags({k: str(v) for k, v in tags.items()})

    def log_dict(self, payload: Mapping[str, Any], artifact_file: str) -> None:
        mlflow.log_dict(dict(payload), artifact_file)

    def log_lineage(self, *, lake_path: Path, manifest_sha256: str, context: str) -> None:
        """Record which lake folder (and which manifest) the run read, as an MLflow dataset."""
        import pandas as pd
        from mlflow.data.pandas_dataset import from_pandas

        frame = pd.DataFrame({"lake_path": [str(lake_path)], "manifest_sha256": [manifest_sha256]})
        dataset = from_pandas(frame, source=str(lake_path), name=lake_path.name,
                              digest=manifest_sha256[:16])
        mlflow.log_input(dataset, context=context)
        self.set_tags({"ncf.lake_path": lake_path, "ncf.manifest_sha256": manifest_sha256})

    def log_torch_model(self, model: Any, input_example: Any) -> str:
        """Log a torch module (a PairScorer) as the run's model; returns its model URI."""
        import mlflow.pytorch

        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            info = mlflow.pytorch.log_model(model, name=MODEL_ARTIFACT,
                                            input_example=input_example,
                                            serialization_format="pt2")
        return str(info.model_uri)


@contextlib.contextmanager
def start_run(dataset: str, *, run_name: str, tags: Mapping[str, Any] | None = None,
              run_id: str | None = None) -> Iterator[RunLogger]:
    """Open a new run in `ncf-<dataset>`, or resume `run_id` (the evaluate task)."""
    exp = experiment_id(dataset)
    with mlflow.start_run(experiment_id=exp, run_id=run_id,
                          run_name=None if run_id else run_name) as run:
        handle = RunLogger(run.info.run_id)
        if tags:
            handle.set_tags(tags)
        yield handle


def register_model(model_uri: str, name: str, tags: Mapping[str, Any]) -> str:
    """Register a logged model (`models:/m-...`) as a new version of `name`; returns it."""
    configure()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        version = mlflow.register_model(model_uri, name,
                                        tags={k: str(v) for k, v in tags.items()})
    return str(version.version)


def promote_if_better(name: str, version: str, *, metric: str, value: float,
                      floor: float) -> tuple[bool, str]:
    """Move `champion` to `version` when `value` clears the absolute `floor`.

    Returns (promoted, reason); the reason is also written as a version tag so the
    MLflow UI says why a version did or did not become champion.
    """
    client = MlflowClient()
    if value < floor:
        promoted, reason = False, f"{metric}={value:.4f} is below the floor {floor:.4f}"
    else:
        client.set_registered_model_alias(name, CHAMPION, version)
        promoted, reason = True, f"{metric}={value:.4f} clears the floor {floor:.4f}"
    client.set_model_version_tag(name, version, "ncf.promotion", reason)
    log.info("model %s version %s: %s -> %s", name, version, reason,
             "champion" if promoted else "not promoted")
    return promoted, reason
