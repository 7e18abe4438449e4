"""Human-facing summary of a pipeline run, and a per-user lookup in the table.

    python -m jobs.serving.report --config configs/ml-100k.yaml --logical-date 2026-11-23
    python -m jobs.serving.report --config configs/ml-100k.yaml --user 196

Reads the run's `_manifest.json` and the recommendation table (NCF_DB_URL). This is a
CLI whose output is the point, so it writes to stdout.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import sqlalchemy as sa

from jobs.lake import layout
from jobs.lake.config import load_data_config
from jobs.serving import publish, table
from jobs.serving.engine import masked_url


def summarise_run(config: str, logical_date: str, lake_root: str | None,
                  db_url: str | None) -> str:
    cfg = load_data_config(config)
    root = layout.lake_root_from_env() if lake_root is None else Path(lake_root)
    paths = layout.LakePaths(root, cfg.dataset, logical_date)
    manifest = layout.read_manifest(paths)
    evaluate = manifest.get("evaluate", {})
    prepare = manifest.get("prepare", {})
    engine = publish.open_engine(publish.db_url(db_url))
    recs = publish.tables_of(cfg).recommendations
    this_dataset = recs.c[table.DATASET] == cfg.dataset
    try:
        with engine.connect() as conn:
            rows = conn.execute(sa.select(sa.func.count()).where(this_dataset)).scalar_one()
            users = conn.execute(sa.select(sa.func.count(sa.distinct(recs.c[layout.USER_ID])))
                                 .where(this_dataset)).scalar_one()
    finally:
        engine.dispose()
    metrics = evaluate.get("metrics", {})
    candidates = manifest.get("candidates", {})
    lines = [
        "",
        f"ncf-pipeline: {cfg.dataset} for {logical_date}",
        f"  users x items        {prepare.get('n_users', '?')} x {prepare.get('n_items', '?')}",
        f"  served family        {evaluate.get('family', '?')}: the best validation "
        f"{candidates.get('select_metric', '?')} of the candidates below",
        f"  test HR@10           {metrics.get('test_hr_10', float('nan')):.4f}",
        f"  test NDCG@10         {metrics.get('test_ndcg_10', float('nan')):.4f}",
        f"  test AUC             {metrics.get('test_auc', float('nan')):.4f}",
        f"  model                {evaluate.get('model_name', '?')} "
        f"version {evaluate.get('model_version', '?')} (MLflow run {evaluate.get('run_id', '?')})",
        f"  champion gate        {evaluate.get('reason', '?')}",
        *candidate_lines(candidates),
        f"  table                {cfg.publish.table} at {masked_url(engine.url)}",
        f"  rows for {cfg.dataset:<11} {rows} ({users} users)",
        f"  lake                 {paths.base}",
        "  MLflow UI            make ui   (then open http://127.0.0.1:5000)",
        f"  one user's list      make query DATASET={cfg.dataset} USER=<user id>",
        f"  roll back            make rollback DATASET={cfg.dataset} [TO_DATE=YYYY-MM-DD]",
        "",
    ]
    return "\n".join(lines)


def candidate_lines(candidates: dict[str, Any]) -> list[str]:
    """Each candidate's validation (chooses) and test (reported) scores, the served one
    marked; test is after the refit on train + validation."""
    if not candidates.get("families"):
        return []
    metric = candidates.get("select_metric", "ndcg_10")
    lines = [f"  candidates           {'val ' + metric:>14} {'test hr_10':>11} "
             f"{'test ndcg_10':>13} {'test full_ndcg_10':>18}"]
    families = candidates["families"]
    for name in sorted(families, key=lambda n: -families[n].get("validation", {}).get(
            f"val_{metric}", -1.0)):
        record = families[name]
        mark = "*" if name == candidates.get("served_family") else " "
        if record.get("skipped"):
            lines.append(f"   {mark} {name:<18} skipped: {record['skipped']}")
            continue
        val, test = record.get("validation", {}), record.get("test", {})

        def show(value: Any, width: int) -> str:
            return f"{value:>{width}.4f}" if isinstance(value, int | float) else f"{'—':>{width}}"

        lines.append(f"   {mark} {name:<18} {show(val.get(f'val_{metric}'), 14)} "
                     f"{show(test.get('test_hr_10'), 11)} {show(test.get('test_ndcg_10'), 13)} "
                     f"{show(test.get('test_full_ndcg_10'), 18)}")
    unseen = candidates.get("test_unseen_item_share")
    if isinstance(unseen, int | float) and unseen > 0:
        lines.append(f"     test items the fit never saw: {unseen:.1%} (no id-only family's "
                     f"test HR@10 can pass {1 - unseen:.3f})")
    return lines


def _titles(lake_path: str | None, item_ids: list[str]) -> dict[str, str]:
    """Item titles from the served run's item_features/, when the dataset has them."""
    if not lake_path:
        return {}
    folder = Path(lake_path) / layout.ITEM_FEATURES
    try:
        features = layout.read_lake_table(folder, ((layout.ITEM_ID, "string"),
                                                   (layout.TITLE, "string")))
    except layout.LakeReadError:
        return {}  # a dataset without titles (e.g. last.fm 360K): ids only
    frame = features.select([layout.ITEM_ID, layout.TITLE]).to_pandas()
    frame = frame[frame[layout.ITEM_ID].isin(item_ids) & frame[layout.TITLE].notna()]
    return dict(zip(frame[layout.ITEM_ID], frame[layout.TITLE], strict=True))


