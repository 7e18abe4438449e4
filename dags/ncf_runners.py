"""Operator factories for the NCF DAG: where each kind of task runs is a deployment setting.

The DAG file wires tasks; this module decides *how* each one runs, from the environment
of the process that parses the DAG (the same everywhere: laptop, `docker/compose.yaml`,
a Kubernetes Airflow), so one DAG file serves every deployment:

* `spark_task`  - `SparkSubmitOperator` on `jobs/<stage>.py` against the `spark_default`
  connection (`local[*]` on a laptop, `spark://spark-master:7077` in docker/, YARN or
  Kubernetes elsewhere). With `$NCF_SPARK_PY_FILES` (a zip of the `jobs` package, built
  into the Airflow image) the code ships with every submit, so a cluster needs nothing of
  this project installed: only the same Spark and Python versions.
* `python_task` - `python -m <module>` in a subprocess of the Airflow worker (validation,
  publish): GX, pandas and SQLAlchemy stay out of the scheduler process.
* `model_task`  - `python -m ncf_model <stage>`, on the runner named by `$NCF_MODEL_RUNNER`:
  `local` (default): a `BashOperator` subprocess of the Airflow worker;
  `docker`: a `DockerOperator` running `$NCF_TRAINER_IMAGE` on the Docker host, GPUs
  requested through `device_requests`;
  `kubernetes`: a `KubernetesPodOperator` pod from `$NCF_TRAINER_IMAGE` with an
  `nvidia.com/gpu` limit.

Settings, all read when the DAG is parsed (none is a secret: they end up in the
serialized DAG):

    NCF_MODEL_RUNNER     local | docker | kubernetes                  (default local)
    NCF_PYTHON           interpreter of the local runner and python_task (this one)
    NCF_TRAINER_IMAGE    image whose entrypoint is `python -m ncf_model` (ncf-trainer:0.1.0)
    NCF_TRAINER_GPUS     docker: all | a count | none; kubernetes: the nvidia.com/gpu
                         limit, `all` meaning 1                        (default all)
    NCF_TRAINER_MOUNTS   source:/target[:ro], comma-separated; source is a Docker volume
                         or host path, or a Kubernetes PersistentVolumeClaim (default none)
    NCF_TRAINER_WORKDIR  where the image holds the project; argument paths under this
                         repo (the config) are rewritten to it         (default /opt/ncf)
    NCF_DOCKER_URL       Docker daemon                  (default unix://var/run/docker.sock)
    NCF_DOCKER_NETWORK   network the trainer joins, to reach MLflow   (default Docker's)
    NCF_K8S_NAMESPACE    pod namespace                      (default the connection's)
    NCF_SPARK_PY_FILES   spark-submit --py-files: the zip of `jobs`   (default none)
    NCF_SPARK_PROPERTIES_FILE  spark-submit --properties-file         (default none)
    NCF_SPARK_SHUFFLE_PARTITIONS, NCF_SPARK_DRIVER_MEMORY             (default 8, 4g)
    NCF_TORCH_POOL       Airflow pool of the local runner's torch tasks (make up: ncf_torch,
                         one slot)                                      (default none)
    NCF_TORCH_THREADS    torch threads of every torch task (default: the local runner
                         gives a task that runs beside others its share of the cores,
                         `torch_threads`; the others keep torch's default, every core)

The container runners pass `MLFLOW_TRACKING_URI`, `NCF_LAKE_ROOT` and `NCF_TORCH_THREADS`
through when they are set; the lake must be mounted at the same path inside the container
(`NCF_TRAINER_MOUNTS`). Provider imports (docker, kubernetes) happen only in the branch
that needs them, so parsing the DAG with the default runner never imports their operators.
"""

from __future__ import annotations

import os
import shlex
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

from airflow.providers.apache.spark.operators.spark_submit import SparkSubmitOperator
from airflow.providers.standard.operators.bash import BashOperator
from airflow.sdk import BaseOperator

from jobs.lake.protocol import (
    DEFAULT_DRIVER_MEMORY,
    DEFAULT_SHUFFLE_PARTITIONS,
    SKIP_EXIT_CODE,
    SPARK_SESSION_CONF,
)

REPO = Path(__file__).resolve().parents[1]

