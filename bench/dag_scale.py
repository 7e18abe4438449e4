"""The whole nightly DAG at scale: every stage's wall seconds and peak memory.

    python bench/dag_scale.py --events 20000263            # ML-20M size (also 5M, 10M)
    python bench/dag_scale.py --events 20000 --users 200 --items 1000 --work /tmp/x  # smoke

Runs the real DAG through Airflow on the seeded synthetic MovieLens-20M log of
bench/synthetic.py (generated once into $NCF_CACHE_DIR/synthetic or --cache-dir), with a
config written here: configs/ml-20m.yaml with the synthetic file as its source and, with
`--training capped` (the default), every trained family capped to 1 epoch with a larger
batch (train, mf: 65,536 rows and 4 negatives per positive; sasrec: 1,024 sequences of its
50 latest items; als: 5 sweeps) so that a CPU run ends; everything else as shipped
(ingest, prepare, the candidates and their refits, EASE^R's grid and its time guard,
evaluate, validate, recommend, publish).
`--mode test` (the default) runs `airflow dags test ncf_<dataset> <date>`, as `make run`:
one task at a time. `--mode scheduler` runs it as a nightly run runs in production mode:
`make up`'s stack (scheduler with the LocalExecutor, dag-processor, api-server, MLflow
server; jobs/ops/stack.py) started on free ports over the work folder, one run triggered
through the REST API (jobs/ops/trigger.py), als beside train, the stack stopped after.
`--training shipped` keeps the shipped training settings too. `--families` narrows
candidates.families, for a quick smoke run only (the CPU test of bench/gpu_check.sh).

Users and items scale with the events: ML-20M's 138,493 users and 26,744 items times
events / 20,000,263 (at least 100 users and 1,000 items), unless --users / --items say.

While the DAG runs, the resident set sizes of its whole process tree (the Airflow process,
the Python stages it starts, Spark's JVMs) are sampled every --interval seconds (psutil).
Each task's start and end come from Airflow's metadata database; a task's peak is the
largest sample inside its interval: all processes, the JVMs (java) alone, and the rest
(Python). Tasks run one at a time under `dags test`; under the scheduler, a task's peak
also holds the tasks beside it (train and als), and the sampled tree is the scheduler's
(its workers and their tasks; not the api-server, dag-processor or MLflow server). The
run's wall seconds go from the first task's start to the last one's end. Prints one
markdown table and writes it with the figures as JSON: <work>/dag_scale.{md,json} (and
--out). Asserts nothing.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import socket
import sqlite3
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import psutil
import yaml

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from bench import synthetic  # noqa: E402
from jobs.lake import layout  # noqa: E402
from jobs.ops import stack, trigger  # noqa: E402

DATE = "2026-01-01"
DATASET = "ml-20m-scale"
GIB = 2 ** 30
TIMED_OUT = 124  # as timeout(1)
# Order of the table: the DAG's (als beside train).
TASKS = ("ingest", "validate_interactions", "prepare", "validate_splits", "train", "als",
         "candidates", "evaluate", "recommend", "validate_recommendations", "publish")
# Training capped so that a CPU run ends: every trained family (NCF, MF, SASRec on its 50
# latest items, ALS at 5 sweeps) one pass over the data, NCF and MF in batches of 65,536
# (on 2 cores NeuMF runs ~20% more samples/s than at 262,144; MF about the same) with 4
# resampled negatives per positive (the NCF paper's ratio; shipped: 8), so an epoch is
# 98.6M samples instead of 177.5M; the rest as shipped. EASE^R keeps its grid: its own
# time guard (ease.max_minutes) decides whether it fits.
CAPPED = {"train": {"epochs": 1, "batch_size": 65_536, "n_negatives": 4},
          "mf": {"epochs": 1, "batch_size": 65_536, "n_negatives": 4},
          "sasrec": {"epochs": 1, "batch_size": 1_024, "max_len": 50},
          "als": {"max_iter": 5}}


def scaled_shape(events: int, users: int | None, items: int | None) -> tuple[int, int]:
    """(users, items) for a log of `events`: ML-20M's shape scaled down, unless given."""
    share = events / synthetic.ML_20M_EVENTS
    return (users or max(100, round(synthetic.ML_20M_USERS * share)),
            items or max(1_000, round(synthetic.ML_20M_ITEMS * share)))


