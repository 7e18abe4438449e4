"""Forward evaluation: the top-k the table served on day D against what each user did next.

    python bench/backtest.py --config configs/ml-100k-events.yaml [--from 2026-11-19]
        [--to 2026-11-23] [--horizon-days 7] [--k 10] [--baseline best|none] [--device cpu]
        [--no-mlflow] [--json out.json]
    (make backtest DATASET=ml-100k-events [FROM=...] [TO=...] [HORIZON=7])

Event-log datasets only (source.format: events): the log holds the days after each run.
Each cut date D (a lake run; one whose window passes the log's last day is left out) scores
three top-k lists per user against the user's *new positives*: the log's events (read as
ingest reads them, jobs.events) at or after D's as-of cut (prepare's `as_of`: the logical
date, 00:00 UTC) and before the cut + h days, binarised by the config's rule, less every
item the user touched before the cut.
  served      what the table served on D: topk/ of the latest run on or before D that
              published (when the gate skipped publish, the table kept that run's set)
  popularity  the k items with the most positives at D (every split of D's run), less the
              user's own positives; equal counts go to the lower item index
  baseline    the best family on D's validation (the candidates entry's select metric)
              other than the served model's and popularity, refitted as candidates would
              serve it (every positive at D, the settings its run chose; ALS: the als
              task's factors), its top-k unseen items. `--baseline none` skips it (a
              refit: seconds for EASE, ALS or MF on ML-100K, minutes for SASRec or NeuMF)
  HR@k        share of the evaluated users with at least one new positive in their top-k
  recall@k    mean over them of (new positives in the top-k) / (new positives)
Evaluated users: a served list on D, known to D's run, at least one new positive. The others
are left out of every denominator and counted: `quiet` (a list, no new positive) and
`unserved` (new positives, no list: users new since).

MLflow: each cut's numbers go to the run of the served model version (the recommend entry's
run id) as `forward_hr_<k>_<h>d`, `forward_recall_<k>_<h>d`, `forward_popularity_...`,
`forward_baseline_...`, `forward_users_<h>d`, step = the cut date in days since 1970-01-01,
and to the version as the tag `ncf.forward_<h>d.<D>` (JSON). Deterministic on the CPU.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import os
import sys
from collections.abc import Mapping, Sequence
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.forward_metrics import (  # noqa: E402
    BacktestError,
    Lists,
    Score,
    evaluated_users,
    forward_score,
)
from jobs.lake import layout  # noqa: E402
from jobs.lake.cli import configure_logging, logical_date  # noqa: E402
from jobs.lake.eventlog import DEFAULT_EVENTS_ROOT, ENV_EVENTS_ROOT  # noqa: E402
from jobs.ops import days  # noqa: E402

log = logging.getLogger("backtest")
__all__ = ["BacktestError", "Score", "evaluated_users", "forward_score"]

# --- the lake --------------------------------------------------------------------------------


def served_date(lake_root: Path, dataset: str, cut: str) -> str:
    """The latest run on or before `cut` that published: what the table served on `cut`."""
    for day in reversed(layout.lake_dates(lake_root, dataset)):
        if day <= cut and days.summarize(layout.read_manifest(
                layout.LakePaths(lake_root, dataset, day)), day).published_rows is not None:
            return day
    raise BacktestError(f"{dataset}: no run on or before {cut} published a table")


def read_lists(paths: layout.LakePaths, k: int) -> dict[str, list[str]]:
    """topk/ of a run as raw ids, the first k ranks per user."""
    from ncf_model.data import lake_ids

    users, items = lake_ids(paths)
    topk = layout.read_lake_table(paths.path(layout.TOPK), layout.TOPK_SCHEMA).to_pandas()
    if int(topk[layout.RANK].max()) < k:
        raise BacktestError(f"{paths.path(layout.TOPK)} holds {topk[layout.RANK].max()} "
                            f"items per user, fewer than k={k}")
    topk = topk[topk[layout.RANK] <= k].sort_values([layout.USER_IDX, layout.RANK])
    lists: dict[str, list[str]] = {}
    for user, item in zip(topk[layout.USER_IDX], topk[layout.ITEM_IDX], strict=True):
        lists.setdefault(users[int(user)], []).append(items[int(item)])
    return lists


def seen_before(paths: layout.LakePaths, as_of: datetime) -> dict[str, set[str]]:
    """Every item each user touched before the cut (interactions/; no time: before)."""
    frame = layout.read_lake_table(paths.path(layout.INTERACTIONS),
                                   layout.INTERACTIONS_SCHEMA).to_pandas()
    ts = frame[layout.TS]
    if ts.dt.tz is None:
        ts = ts.dt.tz_localize(UTC)
    before = frame[ts.isna() | (ts < as_of)]
    seen: dict[str, set[str]] = {}
    for user, item in zip(before[layout.USER_ID], before[layout.ITEM_ID], strict=True):
        seen.setdefault(str(user), set()).add(str(item))
    return seen


def cut_time(manifest: Mapping[str, Any], cut: str) -> datetime:
    """prepare's as-of cut; without one (as_of_cutoff off) the end of the logical date."""
    prepared = manifest.get("prepare") or {}
    if prepared.get("as_of"):
        return datetime.fromisoformat(str(prepared["as_of"])).astimezone(UTC)
    return datetime.combine(date.fromisoformat(cut) + timedelta(days=1), datetime.min.time(),
                            UTC)


