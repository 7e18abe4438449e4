"""Data-prep benchmark: ingest + prepare through the real Spark jobs vs the tutorial pandas way.

    python bench/prep.py [--events 20000263] [--shuffle-partitions 16] [--baseline-users 0.25]
                         [--skip pandas] [--train-negatives 4]

On a seeded synthetic MovieLens-20M `ratings.csv` (bench/synthetic.py; generated once
into $NCF_CACHE_DIR or /tmp/ncf-bench), in one run:
  spark   `spark-submit jobs/ingest.py` then `jobs/prepare.py` with configs/ml-20m.yaml's
          prepare section (leave-one-out split, no training negatives unless
          --train-negatives, 99 per evaluated user for validation and test), each
          a subprocess on --master;
  pandas  the same steps as the tutorials write them: read_csv, binarise, sort by time,
          last per user -> test, second last -> validation, then negatives drawn in a
          Python loop with rejection against the user's set of touched items, and the
          three splits written to Parquet.
Each is timed (wall) and its peak memory taken as the largest sum of the resident set
sizes of its whole process tree (JVM, Python driver and workers), sampled every 0.25 s
from /proc (Linux). With --baseline-users F < 1 the pandas per-user steps run on a
seeded fraction F of the users and their time is extrapolated linearly (printed as
such); reading the CSV is always timed on the whole file. Prints figures and the ratio;
asserts nothing. The machine's load average is printed beside them: on a shared
machine the figures move with it.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import yaml

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from bench import synthetic  # noqa: E402
from jobs.lake import layout  # noqa: E402

DATE = "2026-01-01"
DATASET = "ml-20m-synthetic"


class TreeMemory:
    """Peak of the summed RSS of a process and all its descendants, polled from /proc."""

    def __init__(self, pid: int, interval: float = 0.25) -> None:
        self.pid, self.interval, self.peak = pid, interval, 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._poll, daemon=True)

    def __enter__(self) -> TreeMemory:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    def _poll(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, tree_rss(self.pid))
            self._stop.wait(self.interval)


def tree_rss(root: int) -> int:
    """Bytes resident in `root` and its descendants (shared pages counted in each)."""
    children: dict[int, list[int]] = {}
    rss: dict[int, int] = {}
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            with open(f"/proc/{entry.name}/stat") as stat:
                fields = stat.read().rsplit(")", 1)[1].split()
            pid, ppid = int(entry.name), int(fields[1])
            rss[pid] = int(fields[21]) * os.sysconf("SC_PAGE_SIZE")
        except (OSError, IndexError, ValueError):
            continue  # the process ended while being read
        children.setdefault(ppid, []).append(pid)
    total, todo = 0, [root]
    while todo:
        pid = todo.pop()
        total += rss.get(pid, 0)
        todo.extend(children.get(pid, []))
    return total


def run_measured(command: list[str], env: dict[str, str], log: Path) -> tuple[float, int]:
    """(wall seconds, peak tree RSS bytes) of a subprocess; its output goes to `log`."""
    started = time.perf_counter()
    with open(log, "w") as out:
        process = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, env=env,
                                   cwd=REPO)
        with TreeMemory(process.pid) as memory:
            code = process.wait()
    wall = time.perf_counter() - started
    if code != 0:
        raise SystemExit(f"{' '.join(command[:6])} ... failed ({code}); see {log}:\n"
                         + log.read_text()[-3000:])
    return wall, memory.peak


# --- the input -------------------------------------------------------------------------

def synthetic_ratings(args: argparse.Namespace) -> tuple[Path, str]:
    """The cached synthetic ratings.csv for these arguments and its sha256 (made once)."""
    name = f"u{args.users}-i{args.items}-e{args.events}-s{args.seed}"
    csv = args.cache_dir / "synthetic" / name / "ml-20m" / "ratings.csv"
    digest_file = csv.with_suffix(".sha256")
    if not (csv.is_file() and digest_file.is_file()):
        started = time.perf_counter()
        synthetic.write_ratings_csv(csv, n_users=args.users, n_items=args.items,
                                    n_events=args.events, seed=args.seed)
        digest_file.write_text(layout.sha256_file(csv))
        print(f"generated {csv} in {time.perf_counter() - started:.0f} s")
    return csv, digest_file.read_text().strip()


def bench_config(folder: Path, csv: Path, sha256: str, *,
                 train_negatives: int | None = None) -> Path:
    """configs/ml-20m.yaml with the synthetic file as its only source file (and, with
    `train_negatives`, that many training negatives per positive written to train/)."""
    config = yaml.safe_load((REPO / "configs" / "ml-20m.yaml").read_text())
    config["dataset"] = DATASET
    if train_negatives is not None:
        config["prepare"]["n_negatives"] = train_negatives
    config["source"] = {"format": "movielens-csv",
                        "files": {"ratings": {"path": "ml-20m/ratings.csv", "sha256": sha256}}}
    path = folder / "bench.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


# --- spark -------------------------------------------------------------------------

def bench_spark(args: argparse.Namespace, config: Path, raw_dir: Path,
                work: Path) -> dict[str, tuple[float, int]]:
    env = {**os.environ, "SPARK_LOCAL_IP": os.environ.get("SPARK_LOCAL_IP", "127.0.0.1"),
           "PYSPARK_PYTHON": sys.executable, "PYSPARK_DRIVER_PYTHON": sys.executable,
           "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"}
    env.pop("JAVA_TOOL_OPTIONS", None)  # the tests' C1-only JIT would slow the benchmark
    submit = [str(Path(sys.executable).parent / "spark-submit"), "--master", args.master,
              "--driver-memory", args.driver_memory,
              "--conf", "spark.ui.enabled=false",
              "--conf", f"spark.sql.shuffle.partitions={args.shuffle_partitions}"]
    common = ["--config", str(config), "--logical-date", DATE,
              "--lake-root", str(work / "lake")]
    stages = {
        "ingest": [*submit, str(REPO / "jobs" / "ingest.py"), *common,
                   "--raw-dir", str(raw_dir), "--cache-dir", str(work / "cache")],
        "prepare": [*submit, str(REPO / "jobs" / "prepare.py"), *common],
    }
    figures = {}
    for stage, command in stages.items():
        figures[stage] = run_measured(command, env, work / f"{stage}.log")
        print(f"  spark {stage}: {figures[stage][0]:.0f} s, "
              f"{figures[stage][1] / 2**30:.1f} GiB (load {load()})", flush=True)
    manifest = json.loads(layout.LakePaths(work / "lake", DATASET, DATE).manifest.read_text())
    counts = manifest["prepare"]
    print("  spark counts: " + ", ".join(f"{k}={counts.get(k)}" for k in (
        "n_users", "n_items", "train_rows", "validation_rows", "test_rows")))
    return figures


# --- pandas (the tutorial way) -----------------------------------------------------------

def pandas_prepare(csv: Path, out: Path, *, fraction: float, n_negatives: int,
                   n_eval_negatives: int, threshold: float | None, seed: int) -> dict[str, Any]:
    """The tutorial pipeline; returns seconds per step and row counts."""
    import numpy as np
    import pandas as pd

    seconds: dict[str, float] = {}
    started = time.perf_counter()
    ratings = pd.read_csv(csv)
    seconds["read_csv"] = time.perf_counter() - started

    started = time.perf_counter()
    if fraction < 1:
        users = ratings["userId"].unique()
        keep = np.random.default_rng(seed).choice(users, int(round(len(users) * fraction)),
                                                  replace=False)
        ratings = ratings[ratings["userId"].isin(keep)]
    touched_ratings = ratings
    if threshold is not None:
        ratings = ratings[ratings["rating"] >= threshold]
    ratings = ratings.sort_values("timestamp").drop_duplicates(["userId", "movieId"],
                                                               keep="last")
    ratings["user_idx"] = ratings["userId"].astype("category").cat.codes
    items = ratings["movieId"].astype("category")
    ratings["item_idx"] = items.cat.codes
    n_items = len(items.cat.categories)
    ratings["rank_latest"] = ratings.groupby("user_idx")["timestamp"].rank(
        method="first", ascending=False)
    ratings["n"] = ratings.groupby("user_idx")["item_idx"].transform("size")
    evaluated = ratings["n"] >= 3
    test = ratings[evaluated & (ratings["rank_latest"] == 1)]
    validation = ratings[evaluated & (ratings["rank_latest"] == 2)]
    train = ratings[~evaluated | (ratings["rank_latest"] > 2)]
    item_of = dict(zip(items.cat.categories, range(n_items), strict=True))
    user_of = dict(zip(ratings["userId"], ratings["user_idx"], strict=False))
    touched: dict[int, set[int]] = {}
    for user, movie in zip(touched_ratings["userId"], touched_ratings["movieId"],
                           strict=True):
        if user in user_of and movie in item_of:
            touched.setdefault(user_of[user], set()).add(item_of[movie])
    seconds["split"] = time.perf_counter() - started

    started = time.perf_counter()
    draw = random.Random(seed).randrange
    users_out, items_out, labels_out = [], [], []
    for user, item in zip(train["user_idx"].tolist(), train["item_idx"].tolist(),
                          strict=True):
        seen = touched[user]
        users_out.append(user)
        items_out.append(item)
        labels_out.append(1)
        for _ in range(n_negatives):
            negative = draw(n_items)
            while negative in seen:
                negative = draw(n_items)
            users_out.append(user)
            items_out.append(negative)
            labels_out.append(0)
    train_out = pd.DataFrame({"user_idx": users_out, "item_idx": items_out,
                              "label": labels_out})
    seconds["train negatives"] = time.perf_counter() - started

    started = time.perf_counter()
    eval_out = {}
    for name, split in (("validation", validation), ("test", test)):
        users_out, items_out, labels_out = [], [], []
        for user, item in zip(split["user_idx"].tolist(), split["item_idx"].tolist(),
                              strict=True):
            seen = touched[user]
            users_out.append(user)
            items_out.append(item)
            labels_out.append(1)
            chosen: set[int] = set()
            while len(chosen) < min(n_eval_negatives, n_items - len(seen)):
                negative = draw(n_items)
                if negative not in seen and negative not in chosen:
                    chosen.add(negative)
                    users_out.append(user)
                    items_out.append(negative)
                    labels_out.append(0)
        eval_out[name] = pd.DataFrame({"user_idx": users_out, "item_idx": items_out,
                                       "label": labels_out})
    seconds["eval negatives"] = time.perf_counter() - started

    started = time.perf_counter()
    out.mkdir(parents=True, exist_ok=True)
    for name, frame in (("train", train_out), *eval_out.items()):
        frame.astype({"user_idx": "int32", "item_idx": "int32", "label": "int8"}).to_parquet(
            out / f"{name}.parquet", index=False)
    seconds["write parquet"] = time.perf_counter() - started
    return {"seconds": seconds, "rows": {"train": len(train_out),
                                         **{k: len(v) for k, v in eval_out.items()}}}


def prepare_params(config: Path) -> dict[str, Any]:
    """The prepare section's negatives, seed and binarisation threshold (None: all)."""
    prepare = yaml.safe_load(config.read_text())["prepare"]
    rule = prepare.get("binarise")
    threshold = (prepare.get("binarise_threshold") if rule is None
                 else rule.get("threshold") if rule.get("rule", "threshold") == "threshold"
                 else None)
    return {"n_negatives": prepare["n_negatives"],
            "n_eval_negatives": prepare["n_eval_negatives"],
            "threshold": threshold, "seed": prepare["seed"]}