def ratings_csv(cache: Path, users: int, items: int, events: int, seed: int) -> tuple[Path, str]:
    """The cached synthetic ratings.csv for this shape and its sha256 (made once)."""
    csv = cache / "synthetic" / f"u{users}-i{items}-e{events}-s{seed}" / "ml-20m" / "ratings.csv"
    digest = csv.with_suffix(".sha256")
    if not (csv.is_file() and digest.is_file()):
        started = time.perf_counter()
        synthetic.write_ratings_csv(csv, n_users=users, n_items=items, n_events=events,
                                    seed=seed)
        digest.write_text(layout.sha256_file(csv))
        print(f"generated {csv} in {time.perf_counter() - started:.0f} s", flush=True)
    return csv, digest.read_text().strip()


def write_config(folder: Path, sha256: str, training: str,  # noqa: PLR0917
                 families: list[str] | None = None, validate: str | None = None) -> Path:
    """configs/ml-20m.yaml, the synthetic file as its source, training capped or as shipped
    (and, for a quick run, fewer candidate families)."""
    config = yaml.safe_load((REPO / "configs" / "ml-20m.yaml").read_text())
    config["dataset"] = DATASET
    config["source"] = {"format": "movielens-csv",
                        "files": {"ratings": {"path": "ml-20m/ratings.csv", "sha256": sha256}}}
    if training == "capped":
        for section, values in CAPPED.items():
            config[section] = {**(config.get(section) or {}), **values}
    if families:
        config["candidates"] = {**(config.get("candidates") or {}), "families": families}
    if validate:
        config["validate"] = {**(config.get("validate") or {}), "mode": validate}
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{DATASET}.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


def environment(work: Path, raw: Path, device: str) -> dict[str, str]:
    venv_bin = str(Path(sys.executable).parent)
    env = {**os.environ,
           "AIRFLOW_HOME": str(work / "airflow"),
           "AIRFLOW__CORE__DAGS_FOLDER": str(REPO / "dags"),
           "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
           "AIRFLOW_CONN_SPARK_DEFAULT": os.environ.get(
               "AIRFLOW_CONN_SPARK_DEFAULT", '{"conn_type": "spark", "host": "local[*]"}'),
           "NCF_CONFIG_DIR": str(work / "configs"),
           "NCF_RAW_DIR": str(raw),
           "NCF_LAKE_ROOT": str(work / "lake"),
           "NCF_CACHE_DIR": str(work / "download-cache"),
           "NCF_DB_URL": f"sqlite:///{work / 'recommendations.db'}",
           "MLFLOW_TRACKING_URI": f"sqlite:///{work / 'mlflow' / 'mlflow.db'}",
           "NCF_SCHEDULE": "none",
           "SPARK_LOCAL_IP": os.environ.get("SPARK_LOCAL_IP", "127.0.0.1"),
           "PYSPARK_PYTHON": sys.executable, "PYSPARK_DRIVER_PYTHON": sys.executable,
           "PATH": f"{venv_bin}{os.pathsep}{os.environ.get('PATH', '')}"}
    if device == "cpu":
        env["CUDA_VISIBLE_DEVICES"] = ""  # the torch stages pick CUDA when they see one
    (work / "mlflow").mkdir(parents=True, exist_ok=True)
    return env


@dataclass
class Sampler:
    """Timestamped RSS of a process tree, split into JVM (java) and the rest."""

    pid: int
    interval: float
    samples: list[tuple[float, int, int]] = field(default_factory=list)  # (t, total, jvm)
    _stop: threading.Event = field(default_factory=threading.Event)

    def __post_init__(self) -> None:
        self._thread = threading.Thread(target=self._poll, daemon=True)

    def __enter__(self) -> Sampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    def _poll(self) -> None:
        try:
            root = psutil.Process(self.pid)
        except psutil.NoSuchProcess:
            return
        while not self._stop.is_set():
            total = jvm = 0
            try:
                processes = [root, *root.children(recursive=True)]
            except psutil.NoSuchProcess:
                return
            for process in processes:
                try:
                    rss = process.memory_info().rss
                    name = process.name()
                except (psutil.NoSuchProcess, psutil.AccessDenied):
                    continue  # ended while being read
                total += rss
                jvm += rss if name == "java" else 0
            self.samples.append((time.time(), total, jvm))
            self._stop.wait(self.interval)

    def peak(self, start: float, end: float) -> tuple[int, int, int]:
        """(total, jvm, python) peak bytes over the samples in [start, end]."""
        inside = [s for s in self.samples if start <= s[0] <= end]
        if not inside:
            return 0, 0, 0
        return (max(s[1] for s in inside), max(s[2] for s in inside),
                max(s[1] - s[2] for s in inside))


