"""Run one logical date of a dataset's DAG through Airflow's REST API and follow it.

    python -m jobs.ops.trigger --dataset ml-100k [--date 2026-11-23] [--rerun]
                                                     (make trigger [DATE=] [RERUN=1])

Logs in to the api-server `make up` started (the simple auth manager's admin), unpauses
the DAG if needed (the scheduler runs nothing of a paused DAG; it is paused again at the
end when it was paused before), creates a run for the date (or, with --rerun, clears the
date's existing run: Airflow keeps one per date, and `make run` makes one too), prints
each task's state as it changes and exits 0 on success, 1 when the run fails (naming the
failed tasks), 2 when it cannot start it. Standard library only (urllib).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator, Mapping, Sequence
from datetime import UTC, date, datetime
from typing import Any

from jobs.lake.protocol import mlflow_comparison_url
from jobs.ops.stack import Settings, admin_password, settings_from_env

FINISHED = ("success", "failed")
POLL_S = 5.0
UNPAUSE_SETTLE_S = 10.0  # how long an unpause is watched for the scheduled run it queues
PAUSE_SETTLE_S = 2.0  # and the pause after it, for a run queued just before it
UNASKED_NOTE = ("Not run: queued by the scheduler when make trigger / make backfill unpaused "
                "the DAG for another date (make up SCHEDULE=on runs the DAGs nightly).")


class TriggerError(RuntimeError):
    """The API refused or could not be reached; the message says which call and why."""


class Api:
    """A thin client of Airflow's REST API v2 with a bearer token."""

    def __init__(self, base_url: str, token: str) -> None:
        self.base_url, self.token = base_url.rstrip("/"), token

    @classmethod
    def login(cls, s: Settings) -> Api:
        password = admin_password(s)
        if password is None:
            raise TriggerError(f"no admin password in {s.airflow_home}: start the stack with "
                               "`make up` first")
        body = _request("POST", f"{s.airflow_url}/auth/token",
                        {"username": "admin", "password": password})
        return cls(s.airflow_url, str(body["access_token"]))

    def call(self, method: str, path: str, payload: Mapping[str, Any] | None = None) -> Any:
        return _request(method, f"{self.base_url}/api/v2{path}", payload, token=self.token)


def _request(method: str, url: str, payload: Mapping[str, Any] | None = None, *,
             token: str | None = None) -> Any:
    data = json.dumps(payload).encode() if payload is not None else None
    request = urllib.request.Request(url, data=data, method=method)  # noqa: S310 (loopback)
    request.add_header("Content-Type", "application/json")
    if token:
        request.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(request, timeout=30) as response:  # noqa: S310
            return json.loads(response.read() or b"{}")
    except urllib.error.HTTPError as exc:
        raise TriggerError(f"{method} {url}: HTTP {exc.code}: "
                           f"{exc.read().decode(errors='replace')[:300]}") from exc
    except (urllib.error.URLError, OSError) as exc:
        raise TriggerError(f"{method} {url}: {exc}; is the stack up (`make status`)?") from exc


def midnight(day: str) -> str:
    """A logical date as Airflow's API writes it: midnight UTC, ISO 8601."""
    return datetime.combine(date.fromisoformat(day), datetime.min.time(), UTC).isoformat()


def runs_by_date(api: Api, dag_id: str, first: str, last: str) -> dict[str, dict[str, Any]]:
    """{date: the DAG's run of that logical date} for the dates from first to last
    (Airflow holds at most one run per logical date)."""
    query = urllib.parse.urlencode({"logical_date_gte": midnight(first),
                                    "logical_date_lte": midnight(last), "limit": 1000,
                                    "order_by": "logical_date"})
    found = api.call("GET", f"/dags/{dag_id}/dagRuns?{query}")
    return {str(run["logical_date"])[:10]: run for run in found.get("dag_runs", [])
            if run.get("logical_date")}


def trigger(api: Api, dag_id: str, logical_date: str, *, rerun: bool = False) -> str:
    """Create the run of `logical_date` (midnight UTC); returns its run id. Airflow keeps
    one run per logical date (`make run` makes one too): with `rerun`, that run is cleared
    and runs again; without, it is an error that says so."""
    found = runs_by_date(api, dag_id, logical_date, logical_date).get(logical_date)
    if found is not None:
        run_id = str(found["dag_run_id"])
        if not rerun:
            raise TriggerError(
                f"{dag_id} already has a run for {logical_date} ({run_id}, {found['state']}; "
                f"`make run` makes one too): add RERUN=1 (--rerun) to run it again")
        api.call("POST", f"/dags/{dag_id}/dagRuns/{urllib.parse.quote(run_id)}/clear",
                 {"dry_run": False})
        return run_id
    moment = midnight(logical_date)
    run_id = f"manual__{moment}__make_trigger_{int(time.time())}"
    body = api.call("POST", f"/dags/{dag_id}/dagRuns",
                    {"dag_run_id": run_id, "logical_date": moment})
    return str(body["dag_run_id"])


def follow(api: Api, dag_id: str, run_id: str, *, out: Any = None,
           timeout: float = 6 * 3600.0) -> str:
    """Print each task's state as it changes until the run ends; returns its state."""
    out = sys.stdout if out is None else out
    states: dict[str, str] = {}
    deadline = time.monotonic() + timeout
    started = time.monotonic()
    while time.monotonic() < deadline:
        tasks = api.call("GET", f"/dags/{dag_id}/dagRuns/{run_id}/taskInstances")
        for task in tasks.get("task_instances", []):
            state = str(task.get("state"))
            if states.get(task["task_id"]) != state:
                states[task["task_id"]] = state
                print(f"{time.monotonic() - started:7.0f} s  {task['task_id']:<26} {state}",
                      file=out, flush=True)
        run = api.call("GET", f"/dags/{dag_id}/dagRuns/{run_id}")
        if run.get("state") in FINISHED:
            print(f"{time.monotonic() - started:7.0f} s  run {run_id}: {run['state']}",
                  file=out, flush=True)
            return str(run["state"])
        time.sleep(POLL_S)
    raise TriggerError(f"{dag_id} {run_id} did not finish within {timeout:.0f} s")


