"""
### Example downstream DAG: react when new recommendations are published

Scheduled on the `ncf://recommendations/<dataset>` assets that each `ncf_<dataset>`
DAG's **publish** task emits, so it runs right after a publish, never on a half-written
table and never on a schedule guess. A downstream team copies this file and replaces the
task body with its own (an export, a cache warm-up, a report).

The task reads the asset events (which dataset, which model version, how many rows) and
queries the table through the same connection as publish (`ncf_recommendations`, else
`$NCF_DB_URL`); with no event (a manual run) it summarises every dataset in the table.
"""

from __future__ import annotations

import os
from datetime import datetime
from pathlib import Path
from typing import Any

from airflow.sdk import DAG, AssetAny, task
from ncf_common import recommendations_asset, recommendations_db_url

from jobs.lake.loader import read_yaml

REPO = Path(__file__).resolve().parents[1]
CONFIG_DIR = Path(os.environ.get("NCF_CONFIG_DIR", REPO / "configs"))
CONFIGS = {read_yaml(path)["dataset"]: path for path in sorted(CONFIG_DIR.glob("*.yaml"))}

if CONFIGS:
    with DAG(
        dag_id="ncf_downstream_example",
        description="Example consumer of the recommendations table (asset-scheduled)",
        doc_md=__doc__,
        # Any dataset's publish triggers a run.
        schedule=AssetAny(*(recommendations_asset(dataset) for dataset in CONFIGS)),
        start_date=datetime(2026, 1, 1),
        catchup=False,
        max_active_runs=1,
        default_args={"owner": "downstream-team", "retries": 2},
        tags=["ncf", "example"],
    ):

        @task
        def summarise_new_recommendations(triggering_asset_events: Any = None
                                          ) -> list[dict[str, Any]]:
            """One summary per published dataset: rows, users, the most recommended items."""
            from jobs.serving.report import table_summary

            events = [event for events in (triggering_asset_events or {}).values()
                      for event in events]
            datasets = sorted({str(event.extra["dataset"]) for event in events
                               if "dataset" in event.extra} or CONFIGS)
            return [table_summary(str(CONFIGS[dataset]), recommendations_db_url())
                    for dataset in datasets if dataset in CONFIGS]

        summarise_new_recommendations()
