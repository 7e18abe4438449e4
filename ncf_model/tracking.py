"""Everything MLflow: the only module of the project that imports mlflow.

Training and evaluation code hand their numbers to the functions here. One MLflow
experiment per dataset (`ncf-<dataset>`), one NCF run per DAG run, resumed by the
evaluate task, beside one run per baseline (tagged `ncf.baseline`) with the same metric
names; models are registered as `ncf-<dataset>` and the `champion` alias is moved only
when evaluation's champion gate says so (`set_champion`). Plots (`ncf_model.plots`) are
logged as PNG artifacts: hr_at_k.png (with its data, hr_at_k.json) and
training_curves.png.

Settings (deployment, read here because this is the MLflow entry point):
  MLFLOW_TRACKING_URI       default sqlite:///<repo>/data/mlflow/mlflow.db
  NCF_MLFLOW_ARTIFACT_ROOT  where a new experiment keeps artifacts; default
                            <folder of the SQLite file>/artifacts for a local store
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import warnings
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import mlflow
import mlflow.artifacts
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from jobs.lake.protocol import MLFLOW_COMPARISON_VIEW

log = logging.getLogger(__name__)

ENV_TRACKING_URI = "MLFLOW_TRACKING_URI"
ENV_ARTIFACT_ROOT = "NCF_MLFLOW_ARTIFACT_ROOT"
DEFAULT_TRACKING_DB = "data/mlflow/mlflow.db"
MODEL_ARTIFACT = "model"
CHAMPION = "champion"
HR_AT_K_PLOT = "hr_at_k.png"
HR_AT_K_DATA = "hr_at_k.json"
TRAINING_CURVES_PLOT = "training_curves.png"
TRAINING_HISTORY = "training_history.json"  # the train stage's per-epoch metrics
CANDIDATES_TABLE = "candidates.json"  # the parent run's comparison of the families
CANDIDATES_PLOT = "candidates.png"
EXPERIMENT_KIND_TAG = "mlflow.experimentKind"
EXPERIMENT_KIND = "custom_model_development"
SHARED_VIEW_TAG = "mlflow.sharedViewState."  # + jobs.lake.protocol.MLFLOW_COMPARISON_VIEW
PARENT_ROLE = "dag_run"  # the tag ncf.role of a DAG run's parent run


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
    # Without a kind, MLflow 3's UI guesses GenAI (traces, token usage) for a new
    # experiment; this is model training.
    return str(mlflow.create_experiment(name, artifact_location=location,
                                        tags={EXPERIMENT_KIND_TAG: EXPERIMENT_KIND}))


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

    def log_artifacts(self, folder: Path, artifact_path: str) -> None:
        mlflow.log_artifacts(str(folder), artifact_path)

    def log_figure(self, figure: Any, artifact_file: str) -> None:
        mlflow.log_figure(figure, artifact_file)

    def log_evaluation(self, metrics: Mapping[str, float], hr_at_k: Sequence[float], *,
                       k: int, title: str) -> None:
        """An evaluation's metrics, and its sampled HR@1..N as hr_at_k.json and .png."""
        from ncf_model.plots import hr_at_k_figure

        self.log_metrics(metrics)
        self.log_dict({"k": list(range(1, len(hr_at_k) + 1)), "hr": list(hr_at_k)},
                      HR_AT_K_DATA)
        self.log_figure(hr_at_k_figure({title: hr_at_k}, title=title, mark_k=k), HR_AT_K_PLOT)

    def log_training_curves(self, history: Sequence[Mapping[str, float]], *,
                            title: str) -> None:
        """Loss and validation HR/NDCG per epoch as training_curves.png."""
        from ncf_model.plots import training_curves_figure

        self.log_figure(training_curves_figure(history, title=title), TRAINING_CURVES_PLOT)

    def log_candidates(self, table: Mapping[str, Mapping[str, Any]], *, select_metric: str,
                       served: str) -> None:
        """The families side by side: each one's validation and test metrics as a table
        (candidates table, one row per family) and a bar plot marking the served one."""
        import pandas as pd

        from ncf_model.plots import candidates_figure

        rows = [{"family": name, "served": name == served, "skipped": entry.get("skipped"),
                 **entry.get("validation", {}), **entry.get("test", {})}
                for name, entry in table.items()]
        mlflow.log_table(pd.DataFrame(rows), "candidates_table.json")
        self.log_figure(candidates_figure(rows, metric=select_metric, served=served),
                        CANDIDATES_PLOT)
        # The same figures as the parent's own metrics (`<metric>/<family>`): one row per
        # DAG run in the runs table compares every family, day after day.
        self.log_metrics({f"{key}/{name}": value for name, entry in table.items()
                          for part in ("validation", "test")
                          for key, value in (entry.get(part) or {}).items()
                          if isinstance(value, int | float)})
        experiment = MlflowClient().get_run(self.run_id).info.experiment_id
        save_comparison_view(experiment, list(table), select_metric=select_metric)

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
        """Log a torch module (a PairScorer, in eval mode) as the run's model, with its
        signature (from `input_example`, a numpy array, and the model's output on it) and
        the input example; returns its model URI.

        Requirements are given, not inferred: inferring them loads the model again in a
        subprocess (about 30 s), and serving a pt2 model needs torch alone.
        """
        import mlflow.pytorch
        import torch
        from mlflow.models import infer_signature

        with torch.inference_mode():
            output = model(torch.from_numpy(input_example)).float().cpu().numpy()
        signature = infer_signature(input_example, output)
        requirements = [f"torch=={torch.__version__.split('+')[0]}",
                        f"mlflow=={mlflow.__version__}"]
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            info = mlflow.pytorch.log_model(model, name=MODEL_ARTIFACT,
                                            input_example=input_example, signature=signature,
                                            pip_requirements=requirements,
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


@dataclass(frozen=True)
class ModelVersionRef:
    """A registered model version and the MLflow run that trained it."""

    name: str
    version: str
    run_id: str
    tags: dict[str, str] = field(default_factory=dict)  # e.g. family, validation scores


def find_version(name: str, run_id: str) -> str | None:
    """The version of `name` already registered from `run_id` (a retried evaluate reuses it)."""
    configure()
    found = MlflowClient().search_model_versions(f"name = '{name}' and run_id = '{run_id}'")
    return str(min(int(v.version) for v in found)) if found else None


def champion(name: str) -> ModelVersionRef | None:
    """The version behind the `champion` alias of `name`, or None when there is none yet."""
    configure()
    client = MlflowClient()
    try:
        aliases = client.get_registered_model(name).aliases
    except MlflowException as exc:
        if exc.error_code == "RESOURCE_DOES_NOT_EXIST":  # nothing registered yet
            return None
        raise
    if CHAMPION not in aliases:
        return None
    found = client.get_model_version(name, str(aliases[CHAMPION]))
    return ModelVersionRef(name, str(found.version), str(found.run_id), dict(found.tags or {}))


def set_champion(name: str, version: str) -> None:
    configure()
    MlflowClient().set_registered_model_alias(name, CHAMPION, version)
    log.info("model %s: champion -> version %s", name, version)


def tag_version(name: str, version: str, tags: Mapping[str, Any]) -> None:
    configure()
    client = MlflowClient()
    for key, value in tags.items():
        client.set_model_version_tag(name, version, key, str(value))


def load_run_dict(run_id: str, artifact_file: str) -> dict[str, Any] | None:
    """A JSON artifact of a run (e.g. training_history.json), or None when it has none."""
    configure()
    try:
        loaded = mlflow.artifacts.load_dict(f"runs:/{run_id}/{artifact_file}")
    except (MlflowException, OSError) as exc:
        log.warning("run %s has no readable %s: %s", run_id, artifact_file, exc)
        return None
    return dict(loaded)


def parent_run(dataset: str, logical_date: str, lake_run: str) -> str:
    """The DAG run's parent run (one per dataset, logical date and prepare run): found again
    by its tags when a task is retried, else created. Children tag it as their parent, and
    it holds the candidates' comparison."""
    tags = {"ncf.dataset": dataset, "ncf.logical_date": logical_date, "ncf.lake_run": lake_run,
            "ncf.role": PARENT_ROLE}
    found = find_runs(dataset, tags)
    if found:
        return found[0]
    with start_run(dataset, run_name=f"{dataset}-{logical_date}", tags=tags) as run:
        return run.run_id


def comparison_view_state(families: Sequence[str], *, select_metric: str) -> dict[str, Any]:
    """The runs table of the saved comparison: the DAG runs' parent runs, newest first, with
    the served family, each family's test HR@10 and its validation selection metric (the
    rest is one click away: Columns)."""
    k = select_metric.rsplit("_", 1)[-1]  # val_ndcg_10: the run's k
    metrics = [f"{metric}/{family}" for metric in (f"test_hr_{k}", select_metric)
               for family in families]
    return {"searchFilter": f"tags.`ncf.role` = '{PARENT_ROLE}'",
            "orderByKey": "attributes.start_time", "orderByAsc": False,
            "selectedColumns": ["tags.`ncf.served_family`",
                                *(f"metrics.`{key}`" for key in metrics)]}


def save_comparison_view(experiment: str, families: Sequence[str], *,
                         select_metric: str) -> None:
    state = comparison_view_state(families, select_metric=select_metric)
    MlflowClient().set_experiment_tag(experiment, SHARED_VIEW_TAG + MLFLOW_COMPARISON_VIEW,
                                      json.dumps(state))


def find_runs(dataset: str, tags: Mapping[str, Any]) -> list[str]:
    """Ids of the runs of `ncf-<dataset>` carrying all of `tags`, newest first."""
    exp = experiment_id(dataset)
    where = " and ".join(f"tags.`{key}` = '{value}'" for key, value in tags.items())
    found = MlflowClient().search_runs([exp], filter_string=where,
                                       order_by=["attributes.start_time DESC"])
    return [run.info.run_id for run in found]


def download_artifacts(run_id: str, artifact_path: str, dst: Path) -> Path:
    """A run's artifact folder, copied under `dst`; returns the local folder."""
    configure()
    return Path(mlflow.artifacts.download_artifacts(run_id=run_id, artifact_path=artifact_path,
                                                    dst_path=str(dst)))