def model_lists(config: Path, paths: layout.LakePaths, *, k: int, baseline: bool,
                served_family: str | None, device: str) -> tuple[dict[str, Lists], str | None]:
    """({"popularity": lists, "baseline": lists}, the baseline's family) for D's users."""
    import torch

    from ncf_model.config import load_ncf_config
    from ncf_model.data import lake_ids, load_positives
    from ncf_model.topk import popularity_top_k, recommend_top_k

    cfg = load_ncf_config(config)
    manifest = layout.read_manifest(paths)
    n_users, n_items = int(manifest["prepare"]["n_users"]), int(manifest["prepare"]["n_items"])
    user_ids, item_ids = lake_ids(paths)
    positives = load_positives(paths)
    seen_user = torch.cat([p.user for p in positives.values()])
    seen_item = torch.cat([p.item for p in positives.values()])

    def as_lists(items: Any) -> dict[str, list[str]]:
        return {user_ids[u]: [item_ids[int(i)] for i in row] for u, row in
                enumerate(items.tolist())}

    counts = torch.bincount(seen_item, minlength=n_items)
    top, _ = popularity_top_k(counts, users=torch.arange(n_users), seen_user=seen_user,
                              seen_item=seen_item, k=k)
    out: dict[str, Lists] = {"popularity": as_lists(top)}
    if not baseline:
        return out, None
    rival = best_rival(manifest.get("candidates") or {}, served_family)
    if rival is None:
        return out, None
    scorer = refit_rival(cfg, paths, rival, manifest["candidates"]["families"][rival],
                         torch.device(device))
    top, _ = recommend_top_k(scorer, n_users=n_users, n_items=n_items, seen_user=seen_user,
                             seen_item=seen_item, k=k, chunk_users=cfg.recommend.chunk_users,
                             device=torch.device(device))
    out["baseline"] = as_lists(top)
    return out, rival


def best_rival(candidates: Mapping[str, Any], served_family: str | None) -> str | None:
    """The family with the best validation select metric that is neither the served
    model's nor popularity; ties to the family listed first (as candidates chooses)."""
    key = f"val_{candidates.get('select_metric', 'ndcg_10')}"
    ranked = [(float(record["validation"][key]), -i, name) for i, (name, record) in
              enumerate((candidates.get("families") or {}).items())
              if not record.get("skipped") and key in (record.get("validation") or {})
              and name not in (served_family, "popularity")]
    return max(ranked)[2] if ranked else None


