"""dags/ncf_runners.py: each runner builds the right operator (constructed, never run)."""

from __future__ import annotations

import json
import os
import shlex
import subprocess
import sys
from collections.abc import Iterator, Mapping
from datetime import datetime
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

REPO = Path(__file__).resolve().parents[1]
DAGS = REPO / "dags"
CONFIG = REPO / "configs" / "ml-100k.yaml"
TRAINER_DOCKERFILE = REPO / "docker" / "trainer" / "Dockerfile"
DS = "{{ ds }}"


@pytest.fixture(scope="module")
def runners() -> Iterator[ModuleType]:
    # Imported the way the DAG file imports it: dags/ is on sys.path in the DAG processor.
    sys.path.insert(0, str(DAGS))
    try:
        import ncf_runners

        yield ncf_runners
    finally:
        sys.path.remove(str(DAGS))


@pytest.fixture()
def dag() -> Iterator[Any]:
    from airflow.sdk import DAG

    with DAG(dag_id="ncf_runner_test", schedule=None, start_date=datetime(2026, 1, 1)) as d:
        yield d


def _trainer_entrypoint() -> list[str]:
    for line in TRAINER_DOCKERFILE.read_text().splitlines():
        if line.startswith("ENTRYPOINT "):
            return list(json.loads(line.removeprefix("ENTRYPOINT ")))
    raise AssertionError(f"{TRAINER_DOCKERFILE} has no exec-form ENTRYPOINT")


def _train_argv(runners: ModuleType) -> list[str]:
    return ["train", *runners.stage_args(CONFIG)]


def _render(task: Any, value: Any) -> Any:
    return task.render_template(value, {"ds": "2026-11-23"})


DOCKER_ENV = {
    "NCF_MODEL_RUNNER": "docker",
    "NCF_TRAINER_IMAGE": "registry.example/ncf-trainer:0.1.0",
    "NCF_TRAINER_GPUS": "all",
    "NCF_TRAINER_MOUNTS": "ncf-data:/data, /srv/ncf/configs:/opt/ncf/configs:ro",
    "NCF_DOCKER_URL": "tcp://docker-host:2375",
    "NCF_DOCKER_NETWORK": "ncf-net",
    "MLFLOW_TRACKING_URI": "http://mlflow:5000",
    "NCF_LAKE_ROOT": "/data/lake",
    "NCF_DB_URL": "postgresql+psycopg://ncf:secret@postgres/ncf",
}


# --- local (the default) -----------------------------------------------------------------

def test_local_runner_is_a_subprocess_of_the_worker(runners: ModuleType, dag: Any) -> None:
    task = runners.model_task("train", _train_argv(runners), environ={})
    assert task.task_type == "BashOperator"
    assert task.bash_command == (f"{shlex.quote(sys.executable)} -m ncf_model train "
                                 f"--config {CONFIG} --logical-date {DS}")
    assert _render(task, task.bash_command).endswith("--logical-date 2026-11-23")
    assert task.cwd == str(REPO)
    assert task.env == {"PYTHONUNBUFFERED": "1"} and task.append_env is True
    assert task.skip_on_exit_code == [99]  # evaluate's refused promotion: skipped


def test_a_torch_task_beside_others_gets_its_share_of_the_cores(runners: ModuleType,
                                                              dag: Any) -> None:
    # Fixed by the DAG's shape, not by what runs at the moment: the same under `make run`.
    assert runners.torch_threads(0, {}, cores=16) is None  # alone: torch's default
    assert runners.torch_threads(1, {}, cores=16) == 8
    assert runners.torch_threads(1, {}, cores=2) == 1
    assert runners.torch_threads(3, {}, cores=2) == 1  # never below one
    assert runners.torch_threads(1, {"NCF_TORCH_THREADS": "3"}, cores=16) == 3  # wins
    assert runners.torch_threads(0, {"NCF_TORCH_THREADS": "3"}, cores=16) == 3
    beside = runners.model_task("train", _train_argv(runners), beside=1,
                                environ={"NCF_TORCH_THREADS": "2"})
    assert beside.env == {"PYTHONUNBUFFERED": "1", "NCF_TORCH_THREADS": "2"}
    from ncf_pipeline import build_dag
    pipeline = build_dag(REPO / "configs" / "ml-100k.yaml")
    train, candidates = pipeline.get_task("train"), pipeline.get_task("candidates")
    assert {"als", "train"} <= set(pipeline.get_task("validate_splits").downstream_task_ids)
    assert train.env["NCF_TORCH_THREADS"] == str(runners.torch_threads(1))
    assert "NCF_TORCH_THREADS" not in candidates.env or os.environ.get("NCF_TORCH_THREADS")