def task_intervals(airflow_home: Path, dag_id: str) -> dict[str, tuple[float, float, str]]:
    """{task_id: (start, end, state)} of the DAG's latest run, from the metadata database."""
    with sqlite3.connect(airflow_home / "airflow.db") as db:
        (run_id,) = db.execute("SELECT run_id FROM dag_run WHERE dag_id = ? ORDER BY id DESC "
                               "LIMIT 1", (dag_id,)).fetchone()
        rows = db.execute("SELECT task_id, start_date, end_date, state FROM task_instance "
                          "WHERE dag_id = ? AND run_id = ?", (dag_id, run_id)).fetchall()
    # a task still running when the run was killed (--timeout): up to now
    return {task: (_epoch(start), _epoch(end) if end else time.time(),
                   str(state) if end else "killed")
            for task, start, end, state in rows if start}


def _epoch(stamp: str) -> float:
    parsed = datetime.fromisoformat(str(stamp))
    return (parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)).timestamp()


def _kill_tree(pid: int) -> None:
    try:
        root = psutil.Process(pid)
        processes = [*root.children(recursive=True), root]
    except psutil.NoSuchProcess:
        return
    for process in processes:
        with contextlib.suppress(psutil.NoSuchProcess):
            process.kill()


def run_dag(env: dict[str, str], work: Path, interval: float,
            timeout: float | None) -> tuple[int, float, Sampler]:
    """(exit code, wall seconds, samples) of `airflow dags test`; its log in <work>. Past
    `timeout` seconds the run and its processes are killed: exit code TIMED_OUT."""
    airflow = str(Path(sys.executable).parent / "airflow")
    with open(work / "migrate.log", "w") as log:
        subprocess.run([airflow, "db", "migrate"], env=env, stdout=log,
                       stderr=subprocess.STDOUT, check=True)
    started = time.perf_counter()
    with open(work / "dag.log", "w") as log:
        process = subprocess.Popen([airflow, "dags", "test", f"ncf_{DATASET}", DATE], env=env,
                                   stdout=log, stderr=subprocess.STDOUT, cwd=REPO)
        with Sampler(process.pid, interval) as sampler:
            try:
                code = process.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                _kill_tree(process.pid)
                process.wait()
                code = TIMED_OUT
    return code, time.perf_counter() - started, sampler


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def run_scheduled(env: dict[str, str], work: Path, interval: float,
                  timeout: float | None) -> tuple[int, float, Sampler]:
    """(exit code, wall seconds, samples) of one run through the production stack: `make
    up`'s components on free ports, the date triggered and followed through the REST API
    (the task states in <work>/dag.log), the stack stopped after, whatever happened. Past
    `timeout` seconds: exit code TIMED_OUT (stopping the stack kills the run)."""
    env = {**env, "NCF_AIRFLOW_PORT": str(_free_port()), "NCF_MLFLOW_PORT": str(_free_port()),
           "NCF_RETRY_DELAY_S": env.get("NCF_RETRY_DELAY_S", "10")}
    settings = stack.settings_from_env(env)
    dag_id = f"ncf_{DATASET}"
    started = time.perf_counter()
    try:
        print(stack.up(settings, schedule=False, environ=env), flush=True)
        api = trigger.Api.login(settings)
        with (Sampler(stack.running(settings)["scheduler"], interval) as sampler,
              open(work / "dag.log", "w") as log, trigger.unpaused(api, dag_id)):
            run_id = trigger.trigger(api, dag_id, DATE)
            try:
                state = trigger.follow(api, dag_id, run_id, out=log,
                                       timeout=timeout or 6 * 3600.0)
                code = 0 if state == "success" else 1
            except trigger.TriggerError as exc:
                if timeout is None or time.perf_counter() - started < timeout:
                    raise
                print(exc, file=log)
                code = TIMED_OUT
                # the tasks' own sessions (spark-submit, the JVMs) outlive a killed group
                scheduler = stack.running(settings).get("scheduler")
                if scheduler is not None:
                    _kill_tree(scheduler)
    finally:
        stack.down(settings)
    return code, time.perf_counter() - started, sampler


