"""Publish benchmark: load + swap time for 943 x 10 and 138,493 x 10 rows, and how long a
reader polling the table was ever kept waiting while a swap ran. Prints, asserts nothing.

    python bench/publish.py [--pg-url postgresql+psycopg://postgres@127.0.0.1:55432/postgres]
                            [--users 943 138493] [--k 10]

SQLite always (a file in a temp folder); PostgreSQL when --pg-url or $NCF_TEST_PG_URL is
set. Each size is published twice (the second publish swaps over a full set, the nightly
case) while a reader thread counts the dataset's rows in a loop on its own connection.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import threading
import time
import uuid
from datetime import datetime
from pathlib import Path

import numpy as np
import pandas as pd
import sqlalchemy as sa

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from jobs.lake import layout  # noqa: E402
from jobs.serving.engine import create_db_engine  # noqa: E402
from jobs.serving.table import (  # noqa: E402
    DATASET,
    TABLE_COLUMNS,
    RunInfo,
    Tables,
    ensure_tables,
    load_run,
    swap_in,
)


def make_rows(n_users: int, k: int, version: str) -> pd.DataFrame:
    rng = np.random.default_rng(int(version))
    n = n_users * k
    return pd.DataFrame({
        DATASET: "bench",
        layout.USER_ID: np.repeat([f"u{u}" for u in range(n_users)], k),
        layout.RANK: np.tile(np.arange(1, k + 1), n_users),
        layout.ITEM_ID: rng.integers(0, 26_744, n).astype(str),
        layout.SCORE: rng.random(n),
        layout.SOURCE: layout.SOURCE_MODEL,
        "model_name": "ncf-bench", "model_version": version, "run_id": f"run-{version}",
        "generated_at": datetime(2026, 11, 23, 3),
    })[list(TABLE_COLUMNS)]


def bench(url: str, n_users: int, k: int) -> dict[str, float]:
    engine = create_db_engine(url)
    prefix = f"b{uuid.uuid4().hex[:6]}"
    tables = Tables.declare(f"{prefix}_recs", f"{prefix}_runs", f"{prefix}_history")
    ensure_tables(engine, tables)
    waits: list[float] = []
    done = threading.Event()

    def read_in_a_loop() -> None:
        reader = create_db_engine(url)
        query = sa.text(f"SELECT count(*) FROM {tables.recommendations.name} "
                        "WHERE dataset = 'bench'")
        with reader.connect() as conn:
            while not done.is_set():
                started = time.perf_counter()
                conn.execute(query).scalar_one()
                conn.commit()
                waits.append(time.perf_counter() - started)
        reader.dispose()

    figures: dict[str, float] = {}
    try:
        for attempt, date in enumerate(("2026-11-22", "2026-11-23")):
            rows = make_rows(n_users, k, str(attempt + 1))
            info = RunInfo("bench", date, f"run-{attempt}", "ncf-bench", str(attempt + 1))
            thread = threading.Thread(target=read_in_a_loop)
            if attempt == 1:
                waits.clear()
                thread.start()
            started = time.perf_counter()
            load_run(engine, tables, info, rows)
            loaded = time.perf_counter()
            swap_in(engine, tables, "bench", date)
            swapped = time.perf_counter()
            if attempt == 1:
                done.set()
                thread.join()
                figures = {"load_s": loaded - started, "swap_s": swapped - loaded,
                           "total_s": swapped - started, "reads": len(waits),
                           "max_read_wait_s": max(waits, default=float("nan")),
                           "median_read_s": float(np.median(waits)) if waits else float("nan")}
    finally:
        with engine.begin() as conn:
            for table in tables.all():
                conn.execute(sa.text(f"DROP TABLE IF EXISTS {table.name}"))
        engine.dispose()
    return figures


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pg-url", default=os.environ.get("NCF_TEST_PG_URL"))
    parser.add_argument("--users", type=int, nargs="+", default=[943, 138_493])
    parser.add_argument("--k", type=int, default=10)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as folder:
        urls = {"sqlite": f"sqlite:///{Path(folder) / 'bench.db'}"}
        if args.pg_url:
            urls["postgresql"] = args.pg_url
        print(f"{'database':<11} {'rows':>10} {'load s':>8} {'swap s':>8} {'total s':>8} "
              f"{'reads':>7} {'max read wait s':>16} {'median read s':>14}")
        for name, url in urls.items():
            for n_users in args.users:
                f = bench(url, n_users, args.k)
                print(f"{name:<11} {n_users * args.k:>10,} {f['load_s']:>8.2f} "
                      f"{f['swap_s']:>8.2f} {f['total_s']:>8.2f} {f['reads']:>7.0f} "
                      f"{f['max_read_wait_s']:>16.3f} {f['median_read_s']:>14.4f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