def drop_scheduled_runs(api: Api, dag_id: str, since: datetime | None, *,
                        wait_s: float = 0.0, out: Any = None) -> list[str]:
    """Stop the scheduled runs of `dag_id` not yet finished (those queued at or after
    `since`; None: every one): each is marked failed with a note saying why, so that it
    never runs; returns their ids.

    Unpausing an @daily DAG makes the scheduler queue its latest interval (today's) at
    once, and with max_active_runs 1 that run goes before the one asked for (measured:
    the asked run waited behind it). Deleting it does not last: the scheduler queues the
    same interval again once the DAG is parsed anew, and a queued run of a paused DAG
    starts at the next unpause. A failed run stays, with its note, and is not queued again.
    With `wait_s`, watch that long for the run to appear (it comes within a scheduler loop
    or two of the unpause)."""
    out = sys.stdout if out is None else out
    dropped: list[str] = []
    deadline = time.monotonic() + wait_s
    query = urllib.parse.urlencode([("run_type", "scheduled"), ("state", "queued"),
                                    ("state", "running")])
    while True:
        runs = api.call("GET", f"/dags/{dag_id}/dagRuns?{query}").get("dag_runs", [])
        for run in runs:
            run_id, queued_at = str(run["dag_run_id"]), run.get("queued_at")
            if run_id in dropped or run.get("run_type") != "scheduled" or \
                    run.get("state") in FINISHED or (since is not None and (
                    not queued_at or
                    datetime.fromisoformat(queued_at.replace("Z", "+00:00")) < since)):
                continue
            path = f"/dags/{dag_id}/dagRuns/{urllib.parse.quote(run_id)}"
            api.call("PATCH", path, {"state": "failed", "note": UNASKED_NOTE})
            dropped.append(run_id)
            print(f"stopped {run_id}: queued by the unpause, not asked for "
                  f"(`make up SCHEDULE=on` runs the DAGs nightly)", file=out, flush=True)
        if time.monotonic() >= deadline:
            return dropped
        time.sleep(min(POLL_S, 0.5))


@contextlib.contextmanager
def unpaused(api: Api, dag_id: str, *, keep_on_interrupt: bool = False) -> Iterator[bool]:
    """`dag_id` unpaused for the block (yields whether it was paused), paused again after
    it. Only the runs the block asks for run: on entry, every scheduled run of the paused
    DAG still queued or running (the one the unpause queues for today's interval, and any
    left from an earlier unpause: a paused DAG's scheduled work stays stopped) is stopped,
    and on exit those queued meanwhile (the scheduler may queue the next interval in the
    seconds between the block's last run ending and the pause). With `keep_on_interrupt`, Ctrl-C
    leaves it unpaused: the runs the block started go on in Airflow and need the
    scheduler."""
    paused = bool(api.call("GET", f"/dags/{dag_id}")["is_paused"])
    since = datetime.now(UTC)

    def pause() -> None:
        api.call("PATCH", f"/dags/{dag_id}", {"is_paused": True})
        drop_scheduled_runs(api, dag_id, since, wait_s=PAUSE_SETTLE_S)

    if paused:
        api.call("PATCH", f"/dags/{dag_id}", {"is_paused": False})
        drop_scheduled_runs(api, dag_id, None, wait_s=UNPAUSE_SETTLE_S)
    try:
        yield paused
    except KeyboardInterrupt:
        if paused and not keep_on_interrupt:
            pause()
        raise
    except BaseException:
        if paused:
            pause()
        raise
    if paused:
        pause()


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", required=True)
    parser.add_argument("--date", default=datetime.now(UTC).date().isoformat(),
                        help="logical date YYYY-MM-DD (default today, UTC)")
    parser.add_argument("--rerun", action="store_true",
                        help="the date already has a run: clear it and run it again")
    args = parser.parse_args(argv)
    dag_id = f"ncf_{args.dataset}"
    s = settings_from_env()
    try:
        api = Api.login(s)
        with unpaused(api, dag_id):
            run_id = trigger(api, dag_id, args.date, rerun=args.rerun)
            print(f"triggered {dag_id} {run_id}; Airflow UI {s.airflow_url}/dags/{dag_id}",
                  flush=True)
            state = follow(api, dag_id, run_id)
    except TriggerError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(f"Airflow run    {s.airflow_url}/dags/{dag_id}/runs/{urllib.parse.quote(run_id)}")
    link = comparison_link(s, args.dataset)
    if link:
        print(f"MLflow models  {link}")
    return 0 if state == "success" else 1


def comparison_link(s: Settings, dataset: str) -> str | None:
    """The MLflow UI's saved comparison of `ncf-<dataset>`'s models (None: not reachable)."""
    query = urllib.parse.urlencode({"experiment_name": f"ncf-{dataset}"})
    try:
        body = _request("GET", f"{s.mlflow_url}/api/2.0/mlflow/experiments/get-by-name?{query}")
    except TriggerError:
        return None
    return mlflow_comparison_url(s.mlflow_url, str(body["experiment"]["experiment_id"]))


if __name__ == "__main__":
    raise SystemExit(main())