def test_local_runner_honours_ncf_python_and_skip_code(runners: ModuleType, dag: Any) -> None:
    task = runners.model_task("evaluate", ["evaluate", *runners.stage_args(CONFIG)],
                              skip_on_exit_code=3, environ={"NCF_PYTHON": "/opt/venv/bin/python"})
    assert task.bash_command.startswith("/opt/venv/bin/python -m ncf_model evaluate ")
    assert task.skip_on_exit_code == [3]


def test_python_task_always_runs_locally(runners: ModuleType, dag: Any) -> None:
    task = runners.python_task("validate_splits", "jobs.quality.validate",
                               [*runners.stage_args(CONFIG), "--stage", "splits"],
                               environ=DOCKER_ENV)
    assert task.task_type == "BashOperator"
    assert task.bash_command == (f"{shlex.quote(sys.executable)} -m jobs.quality.validate --config "
                                 f"{CONFIG} --logical-date {DS} --stage splits")


def test_default_runner_is_local_and_unknown_runner_is_refused(runners: ModuleType) -> None:
    assert runners.model_runner({}) == "local"
    assert runners.model_runner({"NCF_MODEL_RUNNER": " Docker "}) == "docker"
    with pytest.raises(runners.RunnerConfigError, match="NCF_MODEL_RUNNER='ecs'"):
        runners.model_runner({"NCF_MODEL_RUNNER": "ecs"})


# --- docker ------------------------------------------------------------------------------

def test_docker_runner_builds_a_gpu_docker_operator(runners: ModuleType, dag: Any) -> None:
    from airflow.providers.docker.operators.docker import DockerOperator

    task = runners.model_task("train", _train_argv(runners), environ=DOCKER_ENV)
    assert isinstance(task, DockerOperator)
    assert task.image == "registry.example/ncf-trainer:0.1.0"
    # The image's entrypoint plus the command is the same CLI the local runner calls; the
    # config path is rewritten to where the image holds the project.
    assert task.command == ["train", "--config", "/opt/ncf/configs/ml-100k.yaml",
                            "--logical-date", DS]
    assert _trainer_entrypoint() == ["python", "-m", "ncf_model"]
    assert _render(task, task.command)[-1] == "2026-11-23"
    [gpu] = task.device_requests
    assert gpu["Count"] == -1 and gpu["Capabilities"] == [["gpu"]]
    assert [(m["Type"], m["Source"], m["Target"], m["ReadOnly"]) for m in task.mounts] == [
        ("volume", "ncf-data", "/data", False),
        ("bind", "/srv/ncf/configs", "/opt/ncf/configs", True),
    ]
    # Deployment settings the torch stages read are forwarded; the table URL (a secret
    # the trainer does not need) is not.
    assert task.environment == {"MLFLOW_TRACKING_URI": "http://mlflow:5000",
                                "NCF_LAKE_ROOT": "/data/lake", "PYTHONUNBUFFERED": "1"}
    assert task.docker_url == "tcp://docker-host:2375"
    assert task.network_mode == "ncf-net"
    assert task.mount_tmp_dir is False
    assert task.auto_remove == "success"


@pytest.mark.parametrize(("gpus", "count"), [("2", 2), ("none", None), ("0", None)])
def test_docker_gpu_request_follows_ncf_trainer_gpus(runners: ModuleType, dag: Any,
                                                     gpus: str, count: int | None) -> None:
    task = runners.model_task("recommend", ["recommend", *runners.stage_args(CONFIG)],
                              environ={**DOCKER_ENV, "NCF_TRAINER_GPUS": gpus})
    if count is None:
        assert task.device_requests is None
    else:
        assert [r["Count"] for r in task.device_requests] == [count]


