"""Model quality: every candidate family under the serving protocol, over several seeds.

    python bench/quality.py --raw-dir ../shared/data --seeds 3 \
        [--datasets ml-100k ml-latest-small lastfm-2k] [--families ncf mf als ease popularity]
        [--set sasrec.loss=softmax ...]

Per dataset the real stages run, each in its own process, exactly as the DAG runs them:
ingest and prepare once (Spark, the dataset's config: leave-one-out by time, or a seeded
random hold-out without timestamps, 99 sampled negatives: the split and the evaluation
negatives stay fixed), then per seed `jobs.als`, `ncf_model train` and `ncf_model
candidates` with every training seed (train.seed, mf.seed, als.seed, sasrec.seed) set to
it, over the families the dataset's config lists (or --families); `--set SECTION.KEY=VALUE`
(a YAML value) changes one setting of every dataset's config, to compare settings (prepare
settings included: the lake is then prepared with them). With --families, `jobs.als` runs
only when als is listed, and without ncf the flagship trains one epoch only (the candidates
stage logs under its run). Each dataset's config is read once, at the start. The
candidates stage fits each family on train with its settings chosen on validation, refits
it on train + validation and reports test; the served family is the best on validation.
Prints, per dataset and family, mean ± std over the seeds of test HR@10 / NDCG@10
(sampled, 99 negatives) and full-ranking NDCG@10, the validation score that chooses, and
how often each family was served. Everything goes to one MLflow store
(--work/mlflow.db). Asserts nothing.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import yaml

REPO = Path(__file__).resolve().parents[1]
DATE = "2026-11-23"
FAMILIES = ("ncf", "mf", "als", "ease", "sasrec", "popularity")
SEEDS = (42, 7, 1234)  # the training seeds, in order; --seeds N takes the first N


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
    path = work / "configs" / f"{cfg['dataset']}-{name}.yaml"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    return path


def _manifest(work: Path, dataset: str) -> dict[str, Any]:
    return json.loads((work / "lake" / dataset / DATE / "_manifest.json").read_text())


def bench_dataset(dataset: str, args: argparse.Namespace,
                  env: dict[str, str]) -> dict[str, list[dict[str, Any]]]:
    """{family: one record per seed (validation and test metrics, served or not)}."""
    base = args.work / "configs" / f"{dataset}.base.yaml"
    work, py = args.work, sys.executable
    log = work / f"{dataset}.log"
    common = ["--logical-date", DATE, "--lake-root", str(work / "lake")]
    data_cfg = _config(base, work, "data", args.set)
    seconds = _run([py, "-m", "jobs.ingest", "--config", str(data_cfg), *common,
                    "--raw-dir", str(args.raw_dir), "--cache-dir", str(work / "cache")],
                   log, env)
    seconds += _run([py, "-m", "jobs.prepare", "--config", str(data_cfg), *common], log, env)
    prepared = _manifest(work, dataset)["prepare"]
    print(f"{dataset}: ingest + prepare {seconds:.0f} s; {prepared['n_users']:,} users, "
          f"{prepared['n_items']:,} items, {prepared['n_positives']:,} positives", flush=True)
    results: dict[str, list[dict[str, Any]]] = {}
    for seed in args.seed or SEEDS[:args.seeds]:
        overrides: dict[str, dict[str, Any]] = {
            section: dict(values) for section, values in args.set.items()}
        for section in ("train", "mf", "als", "sasrec"):
            overrides.setdefault(section, {})["seed"] = seed
        stages = [("als", "jobs.als", []), ("train", "ncf_model", ["train"]),
                  ("candidates", "ncf_model", ["candidates"])]
        if args.families:  # else the dataset's own candidates
            overrides.setdefault("candidates", {})["families"] = list(args.families)
            if "ncf" not in args.families:
                overrides["train"]["epochs"] = 1
            if "als" not in args.families:
                stages = stages[1:]
        cfg = _config(base, work, f"seed{seed}", overrides)
        timings = {stage: _run([py, "-m", module, *stage_args, "--config", str(cfg), *common],
                               log, env)
                   for stage, module, stage_args in stages}
        entry = _manifest(work, dataset)["candidates"]
        for family, record in entry["families"].items():
            results.setdefault(family, []).append({
                **record.get("validation", {}), **record.get("test", {}),
                "served": family == entry["served_family"], "skipped": record["skipped"],
                "seconds": sum(record.get("seconds", {}).values())
                + (timings["train"] if family == "ncf" else 0.0)
                + (timings.get("als", 0.0) if family == "als" else 0.0)})
        print(f"  seed {seed}: served {entry['served_family']}; stages "
              f"{', '.join(f'{k} {v:.0f} s' for k, v in timings.items())}; held-out items "
              f"the fit never saw (an id-only family's HR@K ceiling is 1 minus it): "
              f"validation {entry.get('val_unseen_item_share', float('nan')):.3f}, "
              f"test {entry.get('test_unseen_item_share', float('nan')):.3f}", flush=True)
        # One JSON line per seed: a cut-short run still leaves its figures.
        with (work / "results.jsonl").open("a") as out:
            out.write(json.dumps({"dataset": dataset, "seed": seed,
                                  "served": entry["served_family"],
                                  "families": entry["families"]}) + "\n")
    return results


def _setting(text: str) -> tuple[str, str, Any]:
    """`SECTION.KEY=VALUE` -> (section, key, the YAML value)."""
    name, sep, value = text.partition("=")
    section, dot, key = name.partition(".")
    if not (sep and dot and section and key):
        raise argparse.ArgumentTypeError(f"{text!r}: expected SECTION.KEY=VALUE, e.g. "
                                         "sasrec.loss=softmax")
    return section, key, yaml.safe_load(value)


def _stat(values: list[float]) -> str:
    if not values:
        return "—"
    mean = statistics.fmean(values)
    std = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{mean:.3f} ± {std:.3f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--raw-dir", type=Path, default=os.environ.get("NCF_SHARED_DATA"),
                        required=os.environ.get("NCF_SHARED_DATA") is None)
    parser.add_argument("--datasets", nargs="+",
                        default=["ml-100k", "ml-latest-small", "lastfm-2k"])
    parser.add_argument("--families", nargs="+", choices=FAMILIES, default=None,
                        help="default: each dataset config's candidates.families")
    parser.add_argument("--seeds", type=int, default=3, choices=range(1, len(SEEDS) + 1))
    parser.add_argument("--seed", type=int, action="append", choices=SEEDS,
                        help="run only this training seed (repeatable; overrides --seeds): "
                             "seeds of one study in parallel, one work folder each")
    parser.add_argument("--work", type=Path, default=Path("/tmp/ncf-quality"))
    parser.add_argument("--set", type=_setting, action="append", default=[],
                        metavar="SECTION.KEY=VALUE", help="change one config setting")
    args = parser.parse_args()
    settings: dict[str, dict[str, Any]] = {}
    for section, key, value in args.set:
        settings.setdefault(section, {})[key] = value
    args.set = settings
    args.work = args.work.resolve()
    args.raw_dir = Path(args.raw_dir).resolve()
    args.work.mkdir(parents=True, exist_ok=True)
    for dataset in args.datasets:  # later edits of configs/ never reach a running bench
        snapshot = args.work / "configs" / f"{dataset}.base.yaml"
        snapshot.parent.mkdir(parents=True, exist_ok=True)
        snapshot.write_text((REPO / "configs" / f"{dataset}.yaml").read_text())
    env = {**os.environ, "MLFLOW_TRACKING_URI": f"sqlite:///{args.work / 'mlflow.db'}",
           "NCF_MLFLOW_ARTIFACT_ROOT": str(args.work / "mlruns"),
           "SPARK_LOCAL_IP": "127.0.0.1", "PYTHONPATH": str(REPO)}
    env["PATH"] = f"{Path(sys.executable).parent}:{env.get('PATH', '')}"
    print(f"load {os.getloadavg()[0]:.2f}; work folder {args.work}; settings {args.set}",
          flush=True)
    table = {dataset: bench_dataset(dataset, args, env) for dataset in args.datasets}
    print(f"\n{len(args.seed or SEEDS[:args.seeds])} seed(s), mean ± std; test after the "
          "refit on train + validation; "
          "val = the validation NDCG@10 that chooses")
    print("| dataset | family | test HR@10 | test NDCG@10 | test full NDCG@10 | val NDCG@10 "
          "| served | s/seed |")
    print("|---|---|---|---|---|---|---|---|")
    for dataset, families in table.items():
        served = [record for rows in families.values() for record in rows if record["served"]]
        for family, rows in [*families.items(), ("**served**", served)]:
            kept = [row for row in rows if not row.get("skipped")]
            if not kept:
                print(f"| {dataset} | {family} | skipped: {rows[0]['skipped']} |||||||")
                continue
            print(f"| {dataset} | {family} | "
                  f"{_stat([r['test_hr_10'] for r in kept])} | "
                  f"{_stat([r['test_ndcg_10'] for r in kept])} | "
                  f"{_stat([r['test_full_ndcg_10'] for r in kept if 'test_full_ndcg_10' in r])} | "
                  f"{_stat([r['val_ndcg_10'] for r in kept])} | "
                  f"{sum(r['served'] for r in kept)}/{len(kept)} | "
                  f"{statistics.fmean(r['seconds'] for r in kept):.0f} |")


if __name__ == "__main__":
    main()