def user_recommendations(config: str, user_id: str, db_url: str | None) -> str:
    """One user's list, best first, with item titles when the lake has them."""
    cfg = load_data_config(config)
    engine = publish.open_engine(publish.db_url(db_url))
    tables = publish.tables_of(cfg)
    recs, runs = tables.recommendations, tables.runs
    query = (sa.select(recs.c[layout.RANK], recs.c[layout.ITEM_ID], recs.c[layout.SCORE],
                       recs.c[layout.SOURCE], recs.c[table.MODEL_VERSION],
                       recs.c[table.GENERATED_AT])
             .where(recs.c[table.DATASET] == cfg.dataset, recs.c[layout.USER_ID] == user_id)
             .order_by(recs.c[layout.RANK]))
    try:
        with engine.connect() as conn:
            rows = conn.execute(query).all()
            has_runs = sa.inspect(conn).has_table(runs.name)
            lake_path = conn.execute(sa.select(runs.c.lake_path).where(
                runs.c[table.DATASET] == cfg.dataset, runs.c.status == table.SERVING)
            ).scalar_one_or_none() if has_runs else None
    finally:
        engine.dispose()
    if not rows:
        return f"no recommendations for user {user_id!r} in {cfg.dataset}"
    titles = _titles(lake_path, [row[1] for row in rows])
    out = [f"{cfg.dataset} user {user_id}: model version {rows[0][4]}, generated {rows[0][5]}"]
    out += [f"  {rank:>2}. item {item_id:<8} score {score:.4f}  {titles.get(item_id, '')}"
            f"{'  (popular: new user)' if source == layout.SOURCE_POPULARITY else ''}".rstrip()
            for rank, item_id, score, source, _v, _g in rows]
    return "\n".join(out)


def table_summary(config: str, db_url: str | None) -> dict[str, Any]:
    """What a downstream consumer checks after a publish: counts and the top items."""
    cfg = load_data_config(config)
    engine = publish.open_engine(publish.db_url(db_url))
    recs = publish.tables_of(cfg).recommendations
    mine = recs.c[table.DATASET] == cfg.dataset
    try:
        with engine.connect() as conn:
            rows, users, versions = conn.execute(sa.select(
                sa.func.count(), sa.func.count(sa.distinct(recs.c[layout.USER_ID])),
                sa.func.max(recs.c[table.MODEL_VERSION])).where(mine)).one()
            top = conn.execute(sa.select(recs.c[layout.ITEM_ID], sa.func.count().label("n"))
                               .where(mine, recs.c[layout.RANK] == 1)
                               .group_by(recs.c[layout.ITEM_ID])
                               .order_by(sa.desc("n"), recs.c[layout.ITEM_ID]).limit(5)).all()
    finally:
        engine.dispose()
    return {"dataset": cfg.dataset, "rows": int(rows), "users": int(users),
            "model_version": versions, "top_items_at_rank_1": [[i, int(n)] for i, n in top]}


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", required=True)
    parser.add_argument("--logical-date")
    parser.add_argument("--user", help="print this user's recommendations instead")
    parser.add_argument("--lake-root")
    parser.add_argument("--db-url")
    args = parser.parse_args(argv)
    if args.user:
        text = user_recommendations(args.config, args.user, args.db_url)
    elif args.logical_date:
        text = summarise_run(args.config, args.logical_date, args.lake_root, args.db_url)
    else:
        parser.error("give --logical-date (run summary) or --user (one user's list)")
    sys.stdout.write(text + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
