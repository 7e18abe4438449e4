"""Run a dataset's DAG for consecutive logical dates through the running scheduler (an
Airflow backfill) and follow every run to its end.

    python -m jobs.ops.backfill --config configs/ml-100k-events.yaml \
        --from 2026-11-19 --to 2026-11-23 [--reprocess none|failed|completed]
    (make backfill DATASET=ml-100k-events FROM=2026-11-19 TO=2026-11-23 [REPROCESS=...])

Logs in to the api-server `make up` started and unpauses the DAG if needed (the scheduler
starts no run of a paused DAG, backfill runs included). Asks Airflow which dates the
backfill would run (POST /api/v2/backfills/dry_run: a date that already has a finished
run is left out unless --reprocess says to run it again; one still running is always left
out), then creates it (POST /api/v2/backfills) with max_active_runs 1: the dates run one
after the other, oldest first, so each night's ingest adds to the night before's output and
each champion gate judges against the champion the night before left. It follows the runs in
date order, printing each task's state as it changes (jobs.ops.trigger.follow), and after
each date that date's line of jobs.ops.days (events in, new events, the winner's test
HR@10, the gate's decision, rows published); at the end the lines of every date asked for.

Exits 0 when every date's run succeeded, 1 when one failed (the backfill goes on with the
next dates: their ingest builds on the last date that ran; a date left out counts with the
state of its earlier run), 2 when it cannot start. The DAG
is paused again at the end when it was paused before; an interrupted follow leaves it
unpaused, so that the backfill still completes (Airflow UI: Browse > Backfills).

Unpaused, an @daily DAG also gets its latest scheduled interval (today) from the scheduler
(catchup is off; seen under Airflow 3.3); `unpaused` marks that run failed with a note
before it starts (jobs.ops.trigger `drop_scheduled_runs`), so only the dates asked for
run. Standard library only (urllib).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from datetime import date, timedelta
from pathlib import Path
from typing import Any

from jobs.lake import layout
from jobs.lake.cli import logical_date
from jobs.lake.loader import read_yaml
from jobs.ops import days
from jobs.ops.stack import settings_from_env
from jobs.ops.trigger import Api, TriggerError, follow, midnight, runs_by_date, unpaused

REPROCESS = ("none", "failed", "completed")


def _body(dag_id: str, first: str, last: str, reprocess: str) -> dict[str, Any]:
    return {"dag_id": dag_id, "from_date": midnight(first), "to_date": midnight(last),
            "run_backwards": False, "reprocess_behavior": reprocess, "max_active_runs": 1}


def planned_dates(api: Api, dag_id: str, first: str, last: str, reprocess: str) -> list[str]:
    """The logical dates the backfill would run (Airflow's dry run), oldest first."""
    found = api.call("POST", "/backfills/dry_run", _body(dag_id, first, last, reprocess))
    return sorted(str(info["logical_date"])[:10] for info in found.get("backfills", [])
                  if info.get("logical_date"))


def _dates(first: str, last: str) -> list[str]:
    start, end = date.fromisoformat(first), date.fromisoformat(last)
    return [(start + timedelta(days=n)).isoformat() for n in range((end - start).days + 1)]


def backfill(api: Api, dag_id: str, dataset: str, first: str, last: str, *, reprocess: str,
             lake_root: Path, out: Any = None) -> dict[str, str]:
    """Create the backfill and follow its runs; {date: final state} of the dates it ran,
    and of those it left out whose run had failed."""
    out = sys.stdout if out is None else out
    planned = planned_dates(api, dag_id, first, last, reprocess)
    existing = runs_by_date(api, dag_id, first, last)
    states: dict[str, str] = {}  # a date left out keeps its run's state when that finished
    for day in _dates(first, last):
        if day not in planned:
            state = str(existing.get(day, {}).get("state", "unknown"))
            hint = {"success": "--reprocess completed runs it again",
                    "failed": "--reprocess failed runs it again"}.get(state, "still in flight")
            print(f"{day}: left out: it has a run already ({state}); {hint}", file=out,
                  flush=True)
            if state == "failed":
                states[day] = state
    if not planned:
        return states
    created = api.call("POST", "/backfills", _body(dag_id, first, last, reprocess))
    print(f"backfill {created['id']} of {dag_id}: {', '.join(planned)} (one run at a time, "
          "oldest first)", file=out, flush=True)
    runs = runs_by_date(api, dag_id, first, last)
    for day in planned:
        run = runs.get(day)
        if run is None:
            raise TriggerError(f"backfill {created['id']}: no run of {dag_id} for {day}")
        print(f"\n== {day}  {run['dag_run_id']}", file=out, flush=True)
        states[day] = follow(api, dag_id, str(run["dag_run_id"]), out=out)
        day_line = days.summarize(
            layout.read_manifest(layout.LakePaths(lake_root, dataset, day)), day).line()
        print(f"{days.HEADER}\n{day_line}", file=out, flush=True)
    return states


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", required=True, type=Path,
                        help="dataset config; the DAG is ncf_<its dataset>")
    parser.add_argument("--from", dest="first", required=True, type=logical_date)
    parser.add_argument("--to", dest="last", required=True, type=logical_date)
    parser.add_argument("--reprocess", choices=REPROCESS, default="none",
                        help="dates that already have a run: none (leave them), failed "
                             "(run the failed again), completed (run every one again)")
    parser.add_argument("--lake-root", type=Path, default=None,
                        help=f"for the summary lines (default ${layout.ENV_LAKE_ROOT})")
    args = parser.parse_args(argv)
    if args.first > args.last:
        parser.error(f"--from {args.first} is after --to {args.last}")
    dataset = str(read_yaml(args.config)["dataset"])
    dag_id = f"ncf_{dataset}"
    lake_root = args.lake_root.resolve() if args.lake_root else layout.lake_root_from_env()
    s = settings_from_env()
    try:
        api = Api.login(s)
        with unpaused(api, dag_id, keep_on_interrupt=True) as paused:
            if paused:
                print(f"unpaused {dag_id} for the backfill (paused again at the end)",
                      flush=True)
            states = backfill(api, dag_id, dataset, args.first, args.last,
                              reprocess=args.reprocess, lake_root=lake_root)
    except TriggerError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"\ninterrupted: the backfill goes on in Airflow ({s.airflow_url}, Browse > "
              f"Backfills), and {dag_id} stays unpaused until it ends", file=sys.stderr)
        return 130
    summary = days.days(lake_root, dataset, _dates(args.first, args.last))
    print(f"\n{dataset}: {args.first} to {args.last}\n{days.render(summary)}")
    failed = sorted(day for day, state in states.items() if state != "success")
    for day in failed:
        print(f"{day}: run {states[day]} (see the Airflow UI, {s.airflow_url}/dags/{dag_id})")
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