def refit_rival(cfg: Any, paths: layout.LakePaths, name: str, record: Mapping[str, Any],
                device: Any) -> Any:
    """The family `name` as candidates would serve it at D: refitted on every positive."""
    from ncf_model.data import lake_ids, load_als_scorer, load_sequences, load_side_features
    from ncf_model.families import SERVE_ON, from_recipe
    from ncf_model.stages.candidates import protocol_data

    prepared = layout.read_manifest(paths)["prepare"]
    if name == "als":  # fitted by Spark: the als task's factors on every positive
        return load_als_scorer(paths, int(prepared["n_users"]), int(prepared["n_items"]),
                               SERVE_ON)
    data = protocol_data(cfg, paths, device, prepared)
    recipe = record["recipe"]
    features = None
    if name == "ncf" and recipe.get("model", {}).get("kind") == "hybrid":
        features = load_side_features(paths, *lake_ids(paths))
    family = from_recipe(recipe, ease=cfg.ease, metric=f"ndcg_{cfg.evaluate.k}",
                         features=features, sequences=load_sequences(paths))
    if family is None:
        raise BacktestError(f"{paths.logical_date}: the recipe of {name} cannot be refitted")
    log.info("%s: refitting %s on every positive (the baseline)", paths.logical_date, name)
    return family.refit(data, SERVE_ON, record.get("settings") or {})


def family_of_run(lake_root: Path, dataset: str, run_id: str, upto: str) -> str | None:
    """The family of the model registered from MLflow run `run_id` (its candidates entry)."""
    for day in reversed(layout.lake_dates(lake_root, dataset)):
        candidates = layout.read_manifest(layout.LakePaths(lake_root, dataset, day)).get(
            "candidates") or {}
        if day <= upto and candidates.get("served_run_id") == run_id:
            return str(candidates["served_family"])
    return None


# --- the log (Spark) -----------------------------------------------------------------------


def read_window(spark: Any, data_cfg: Any, location: str, *, start: datetime,
                end: datetime) -> dict[str, set[str]]:
    """Each user's positives (binarised by prepare's rule) among the log's events in
    [start, end), read as ingest reads them. A daily log must hold every day of it."""
    from pyspark.sql import functions as F

    from jobs import event_files, events, filters

    log_cfg = data_cfg.source.events
    if log_cfg.daily:
        found = event_files.list_days(spark, location)
        first, last = start.date().isoformat(), (end - timedelta(microseconds=1)).date().isoformat()
        if not found or max(found) < last:
            raise BacktestError(f"{location} ends {max(found) if found else '(empty)'}; the "
                                f"window [{start:%Y-%m-%d}, {end:%Y-%m-%d}) needs days to {last}")
        files = [f for day in sorted(found) if first <= day <= last
                 for f in event_files.list_files(spark, found[day], day=day)]
    else:
        files = event_files.list_files(spark, location, day=None)
    classified, _ = events.read_events(spark, files, data_cfg.source,
                                       min_value=data_cfg.ingest.min_value,
                                       max_value=data_cfg.ingest.max_value, ts_before=end)
    window = events.kept(classified).where((F.col(layout.TS) >= F.lit(start))
                                           & (F.col(layout.TS) < F.lit(end)))
    rule = data_cfg.prepare.binarise
    positives = filters.binarise(window, rule=rule.rule, threshold=rule.threshold)
    future: dict[str, set[str]] = {}
    for user, item in positives.select(layout.USER_ID, layout.ITEM_ID).collect():
        future.setdefault(str(user), set()).add(str(item))
    return future


# --- one cut date, then all -----------------------------------------------------------------


@dataclasses.dataclass
class Options:
    config: Path
    lake_root: Path
    location: str
    k: int = 10
    horizon_days: int = 7
    baseline: bool = True
    device: str = "cpu"