RUNNERS = ("local", "docker", "kubernetes")
DEFAULT_TRAINER_IMAGE = "ncf-trainer:0.1.0"
DEFAULT_TRAINER_WORKDIR = "/opt/ncf"
DEFAULT_DOCKER_URL = "unix://var/run/docker.sock"
# Deployment settings the torch stages read; forwarded into containers when set here.
FORWARDED_ENV = ("MLFLOW_TRACKING_URI", "NCF_LAKE_ROOT", "NCF_TORCH_THREADS")
GPU_RESOURCE = "nvidia.com/gpu"
DS = "{{ ds }}"


class RunnerConfigError(ValueError):
    """A runner setting in the environment is malformed; the message names the variable."""


def _env(environ: Mapping[str, str] | None) -> Mapping[str, str]:
    return os.environ if environ is None else environ


def stage_args(config: Path | str) -> list[str]:
    """The arguments every stage CLI takes: the dataset config and the run's logical date."""
    return ["--config", str(config), "--logical-date", DS]


def spark_conf(environ: Mapping[str, str] | None = None) -> dict[str, str]:
    """Small-data defaults; a cluster overrides them in its properties file or connection."""
    env = _env(environ)
    return {"spark.sql.shuffle.partitions": env.get("NCF_SPARK_SHUFFLE_PARTITIONS",
                                                    DEFAULT_SHUFFLE_PARTITIONS),
            **SPARK_SESSION_CONF}


def spark_task(stage: str, config: Path | str, dataset: str, *,
               extra_args: Sequence[str] = (),
               environ: Mapping[str, str] | None = None) -> SparkSubmitOperator:
    """`spark-submit jobs/<stage>.py --config ... --logical-date {{ ds }}` on `spark_default`.

    In client mode (the default) the driver runs in the Airflow worker, which has the
    project installed; the executors get the `jobs` package from `$NCF_SPARK_PY_FILES`
    when it is set, so they need no copy of this repo.
    """
    env = _env(environ)
    return SparkSubmitOperator(
        task_id=stage,
        application=str(REPO / "jobs" / f"{stage}.py"),
        application_args=[*stage_args(config), *extra_args],
        conn_id="spark_default",
        conf=spark_conf(env),
        name=f"ncf-{stage}-{dataset}",
        driver_memory=env.get("NCF_SPARK_DRIVER_MEMORY", DEFAULT_DRIVER_MEMORY),
        py_files=env.get("NCF_SPARK_PY_FILES") or None,
        properties_file=env.get("NCF_SPARK_PROPERTIES_FILE") or None,
    )


def _bash_command(argv: Sequence[str]) -> str:
    command = " ".join(shlex.quote(part) for part in argv)
    # The logical date is Jinja: keep it unquoted so it renders ({{ ds }} has no spaces).
    return command.replace(shlex.quote(DS), DS)


def _subprocess_task(task_id: str, argv: Sequence[str], *, skip_on_exit_code: int | None,
                     env: Mapping[str, str],
                     extra_env: Mapping[str, str] | None = None) -> BashOperator:
    python = env.get("NCF_PYTHON", sys.executable)
    return BashOperator(task_id=task_id, bash_command=_bash_command([python, *argv]),
                        cwd=str(REPO), env={"PYTHONUNBUFFERED": "1", **(extra_env or {})},
                        append_env=True, skip_on_exit_code=skip_on_exit_code)