def measure(work: Path, sampler: Sampler, wall: float) -> dict[str, Any]:
    intervals = task_intervals(work / "airflow", f"ncf_{DATASET}")
    paths = layout.LakePaths(work / "lake", DATASET, DATE)
    manifest = layout.read_manifest(paths) if paths.manifest.is_file() else {}
    stages = {}
    for task in TASKS:
        if task not in intervals:
            stages[task] = {"state": "not run"}
            continue
        start, end, state = intervals[task]
        total, jvm, python = sampler.peak(start, end)
        stages[task] = {"state": state, "seconds": round(end - start, 1),
                        "peak_rss_gib": round(total / GIB, 2), "peak_jvm_gib": round(jvm / GIB, 2),
                        "peak_python_gib": round(python / GIB, 2)}
    prepared = manifest.get("prepare") or {}
    ran = [interval for task, interval in intervals.items() if task in TASKS]
    run_seconds = max(end for _, end, _ in ran) - min(start for start, _, _ in ran) if ran \
        else 0.0
    return {"stages": stages, "wall_seconds": round(wall, 1),
            "run_seconds": round(run_seconds, 1),
            "stage_seconds": round(sum(s.get("seconds", 0.0) for s in stages.values()), 1),
            "peak_rss_gib": round(max((s[1] for s in sampler.samples), default=0) / GIB, 2),
            "counts": {key: prepared.get(key) for key in (
                "n_users", "n_items", "train_rows", "validation_rows", "test_rows")},
            "served_family": (manifest.get("candidates") or {}).get("served_family"),
            "per_family": family_seconds(manifest),
            "validate_modes": {stage: (manifest.get(f"validate_{stage}") or {}).get("mode")
                               for stage in ("interactions", "splits", "recommendations")}}