def test_docker_runner_defaults(runners: ModuleType, dag: Any) -> None:
    task = runners.model_task("train", _train_argv(runners),
                              environ={"NCF_MODEL_RUNNER": "docker"})
    assert task.image == "ncf-trainer:0.1.0"
    assert task.docker_url == "unix://var/run/docker.sock"
    assert task.network_mode is None
    assert task.mounts == []
    assert [r["Count"] for r in task.device_requests] == [-1]
    # Exit 99 (the champion gate refused) is "skipped" in a container too, not a failure.
    assert task.skip_on_exit_code == [99]
    assert runners.model_task("evaluate", ["evaluate"], skip_on_exit_code=None,
                              environ={"NCF_MODEL_RUNNER": "docker"}).skip_on_exit_code == []


# --- kubernetes --------------------------------------------------------------------------

K8S_ENV = {
    "NCF_MODEL_RUNNER": "kubernetes",
    "NCF_TRAINER_IMAGE": "registry.example/ncf-trainer:0.1.0",
    "NCF_TRAINER_MOUNTS": "ncf-lake:/data",
    "NCF_K8S_NAMESPACE": "ml",
    "MLFLOW_TRACKING_URI": "http://mlflow.ml.svc:5000",
    "NCF_LAKE_ROOT": "/data/lake",
}


def test_kubernetes_runner_builds_a_gpu_pod(runners: ModuleType, dag: Any) -> None:
    from airflow.providers.cncf.kubernetes.operators.pod import KubernetesPodOperator

    task = runners.model_task("train", _train_argv(runners), environ=K8S_ENV)
    assert isinstance(task, KubernetesPodOperator)
    assert task.image == "registry.example/ncf-trainer:0.1.0"
    assert task.cmds == _trainer_entrypoint()
    assert task.arguments == ["train", "--config", "/opt/ncf/configs/ml-100k.yaml",
                              "--logical-date", DS]
    assert task.namespace == "ml"
    assert task.container_resources.limits == {"nvidia.com/gpu": "1"}
    assert [t.key for t in task.tolerations] == ["nvidia.com/gpu"]
    [volume] = task.volumes
    [mount] = task.volume_mounts
    assert volume.persistent_volume_claim.claim_name == "ncf-lake"
    assert (mount.name, mount.mount_path) == (volume.name, "/data")
    assert task.env_vars == {"MLFLOW_TRACKING_URI": "http://mlflow.ml.svc:5000",
                   "NCF_LAKE_ROOT": "/data/lake", "PYTHONUNBUFFERED": "1"}
    assert task.do_xcom_push is False
    assert task.skip_on_exit_code == [99]


def test_kubernetes_gpu_count_and_refusals(runners: ModuleType, dag: Any) -> None:
    task = runners.model_task("train", _train_argv(runners),
                              environ={**K8S_ENV, "NCF_TRAINER_GPUS": "2"})
    assert task.container_resources.limits == {"nvidia.com/gpu": "2"}
    cpu = runners.model_task("evaluate", ["evaluate"],
                             environ={**K8S_ENV, "NCF_TRAINER_GPUS": "none"})
    assert cpu.container_resources is None and not cpu.tolerations
    with pytest.raises(runners.RunnerConfigError, match="host paths"):
        runners.model_task("recommend", ["recommend"],
                           environ={**K8S_ENV, "NCF_TRAINER_MOUNTS": "/srv/lake:/data"})


# --- settings parsing --------------------------------------------------------------------

def test_mount_and_gpu_settings_are_checked(runners: ModuleType) -> None:
    assert runners.parse_mounts("") == []
    assert runners.parse_mounts("a:/x:rw") == [runners.TrainerMount("a", "/x", False)]
    for bad in ("novolume", "a:relative", ":/x", "a:/x:rx"):
        with pytest.raises(runners.RunnerConfigError, match="NCF_TRAINER_MOUNTS"):
            runners.parse_mounts(bad)
    assert [runners.gpu_count(v) for v in ("all", "ALL", "3", "none", "")] == [-1, -1, 3, 0, 0]
    with pytest.raises(runners.RunnerConfigError, match="NCF_TRAINER_GPUS='many'"):
        runners.gpu_count("many")


def test_container_argv_rewrites_only_repo_paths(runners: ModuleType) -> None:
    assert runners.container_argv(
        ["train", "--config", str(CONFIG), "--lake-root", "/data/lake", DS], "/app") == [
        "train", "--config", "/app/configs/ml-100k.yaml", "--lake-root", "/data/lake", DS]


