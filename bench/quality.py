"""Model quality: HR@10 / NDCG@10 / full-ranking NDCG@10 of every NCF variant and baseline.

    python bench/quality.py --raw-dir ../shared/data \
        [--datasets ml-100k ml-latest-small lastfm-2k] [--variants gmf mlp neumf ...]

Per dataset the real stages run, each in its own process, exactly as the DAG runs them:
ingest and prepare (Spark, the dataset's config: leave-one-out by time, or a seeded
random hold-out without timestamps, 99 sampled negatives), then for each variant
`python -m ncf_model train` + `evaluate` (epoch chosen on validation, metrics on test),
and the baselines (`python -m jobs.als`, `python -m ncf_model baselines`: popularity,
dot-product MF, Spark ALS). A variant is the dataset's config with a few model/train keys
changed (VARIANTS below); each is registered as its own model (ncf-<dataset>-<variant>)
with the champion floor off, so that every variant is evaluated. Everything goes to one
MLflow store (--work/mlflow.db): `MLFLOW_TRACKING_URI=sqlite:///<work>/mlflow.db make ui`
compares the runs. Prints a Markdown table; asserts nothing.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import yaml

REPO = Path(__file__).resolve().parents[1]
DATE = "2026-11-23"
VARIANTS: dict[str, dict[str, dict[str, Any]]] = {
    "gmf": {"model": {"kind": "gmf"}},
    "mlp": {"model": {"kind": "mlp"}},
    "neumf": {"model": {"kind": "neumf"}},
    "neumf-pretrain": {"model": {"kind": "neumf", "pretrain": True}},
    "neumf-bpr": {"model": {"kind": "neumf"}, "train": {"loss": "bpr"}},
    "hybrid": {"model": {"kind": "hybrid"}},
}
BASELINES = ("popularity", "mf", "als")


def _run(argv: list[str], log: Path, env: dict[str, str]) -> float:
    """Run one stage, its output to `log`; seconds taken. Fails loudly with the log's tail."""
    started = time.perf_counter()
    with log.open("a") as out:
        out.write(f"\n$ {' '.join(argv)}\n")
        out.flush()
        done = subprocess.run(argv, stdout=out, stderr=subprocess.STDOUT, env=env, cwd=REPO,
                              check=False)
    if done.returncode != 0:
        tail = log.read_text()[-4000:]
        raise SystemExit(f"{' '.join(argv)} exited {done.returncode}; log {log}:\n{tail}")
    return time.perf_counter() - started


def _config(base: Path, work: Path, name: str, overrides: dict[str, dict[str, Any]]) -> Path:
    cfg = yaml.safe_load(base.read_text())
    for section, values in overrides.items():
        cfg.setdefault(section, {}).update(values)
    cfg.setdefault("evaluate", {}).update({"min_hr": 0.0, "on_refusal": "skip"})
    path = work / "configs" / f"{cfg['dataset']}-{name}.yaml"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    return path


def _manifest(work: Path, dataset: str) -> dict[str, Any]:
    return json.loads((work / "lake" / dataset / DATE / "_manifest.json").read_text())


def _row(name: str, metrics: dict[str, float], seconds: float, epoch: Any = "") -> dict:
    def get(*keys: str) -> float | None:
        for key in keys:
            if key in metrics:
                return float(metrics[key])
        return None
    return {"model": name, "hr": get("test_hr_10", "hr_10"), "ndcg": get("test_ndcg_10", "ndcg_10"),
            "full_ndcg": get("test_full_ndcg_10", "full_ndcg_10"),
            "full_hr": get("test_full_hr_10", "full_hr_10"),
            "epoch": int(epoch) if isinstance(epoch, float) else epoch,  # MF logs a float
            "seconds": seconds}