def evaluate_cut(spark: Any, data_cfg: Any, cut: str, opts: Options) -> dict[str, Any]:
    """The row of one cut date: who served, the users, and each list's HR and recall."""
    dataset = data_cfg.dataset
    paths = layout.LakePaths(opts.lake_root, dataset, cut)
    manifest = layout.read_manifest(paths)
    if "prepare" not in manifest:
        raise BacktestError(f"{paths.base}: no prepare entry (the run did not get that far)")
    start = cut_time(manifest, cut)
    end = start + timedelta(days=opts.horizon_days)
    source = served_date(opts.lake_root, dataset, cut)
    served_paths = layout.LakePaths(opts.lake_root, dataset, source)
    recommended = layout.read_manifest(served_paths)["recommend"]
    served_family = family_of_run(opts.lake_root, dataset, str(recommended["run_id"]), source)
    future = read_window(spark, data_cfg, opts.location, start=start, end=end)
    seen = seen_before(paths, start)
    future = {u: new for u, items in future.items() if (new := items - seen.get(u, set()))}
    lists: dict[str, Lists] = {"served": read_lists(served_paths, opts.k)}
    others, rival = model_lists(opts.config, paths, k=opts.k, baseline=opts.baseline,
                                served_family=served_family, device=opts.device)
    lists |= others
    known = set(others["popularity"])
    users, quiet, unserved = evaluated_users(lists["served"], future, known)
    scores = {name: forward_score(got, future, users, k=opts.k) for name, got in lists.items()}
    return {"cut": cut, "as_of": start.isoformat(), "window_end": end.isoformat(),
            "served_from": source, "model_name": recommended["model_name"],
            "model_version": str(recommended["model_version"]),
            "run_id": str(recommended["run_id"]), "served_family": served_family,
            "baseline_family": rival, "users": len(users), "quiet": quiet,
            "unserved": unserved, "new_positives": sum(len(future[u]) for u in users),
            **{f"{name}_{metric}": getattr(score, metric) for name, score in scores.items()
               for metric in ("hr", "recall")}}


def metric_names(k: int, h: int) -> dict[str, str]:
    """Row key -> MLflow metric name."""
    names = {"served_hr": f"forward_hr_{k}_{h}d", "served_recall": f"forward_recall_{k}_{h}d",
             "users": f"forward_users_{h}d"}
    for name in ("popularity", "baseline"):
        for metric in ("hr", "recall"):
            names[f"{name}_{metric}"] = f"forward_{name}_{metric}_{k}_{h}d"
    return names


def log_to_mlflow(row: Mapping[str, Any], dataset: str, *, k: int, h: int) -> None:
    """The cut's numbers on the served version's run (step: the cut's day number) and tag."""
    from ncf_model import tracking

    step = (date.fromisoformat(row["cut"]) - date(1970, 1, 1)).days
    metrics = {name: float(row[key]) for key, name in metric_names(k, h).items()
               if row.get(key) is not None}
    with tracking.start_run(dataset, run_name="", run_id=row["run_id"]) as run:
        run.log_metrics(metrics, step=step)
    tracking.tag_version(row["model_name"], row["model_version"], {
        f"ncf.forward_{h}d.{row['cut']}": json.dumps(
            {key: row[key] for key in ("served_hr", "served_recall", "popularity_hr",
                                       "baseline_hr", "baseline_family", "users")
             if key in row}, sort_keys=True)})