# --- spark -------------------------------------------------------------------------------

def test_spark_task_submits_the_stage_file(runners: ModuleType, dag: Any) -> None:
    task = runners.spark_task("ingest", CONFIG, "ml-100k", environ={})
    assert task.task_type == "SparkSubmitOperator"
    assert Path(task.application) == REPO / "jobs" / "ingest.py"
    assert Path(task.application).is_file()
    assert task.application_args == ["--config", str(CONFIG), "--logical-date", DS]
    assert task._conn_id == "spark_default"
    assert task.py_files is None and task.properties_file is None
    assert task.conf["spark.sql.session.timeZone"] == "UTC"
    assert task._driver_memory == "4g"


def test_spark_task_ships_the_jobs_zip_to_a_cluster(runners: ModuleType, dag: Any) -> None:
    env = {"NCF_SPARK_PY_FILES": "/opt/ncf/dist/ncf_jobs.zip",
           "NCF_SPARK_PROPERTIES_FILE": "/etc/spark/cluster.conf",
           "NCF_SPARK_DRIVER_MEMORY": "2g", "NCF_SPARK_SHUFFLE_PARTITIONS": "64"}
    task = runners.spark_task("prepare", CONFIG, "ml-100k", environ=env)
    assert task.py_files == "/opt/ncf/dist/ncf_jobs.zip"
    assert task.properties_file == "/etc/spark/cluster.conf"
    assert task._driver_memory == "2g"
    assert task.conf["spark.sql.shuffle.partitions"] == "64"
    assert task.name == "ncf-prepare-ml-100k"


# --- the whole DAG shape, serialized as the DAG processor stores it ----------------------

@pytest.mark.parametrize("env", [{}, DOCKER_ENV, K8S_ENV], ids=["local", "docker", "kubernetes"])
def test_every_runner_serializes(runners: ModuleType, env: Mapping[str, str]) -> None:
    from airflow.sdk import DAG
    from airflow.serialization.serialized_objects import DagSerialization

    with DAG(dag_id="ncf_serialize", schedule="@daily", start_date=datetime(2026, 1, 1)) as d:
        ingest = runners.spark_task("ingest", CONFIG, "ml-100k", environ=env)
        validate = runners.python_task("validate_interactions", "jobs.quality.validate",
                                       runners.stage_args(CONFIG), environ=env)
        train = runners.model_task("train", _train_argv(runners), environ=env)
        ingest >> validate >> train
    data = DagSerialization.to_dict(d)
    back = DagSerialization.from_dict(json.loads(json.dumps(data)))
    assert set(back.task_dict) == {"ingest", "validate_interactions", "train"}
    assert back.get_task("train").upstream_task_ids == {"validate_interactions"}
    expected = {"": "BashOperator", "docker": "DockerOperator",
                "kubernetes": "KubernetesPodOperator"}[env.get("NCF_MODEL_RUNNER", "")]
    assert back.get_task("train").task_type == expected


# --- import hygiene ----------------------------------------------------------------------

def test_module_has_no_heavy_top_level_imports() -> None:
    source = (DAGS / "ncf_runners.py").read_text()
    top_level = [line for line in source.splitlines() if line.startswith(("import ", "from "))]
    for heavy in ("torch", "pandas", "pyspark", "mlflow", "great_expectations", "docker",
                  "kubernetes", "cncf"):
        assert not any(heavy in line.split()[1] for line in top_level), heavy


def test_parsing_with_the_default_runner_loads_no_other_runner() -> None:
    # Airflow itself may import provider packages (installed providers register hooks and
    # serializers); what must stay unloaded are the other runners' operators and clients.
    code = ("import sys; sys.path.insert(0, sys.argv[1]); import ncf_runners; "
            "ncf_runners.model_task('train', ['train'], environ={}); "
            "print(sorted(m for m in sys.modules if m in {"
            "'airflow.providers.docker.operators.docker', 'docker.types', "
            "'airflow.providers.cncf.kubernetes.operators.pod'}))")
    out = subprocess.run([sys.executable, "-c", code, str(DAGS)], capture_output=True,
                         text=True, check=True, cwd=REPO, timeout=300)
    assert out.stdout.strip().splitlines()[-1] == "[]"
