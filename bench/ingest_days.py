"""Incremental ingest: what a night costs with 1 day of new data, with N days, and rebuilt.

For a daily event log (configs/<dataset>-events.yaml, written by `make replay`) and a date
D, each case gets its own lake under --work:
  full      nothing earlier in the lake: every day up to D is read (the first night)
  <g> days  the lake holds the output of D-g (ingested first, not timed); D builds on it
            and reads the g days after it (a nightly schedule is g = 1; a missed month 30)
Each timed ingest is `python -m jobs.ingest` in a fresh process (its own Spark JVM, as an
Airflow task runs it), --repeat times; the table gives the median wall seconds, the days
and files read and the rows they held, and checks that every case wrote the same
interactions/ bytes.

    python bench/ingest_days.py --config configs/ml-100k-events.yaml --date 2026-11-30 \
        --gaps 1 30 [--repeat 3] [--events-root data/events] [--work /tmp/ingest-days]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import time
from datetime import date, timedelta
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from jobs.lake import layout  # noqa: E402
from jobs.lake.config import load_data_config  # noqa: E402
from jobs.lake.eventlog import ENV_EVENTS_ROOT  # noqa: E402


def _ingest(config: Path, lake: Path, day: str, env: dict[str, str]) -> float:
    start = time.perf_counter()
    done = subprocess.run([sys.executable, "-m", "jobs.ingest", "--config", str(config),
                           "--logical-date", day, "--lake-root", str(lake)],
                          cwd=REPO, env=env, capture_output=True, text=True, check=False)
    wall = time.perf_counter() - start
    if done.returncode != 0:
        raise SystemExit(f"ingest {day} into {lake} failed:\n{done.stderr[-2000:]}")
    return wall


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", type=Path, required=True)
    parser.add_argument("--date", required=True, help="the night D measured")
    parser.add_argument("--gaps", type=int, nargs="+", default=[1, 30])
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--events-root", type=Path, default=None)
    parser.add_argument("--work", type=Path, default=Path("/tmp/ingest-days"))
    args = parser.parse_args(argv)
    dataset = load_data_config(args.config).dataset
    env = dict(os.environ)
    if args.events_root is not None:
        env[ENV_EVENTS_ROOT] = str(args.events_root.resolve())

    cases: list[tuple[str, int | None]] = [("full", None)] + [
        (f"{g} day" if g == 1 else f"{g} days", g) for g in args.gaps]
    rows = []
    for name, gap in cases:
        lake = args.work / name.replace(" ", "-")
        shutil.rmtree(lake, ignore_errors=True)
        if gap is not None:
            _ingest(args.config, lake, (date.fromisoformat(args.date)
                                        - timedelta(days=gap)).isoformat(), env)
        paths = layout.LakePaths(lake, dataset, args.date)
        walls = []
        for _ in range(args.repeat):
            walls.append(_ingest(args.config, lake, args.date, env))
        entry = layout.read_manifest(paths)["ingest"]
        rows.append({"case": name, "wall_s": statistics.median(walls), "walls": walls,
                     "incremental": entry["incremental"], "previous": entry["previous"],
                     "days_read": len(entry["partitions_read"]), "files": len(entry["files"]),
                     "input_rows": entry["input_rows"], "rows": entry["rows"],
                     "sha": layout.sha256_dir(paths.path(layout.INTERACTIONS))})
        print(json.dumps({k: v for k, v in rows[-1].items() if k != "sha"}), flush=True)

    same = len({r["sha"] for r in rows}) == 1
    print(f"\n{dataset}, night {args.date}, median of {args.repeat} fresh-process ingests "
          f"({os.cpu_count()} cores)")
    print("| case | built on | days read | files | rows read | interactions | wall s |")
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['case']} | {r['previous'] or '-'} | {r['days_read']} | {r['files']} | "
              f"{r['input_rows']:,} | {r['rows']:,} | {r['wall_s']:.1f} |")
    print(f"\nsame interactions/ bytes in every case: {same}")
    return 0 if same else 1


if __name__ == "__main__":
    raise SystemExit(main())