def family_seconds(manifest: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Inside the candidates stage: each family's seconds per protocol step (select, refit
    for test, refit to serve) and validation metric, or the reason it was skipped."""
    families = (manifest.get("candidates") or {}).get("families") or {}
    return {name: {"skipped": entry.get("skipped"), "seconds": entry.get("seconds") or {},
                   "val_ndcg_10": (entry.get("validation") or {}).get("val_ndcg_10")}
            for name, entry in families.items()}


def markdown(result: dict[str, Any]) -> str:
    shape = result["shape"]
    lines = [f"DAG ncf_{DATASET}: {shape['events']:,} events, {shape['users']:,} users x "
             f"{shape['items']:,} items; training {result['training']}, families "
             f"{result['families']}, device {result['device']}, mode "
             f"{result.get('mode', 'test')}; wall {result['wall_seconds']:.0f} s, the run "
             f"{result.get('run_seconds', 0.0):.0f} s (first task's start to last one's end)",
             "",
             "| stage | state | seconds | peak RSS GiB | JVM GiB | Python GiB |",
             "|---|---|---:|---:|---:|---:|"]
    for task, stage in result["stages"].items():
        if "seconds" not in stage:
            lines.append(f"| {task} | {stage['state']} | | | | |")
            continue
        lines.append(f"| {task} | {stage['state']} | {stage['seconds']:.1f} | "
                     f"{stage['peak_rss_gib']:.2f} | {stage['peak_jvm_gib']:.2f} | "
                     f"{stage['peak_python_gib']:.2f} |")
    lines.append(f"| **total** | {'success' if result['success'] else 'failed'} | "
                 f"{result['stage_seconds']:.1f} | {result['peak_rss_gib']:.2f} | | |")
    if result.get("per_family"):
        lines += ["", f"candidates, per family (served: {result.get('served_family')}):", "",
                  "| family | select s | refit for test s | refit to serve s | val NDCG@10 |",
                  "|---|---:|---:|---:|---:|"]
        for name, family in result["per_family"].items():
            if family["skipped"]:
                lines.append(f"| {name} | skipped: {family['skipped']} | | | |")
                continue
            seconds = family["seconds"]
            cells = [f"{seconds[key]:.1f}" if key in seconds else ""
                     for key in ("select", "refit_test", "refit_serve")]
            metric = family["val_ndcg_10"]
            lines.append(f"| {name} | {' | '.join(cells)} | "
                         f"{'' if metric is None else f'{metric:.4f}'} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--events", type=int, default=synthetic.ML_20M_EVENTS)
    parser.add_argument("--users", type=int, default=None, help="default: scaled from ML-20M")
    parser.add_argument("--items", type=int, default=None, help="default: scaled from ML-20M")
    parser.add_argument("--seed", type=int, default=0, help="of the synthetic log")
    parser.add_argument("--training", choices=("capped", "shipped"), default="capped")
    parser.add_argument("--families", default=None,
                        help="candidates.families, comma-separated (default: as shipped, all; "
                             "fewer only for a quick smoke run)")
    parser.add_argument("--validate", choices=("auto", "full", "sampled"), default=None,
                        help="validate.mode (default: the config's, i.e. auto)")
    parser.add_argument("--mode", choices=("test", "scheduler"), default="test",
                        help="airflow dags test (one task at a time, as make run) or the "
                             "production stack's scheduler (als beside train, as make up)")
    parser.add_argument("--device", choices=("auto", "cpu"), default="auto",
                        help="cpu hides CUDA from the torch stages")
    parser.add_argument("--work", type=Path, default=Path("/tmp/ncf-dag-scale"),
                        help="lake, Airflow home, MLflow store, logs (emptied first)")
    parser.add_argument("--cache-dir", type=Path, default=Path(os.environ.get(
        "NCF_CACHE_DIR", "/tmp/ncf-bench")), help="where the synthetic log is kept")
    parser.add_argument("--interval", type=float, default=0.5, help="RSS sampling, seconds")
    parser.add_argument("--out", type=Path, default=None, help="also write the JSON here")
    parser.add_argument("--timeout", type=float, default=None,
                        help="seconds; past them the DAG run is killed and the table shows "
                             "the stages that ran")
    args = parser.parse_args(argv)
    users, items = scaled_shape(args.events, args.users, args.items)
    csv, sha256 = ratings_csv(args.cache_dir, users, items, args.events, args.seed)
    work = args.work.resolve()
    if work.exists():
        subprocess.run(["rm", "-rf", str(work)], check=True)
    raw = work / "raw"
    (raw / "ml-20m").mkdir(parents=True)
    (raw / "ml-20m" / "ratings.csv").symlink_to(csv)
    families = args.families.split(",") if args.families else None
    write_config(work / "configs", sha256, args.training, families, args.validate)
    env = environment(work, raw, args.device)
    print(f"running ncf_{DATASET} on {args.events:,} events ({users:,} users x {items:,} "
          f"items), training {args.training}, mode {args.mode}; log: {work / 'dag.log'}",
          flush=True)
    run = run_scheduled if args.mode == "scheduler" else run_dag
    code, wall, sampler = run(env, work, args.interval, args.timeout)
    result = {"shape": {"events": args.events, "users": users, "items": items,
                        "seed": args.seed},
              "training": args.training, "families": families or "as shipped",
              "device": args.device, "mode": args.mode, "exit_code": code,
              "success": code == 0, "load_average": os.getloadavg()[0],
              **measure(work, sampler, wall)}
    result["success"] = code == 0 and all(s.get("state") == "success"
                                          for s in result["stages"].values())
    table = markdown(result)
    (work / "dag_scale.md").write_text(table)
    (work / "dag_scale.json").write_text(json.dumps(result, indent=2) + "\n")
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(table, flush=True)
    if not result["success"]:
        why = "timed out" if code == TIMED_OUT else f"did not succeed (exit {code})"
        print(f"the DAG {why}; see {work / 'dag.log'}", flush=True)
    return 0 if result["success"] else 1


if __name__ == "__main__":
    sys.exit(main())