def torch_threads(beside: int, environ: Mapping[str, str] | None = None,
                  cores: int | None = None) -> int | None:
    """The torch threads of a local torch task that the DAG runs beside `beside` other
    heavy tasks (train beside als: 1), or None to keep torch's default (all cores).

    A fixed property of the task, not of what happens to run at the moment: torch's CPU
    results depend on the thread count, so the budget must be the same under `make run`
    (one task at a time) and the scheduler, and from one night to the next. Measured on 2
    cores, train beside als: 1 thread 52 s for both, 2 threads 74 s, one after the other
    69 s; candidates alone: 2 threads 318 s, 1 thread 611 s. $NCF_TORCH_THREADS wins."""
    env = _env(environ)
    if env.get("NCF_TORCH_THREADS"):
        return int(env["NCF_TORCH_THREADS"])
    if beside <= 0:
        return None
    return max(1, (cores or os.cpu_count() or 1) // (1 + beside))


def python_task(task_id: str, module: str, argv: Sequence[str], *,
                skip_on_exit_code: int | None = SKIP_EXIT_CODE,
                environ: Mapping[str, str] | None = None) -> BashOperator:
    """`python -m <module> <argv>` in a subprocess of the Airflow worker, whatever the runner.

    The last line the module prints becomes the task's XCom (a run id, a version); exit
    code `skip_on_exit_code` (99; None: none) marks the task skipped.
    """
    return _subprocess_task(task_id, ["-m", module, *argv],
                            skip_on_exit_code=skip_on_exit_code, env=_env(environ))


@dataclass(frozen=True)
class TrainerMount:
    """One `source:target[:ro]` entry of `$NCF_TRAINER_MOUNTS`."""

    source: str
    target: str
    read_only: bool = False

    @property
    def is_host_path(self) -> bool:
        return self.source.startswith("/")


def parse_mounts(text: str) -> list[TrainerMount]:
    """`ncf-data:/data,/srv/configs:/opt/ncf/configs:ro` -> mounts (empty text: none)."""
    mounts = []
    for entry in (part.strip() for part in text.split(",")):
        if not entry:
            continue
        fields = entry.split(":")
        read_only = len(fields) == 3 and fields[2] == "ro"
        if len(fields) not in (2, 3) or (len(fields) == 3 and fields[2] not in ("ro", "rw")) \
                or not fields[0] or not fields[1].startswith("/"):
            raise RunnerConfigError(
                f"NCF_TRAINER_MOUNTS entry {entry!r} is not source:/absolute/target[:ro|rw] "
                "(source: a Docker volume, a host path or a Kubernetes PVC name)")
        mounts.append(TrainerMount(fields[0], fields[1], read_only))
    return mounts


def gpu_count(text: str, *, variable: str = "NCF_TRAINER_GPUS") -> int:
    """`all` -> -1 (every GPU), `none`/`0` -> 0, `N` -> N."""
    value = text.strip().lower()
    if value == "all":
        return -1
    if value in ("", "none"):
        return 0
    if value.isdigit():
        return int(value)
    raise RunnerConfigError(f"{variable}={text!r}: use 'all', a number of GPUs, or 'none'")


def container_argv(argv: Sequence[str], workdir: str) -> list[str]:
    """Rewrite paths under this repo (the config) to where the image holds the project."""
    out = []
    for arg in argv:
        path = Path(arg)
        if path.is_absolute() and path.is_relative_to(REPO):
            out.append(str(PurePosixPath(workdir, *path.relative_to(REPO).parts)))
        else:
            out.append(arg)
    return out


def _forwarded_env(env: Mapping[str, str]) -> dict[str, str]:
    forwarded = {name: env[name] for name in FORWARDED_ENV if env.get(name)}
    return {**forwarded, "PYTHONUNBUFFERED": "1"}


def model_runner(environ: Mapping[str, str] | None = None) -> str:
    """`$NCF_MODEL_RUNNER`, checked: local (default), docker or kubernetes."""
    runner = _env(environ).get("NCF_MODEL_RUNNER", "").strip().lower() or "local"
    if runner not in RUNNERS:
        raise RunnerConfigError(f"NCF_MODEL_RUNNER={runner!r}: use one of {', '.join(RUNNERS)}")
    return runner


def model_task(task_id: str, argv: Sequence[str], *,
               skip_on_exit_code: int | None = SKIP_EXIT_CODE, beside: int = 0,
               environ: Mapping[str, str] | None = None) -> BaseOperator:
    """`python -m ncf_model <argv>` on the runner named by `$NCF_MODEL_RUNNER`.

    `argv` is what follows `python -m ncf_model`, e.g. `["train", *stage_args(config)]`.
    Exit code `skip_on_exit_code` (99: evaluate's refused promotion; None: none) marks the
    task skipped on every runner, so recommend and publish are skipped after it.
    `beside`: how many heavy tasks the DAG runs beside this one; the local runner gives it
    that share of the cores in torch threads (`torch_threads`).
    """
    env = _env(environ)
    runner = model_runner(env)
    if runner == "local":
        threads = torch_threads(beside, env)
        task = _subprocess_task(task_id, ["-m", "ncf_model", *argv],
                                skip_on_exit_code=skip_on_exit_code, env=env,
                                extra_env={"NCF_TORCH_THREADS": str(threads)} if threads else None)
        # Torch tasks in parallel on one small node fight for its cores (train beside a
        # second torch task ran 5x slower): a one-slot pool runs them one at a time.
        if env.get("NCF_TORCH_POOL"):
            task.pool = env["NCF_TORCH_POOL"]
        return task
    image = env.get("NCF_TRAINER_IMAGE") or DEFAULT_TRAINER_IMAGE
    args = container_argv(argv, env.get("NCF_TRAINER_WORKDIR") or DEFAULT_TRAINER_WORKDIR)
    mounts = parse_mounts(env.get("NCF_TRAINER_MOUNTS", ""))
    gpus = gpu_count(env.get("NCF_TRAINER_GPUS", "all"))
    if runner == "docker":
        return _docker_task(task_id, image, args, mounts=mounts, gpus=gpus, env=env,
                            skip_on_exit_code=skip_on_exit_code)
    return _kubernetes_task(task_id, image, args, mounts=mounts, gpus=gpus, env=env,
                            skip_on_exit_code=skip_on_exit_code)


def _docker_task(task_id: str, image: str, args: list[str], *, mounts: list[TrainerMount],
                 gpus: int, env: Mapping[str, str],
                 skip_on_exit_code: int | None) -> BaseOperator:
    from airflow.providers.docker.operators.docker import DockerOperator
    from docker.types import DeviceRequest, Mount

    device_requests = ([DeviceRequest(count=gpus, capabilities=[["gpu"]])] if gpus else None)
    return DockerOperator(
        task_id=task_id,
        image=image,
        command=args,  # the image's entrypoint is `python -m ncf_model`
        environment=_forwarded_env(env),
        mounts=[Mount(target=m.target, source=m.source, read_only=m.read_only,
                      type="bind" if m.is_host_path else "volume") for m in mounts],
        device_requests=device_requests,
        docker_url=env.get("NCF_DOCKER_URL") or DEFAULT_DOCKER_URL,
        network_mode=env.get("NCF_DOCKER_NETWORK") or None,
        # The worker may itself run in a container: its temporary folder is no host path.
        mount_tmp_dir=False,
        auto_remove="success",
        skip_on_exit_code=skip_on_exit_code,
    )


def _kubernetes_task(task_id: str, image: str, args: list[str], *,
                     mounts: list[TrainerMount], gpus: int, env: Mapping[str, str],
                     skip_on_exit_code: int | None) -> BaseOperator:
    from airflow.providers.cncf.kubernetes.operators.pod import KubernetesPodOperator
    from kubernetes.client import models as k8s

    host_paths = [m.source for m in mounts if m.is_host_path]
    if host_paths:
        raise RunnerConfigError(f"NCF_TRAINER_MOUNTS: {host_paths} are host paths; on "
                                "Kubernetes give PersistentVolumeClaim names")
    volumes = [k8s.V1Volume(name=f"vol-{i}", persistent_volume_claim=k8s.
                            V1PersistentVolumeClaimVolumeSource(claim_name=m.source))
               for i, m in enumerate(mounts)]
    volume_mounts = [k8s.V1VolumeMount(name=f"vol-{i}", mount_path=m.target,
                                       read_only=m.read_only) for i, m in enumerate(mounts)]
    resources = tolerations = None
    if gpus:
        # Kubernetes cannot ask for "every GPU": `all` means one whole device.
        limit = {GPU_RESOURCE: str(max(gpus, 1))}
        resources = k8s.V1ResourceRequirements(limits=limit)
        # GPU node pools are commonly tainted so that only GPU pods land there.
        tolerations = [k8s.V1Toleration(key=GPU_RESOURCE, operator="Exists",
                                        effect="NoSchedule")]
    extra: dict[str, Any] = {}
    if env.get("NCF_K8S_NAMESPACE"):
        extra["namespace"] = env["NCF_K8S_NAMESPACE"]
    return KubernetesPodOperator(
        task_id=task_id,
        name=f"ncf-{task_id}".replace("_", "-"),
        image=image,
        cmds=["python", "-m", "ncf_model"],
        arguments=args,
        env_vars=_forwarded_env(env),
        volumes=volumes,
        volume_mounts=volume_mounts,
        container_resources=resources,
        tolerations=tolerations,
        get_logs=True,
        # ncf_model prints its result on stdout; nothing writes /airflow/xcom/return.json.
        do_xcom_push=False,
        on_finish_action="delete_succeeded_pod",
        skip_on_exit_code=skip_on_exit_code,
        **extra,
    )