def bench_pandas(args: argparse.Namespace, csv: Path, config: Path,
                 work: Path) -> tuple[float, int, dict[str, Any]]:
    """(wall, peak RSS, details) of the pandas baseline, run in its own process."""
    result = work / "pandas.json"
    command = [sys.executable, str(Path(__file__).resolve()), "--run-pandas", str(csv),
               str(config), str(work / "pandas"), str(args.baseline_users), str(result)]
    wall, peak = run_measured(command, dict(os.environ), work / "pandas.log")
    return wall, peak, json.loads(result.read_text())


# --- report ------------------------------------------------------------------------

def load() -> str:
    return " ".join(f"{x:.1f}" for x in os.getloadavg())


def report(spark: dict[str, tuple[float, int]] | None,
           baseline: tuple[float, int, dict[str, Any]] | None, fraction: float) -> None:
    print(f"\n{'':28} {'wall s':>9} {'peak GiB':>9}")
    spark_total = None
    if spark:
        for stage, (wall, peak) in spark.items():
            print(f"{'spark ' + stage:28} {wall:9.1f} {peak / 2**30:9.2f}")
        spark_total = sum(wall for wall, _ in spark.values())
        print(f"{'spark ingest + prepare':28} {spark_total:9.1f} "
              f"{max(p for _, p in spark.values()) / 2**30:9.2f}")
    if baseline:
        wall, peak, details = baseline
        seconds = details["seconds"]
        scale = 1 / fraction
        for step, s in seconds.items():
            shown = s if step == "read_csv" else s * scale
            print(f"{'pandas ' + step:28} {shown:9.1f}"
                  + ("  (extrapolated)" if fraction < 1 and step != "read_csv" else ""))
        startup = max(0.0, wall - sum(seconds.values()))
        total = seconds["read_csv"] + startup + (sum(seconds.values())
                                                 - seconds["read_csv"]) * scale
        note = f"  extrapolated from {fraction:.0%} of users" if fraction < 1 else ""
        print(f"{'pandas total':28} {total:9.1f} {peak / 2**30:9.2f}{note}")
        print(f"  pandas rows: {details['rows']}" + (" (of the sampled users)"
                                                      if fraction < 1 else ""))
        if spark_total:
            print(f"\nwall time, spark / pandas: {spark_total / total:.2f}x "
                  f"(pandas / spark: {total / spark_total:.2f}x)"
                  + (", pandas extrapolated" if fraction < 1 else ""))
    print(f"load average now: {load()} on {os.cpu_count()} cores")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--users", type=int, default=synthetic.ML_20M_USERS)
    parser.add_argument("--items", type=int, default=synthetic.ML_20M_ITEMS)
    parser.add_argument("--events", type=int, default=synthetic.ML_20M_EVENTS)
    parser.add_argument("--seed", type=int, default=0, help="of the synthetic data")
    parser.add_argument("--cache-dir", type=Path, default=Path(os.environ.get(
        layout.ENV_CACHE_DIR, "/tmp/ncf-bench")))
    parser.add_argument("--master", default="local[2]")
    parser.add_argument("--driver-memory", default="16g")
    parser.add_argument("--shuffle-partitions", type=int, default=16)
    parser.add_argument("--baseline-users", type=float, default=1.0, metavar="FRACTION",
                        help="run the pandas baseline on this seeded share of the users "
                             "and extrapolate its per-user steps linearly")
    parser.add_argument("--skip", choices=("spark", "pandas"), default=None)
    parser.add_argument("--train-negatives", type=int, default=None, metavar="N",
                        help="write N training negatives per positive (the config: 0, the "
                             "trainer draws its own; before issue 13 the lake held 4)")
    parser.add_argument("--keep", action="store_true", help="keep the lake and logs")
    parser.add_argument("--run-pandas", nargs=5, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.run_pandas:  # the baseline's own process (bench_pandas)
        csv, config, out, fraction, result = args.run_pandas
        details = pandas_prepare(Path(csv), Path(out), fraction=float(fraction),
                                 **prepare_params(Path(config)))
        Path(result).write_text(json.dumps(details))
        return 0
    if not 0 < args.baseline_users <= 1:
        parser.error("--baseline-users must be in (0, 1]")

    csv, sha256 = synthetic_ratings(args)
    raw_dir = csv.parents[1]
    work = Path(tempfile.mkdtemp(prefix="run-", dir=args.cache_dir))
    try:
        config = bench_config(work, csv, sha256, train_negatives=args.train_negatives)
        print(f"{args.events} events, {args.users} users, {args.items} items; spark "
              f"{args.master}, driver {args.driver_memory}, {args.shuffle_partitions} "
              f"shuffle partitions; load {load()}; work folder {work}", flush=True)
        spark = None if args.skip == "spark" else bench_spark(args, config, raw_dir, work)
        baseline = None
        if args.skip != "pandas":
            baseline = bench_pandas(args, csv, config, work)
            print(f"  pandas: {baseline[0]:.0f} s, {baseline[1] / 2**30:.1f} GiB "
                  f"(load {load()})", flush=True)
        report(spark, baseline, args.baseline_users)
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