def bench_dataset(dataset: str, args: argparse.Namespace, env: dict[str, str]) -> list[dict]:
    base = REPO / "configs" / f"{dataset}.yaml"
    work, py = args.work, sys.executable
    log = work / f"{dataset}.log"
    common = ["--logical-date", DATE, "--lake-root", str(work / "lake")]
    data_cfg = _config(base, work, "data", {})
    seconds = _run([py, "-m", "jobs.ingest", "--config", str(data_cfg), *common,
                    "--raw-dir", str(args.raw_dir), "--cache-dir", str(work / "cache")],
                   log, env)
    seconds += _run([py, "-m", "jobs.prepare", "--config", str(data_cfg), *common], log, env)
    prepared = _manifest(work, dataset)["prepare"]
    print(f"{dataset}: ingest + prepare {seconds:.0f} s; {prepared['n_users']:,} users, "
          f"{prepared['n_items']:,} items, {prepared['n_positives']:,} positives", flush=True)
    rows = []
    for variant in args.variants:
        cfg = _config(base, work, variant, VARIANTS[variant])
        model_name = ["--model-name", f"ncf-{dataset}-{variant}"]
        seconds = _run([py, "-m", "ncf_model", "train", "--config", str(cfg), *common], log, env)
        seconds += _run([py, "-m", "ncf_model", "evaluate", "--config", str(cfg), *common,
                         *model_name], log, env)
        manifest = _manifest(work, dataset)
        rows.append(_row(variant, manifest["evaluate"]["metrics"], seconds,
                         manifest["train"]["best_epoch"]))
        print(f"  {variant}: {rows[-1]}", flush=True)
    if not args.skip_baselines:
        seconds = _run([py, "-m", "jobs.als", "--config", str(data_cfg), *common], log, env)
        seconds += _run([py, "-m", "ncf_model", "baselines", "--config", str(data_cfg),
                         *common], log, env)
        entry = _manifest(work, dataset)["baselines"]
        names = [name for name in BASELINES if name in entry]
        for name in names:
            result = entry[name]
            # ALS is fitted by its own Spark job: its seconds count with the evaluation's.
            seconds = float(result.get("seconds", 0.0)) + float(result.get("als_job_seconds", 0.0))
            rows.append(_row(name, result["metrics"], seconds, result.get("best_epoch", "")))
            print(f"  {name}: {rows[-1]}", flush=True)
    return rows


def _fmt(value: float | None) -> str:
    return "—" if value is None else f"{value:.3f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--raw-dir", type=Path, default=os.environ.get("NCF_SHARED_DATA"),
                        required=os.environ.get("NCF_SHARED_DATA") is None)
    parser.add_argument("--datasets", nargs="+",
                        default=["ml-100k", "ml-latest-small", "lastfm-2k"])
    parser.add_argument("--variants", nargs="+", choices=sorted(VARIANTS),
                        default=list(VARIANTS))
    parser.add_argument("--skip-baselines", action="store_true")
    parser.add_argument("--work", type=Path, default=Path("/tmp/ncf-quality"))
    args = parser.parse_args()
    args.work = args.work.resolve()
    args.raw_dir = Path(args.raw_dir).resolve()
    args.work.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "MLFLOW_TRACKING_URI": f"sqlite:///{args.work / 'mlflow.db'}",
           "NCF_MLFLOW_ARTIFACT_ROOT": str(args.work / "mlruns"),
           "SPARK_LOCAL_IP": "127.0.0.1", "PYTHONPATH": str(REPO)}
    env["PATH"] = f"{Path(sys.executable).parent}:{env.get('PATH', '')}"
    print(f"load {os.getloadavg()[0]:.2f}; work folder {args.work}", flush=True)
    table = {dataset: bench_dataset(dataset, args, env) for dataset in args.datasets}
    print("\n| dataset | model | HR@10 | NDCG@10 | full NDCG@10 | full HR@10 | epoch | s |")
    print("|---|---|---|---|---|---|---|---|")
    for dataset, rows in table.items():
        for row in rows:
            print(f"| {dataset} | {row['model']} | {_fmt(row['hr'])} | {_fmt(row['ndcg'])} | "
                  f"{_fmt(row['full_ndcg'])} | {_fmt(row['full_hr'])} | {row['epoch']} | "
                  f"{row['seconds']:.0f} |")


if __name__ == "__main__":
    main()
