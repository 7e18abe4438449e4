"""Human-facing summary of a pipeline run, and a per-user lookup in the table.

    python -m jobs.report --config configs/ml-100k.yaml --logical-date 2026-11-23
    python -m jobs.report --config configs/ml-100k.yaml --user 196

Reads the run's `_manifest.json` and the recommendation table (NCF_DB_URL). This is a
CLI whose output is the point, so it writes to stdout.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

import sqlalchemy as sa

from jobs import layout, publish
from jobs.config import load_data_config


def summarise_run(config: str, logical_date: str, lake_root: str | None,
                  db_url: str | None) -> str:
    cfg = load_data_config(config)
    root = layout.lake_root_from_env() if lake_root is None else Path(lake_root)
    paths = layout.LakePaths(root, cfg.dataset, logical_date)
    manifest = layout.read_manifest(paths)
    evaluate = manifest.get("evaluate", {})
    prepare = manifest.get("prepare", {})
    engine = publish.create_db_engine(publish.db_url(db_url))
    table = publish.recommendations_table(sa.MetaData(), cfg.publish.table)
    this_dataset = table.c[publish.DATASET] == cfg.dataset
    try:
        with engine.connect() as conn:
            rows = conn.execute(sa.select(sa.func.count()).where(this_dataset)).scalar_one()
            users = conn.execute(sa.select(sa.func.count(sa.distinct(table.c[layout.USER_ID])))
                                 .where(this_dataset)).scalar_one()
    finally:
        engine.dispose()
    metrics = evaluate.get("metrics", {})
    lines = [
        "",
        f"ncf-pipeline: {cfg.dataset} for {logical_date}",
        f"  users x items        {prepare.get('n_users', '?')} x {prepare.get('n_items', '?')}",
        f"  test HR@10           {metrics.get('test_hr_10', float('nan')):.4f}",
        f"  test NDCG@10         {metrics.get('test_ndcg_10', float('nan')):.4f}",
        f"  test AUC             {metrics.get('test_auc', float('nan')):.4f}",
        f"  model                {evaluate.get('model_name', '?')} "
        f"version {evaluate.get('model_version', '?')} (MLflow run {evaluate.get('run_id', '?')})",
        f"  table                {cfg.publish.table} at {publish.masked_url(engine.url)}",
        f"  rows for {cfg.dataset:<11} {rows} ({users} users)",
        f"  lake                 {paths.base}",
        "  MLflow UI            make ui   (then open http://127.0.0.1:5000)",
        f"  one user's list      make query DATASET={cfg.dataset} USER_ID=<user id>",
        "",
    ]
    return "\n".join(lines)


def user_recommendations(config: str, user_id: str, db_url: str | None) -> str:
    cfg = load_data_config(config)
    engine = publish.create_db_engine(publish.db_url(db_url))
    table = publish.recommendations_table(sa.MetaData(), cfg.publish.table)
    query = (sa.select(table.c[layout.RANK], table.c[layout.ITEM_ID], table.c[layout.SCORE],
                       table.c[publish.MODEL_VERSION], table.c[publish.GENERATED_AT])
             .where(table.c[publish.DATASET] == cfg.dataset, table.c[layout.USER_ID] == user_id)
             .order_by(table.c[layout.RANK]))
    try:
        with engine.connect() as conn:
            rows = conn.execute(query).all()
    finally:
        engine.dispose()
    if not rows:
        return f"no recommendations for user {user_id!r} in {cfg.dataset}"
    out = [f"{cfg.dataset} user {user_id}: model version {rows[0][3]}, generated {rows[0][4]}"]
    out += [f"  {rank:>2}. item {item_id:<8} score {score:.4f}"
            for rank, item_id, score, _v, _g in rows]
    return "\n".join(out)


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