def render(rows: Sequence[Mapping[str, Any]], *, k: int, h: int) -> str:
    def cell(row: Mapping[str, Any], key: str) -> str:
        return "-" if row.get(key) is None else f"{row[key]:.4f}"

    lines = [f"the top-{k} served on day D against each user's new positives in "
             f"[D, D+{h}d) (events after the run's as-of cut, less items seen before it)",
             "users: served a list on D, known to D's run, >= 1 new positive; quiet (no new "
             "positive) and unserved (no list) users are left out of the denominators",
             f"{'cut D':<10}  {'served from':<11}  {'model':<10}  {'users':>5}  {'quiet':>5}  "
             f"{'unserved':>8}  {'HR served':>9}  {'popular':>7}  {'baseline':>8}  "
             f"{'rec served':>10}  {'popular':>7}  {'baseline':>8}  baseline family"]
    for row in rows:
        model = f"v{row['model_version']} {row['served_family'] or ''}".strip()
        lines.append(
            f"{row['cut']:<10}  {row['served_from']:<11}  {model:<10}  {row['users']:>5}  "
            f"{row['quiet']:>5}  {row['unserved']:>8}  {cell(row, 'served_hr'):>9}  "
            f"{cell(row, 'popularity_hr'):>7}  {cell(row, 'baseline_hr'):>8}  "
            f"{cell(row, 'served_recall'):>10}  {cell(row, 'popularity_recall'):>7}  "
            f"{cell(row, 'baseline_recall'):>8}  {row.get('baseline_family') or '-'}")
    return "\n".join(lines)


def backtest(spark: Any, data_cfg: Any, cuts: Sequence[str], opts: Options, *,
             mlflow: bool = True) -> list[dict[str, Any]]:
    """Every cut date's row (cut dates that cannot be evaluated are logged and left out)."""
    rows = []
    for cut in cuts:
        try:
            rows.append(evaluate_cut(spark, data_cfg, cut, opts))
        except BacktestError as exc:
            log.warning("%s: left out: %s", cut, exc)
    if mlflow:
        for row in rows:
            log_to_mlflow(row, data_cfg.dataset, k=opts.k, h=opts.horizon_days)
    return rows


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    add = parser.add_argument
    add("--config", required=True, type=Path)
    add("--from", dest="first", type=logical_date, default=None)
    add("--to", dest="last", type=logical_date, default=None)
    add("--horizon-days", type=int, default=7)
    add("--k", type=int, default=10)
    add("--baseline", choices=("best", "none"), default="best")
    add("--device", default="cpu", help="torch device of the baseline refit")
    add("--lake-root", type=Path, default=None)
    add("--events-root", default=None)
    add("--no-mlflow", action="store_true")
    add("--json", type=Path, default=None, help="also write the rows here")
    args = parser.parse_args(argv)
    configure_logging()
    from jobs.lake.config import load_data_config
    from jobs.lake.eventlog import resolve_location
    from jobs.spark import get_spark

    data_cfg = load_data_config(args.config)
    if data_cfg.source.events is None:
        parser.error(f"{args.config} reads no event log: nothing after a run to score against")
    if os.environ.get("NCF_TORCH_THREADS"):
        import torch

        torch.set_num_threads(int(os.environ["NCF_TORCH_THREADS"]))
    root = args.lake_root.resolve() if args.lake_root else layout.lake_root_from_env()
    events_root = args.events_root or os.environ.get(ENV_EVENTS_ROOT) or DEFAULT_EVENTS_ROOT
    opts = Options(config=args.config, lake_root=root, k=args.k,
                   horizon_days=args.horizon_days, baseline=args.baseline == "best",
                   device=args.device,
                   location=resolve_location(data_cfg.source.events.location,
                                             events_root if "://" in events_root
                                             else str(Path(events_root).resolve())))
    cuts = [day for day in layout.lake_dates(root, data_cfg.dataset)
            if (args.first is None or day >= args.first)
            and (args.last is None or day <= args.last)]
    rows = backtest(get_spark("backtest"), data_cfg, cuts, opts, mlflow=not args.no_mlflow)
    if not rows:
        print(f"{data_cfg.dataset}: no cut date could be evaluated (see the log)")
        return 1
    table = render(rows, k=args.k, h=args.horizon_days)
    print(f"\n{data_cfg.dataset}: forward evaluation\n{table}")
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
