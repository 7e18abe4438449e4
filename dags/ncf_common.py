"""What the NCF DAG files share: the table's Airflow asset and the table's database URL.

Not a DAG file (Airflow finds no DAG here); the DAG files import it from the DAGs folder.
"""

from __future__ import annotations

import os

from airflow.sdk import Asset, Connection
from airflow.sdk.exceptions import AirflowNotFoundException

# The Airflow connection that holds the recommendation database (any SQLAlchemy-supported
# type; `postgres` at scale). Without it, $NCF_DB_URL, else the local SQLite file.
DB_CONN_ID = os.environ.get("NCF_DB_CONN_ID", "ncf_recommendations")


def recommendations_asset(dataset: str) -> Asset:
    """The rows of `dataset` in the recommendations table, updated by each publish."""
    return Asset(name=f"ncf_recommendations_{dataset}", uri=f"ncf://recommendations/{dataset}",
                 group="ncf")


def recommendations_db_url() -> str:
    """The table's SQLAlchemy URL. Call it in a task, never at parse time."""
    from jobs.serving import publish
    from jobs.serving.engine import sqlalchemy_url

    try:
        conn = Connection.get(DB_CONN_ID)
    except AirflowNotFoundException:
        return publish.db_url()  # $NCF_DB_URL or the local default
    if conn.conn_type == "sqlite":  # the file path is the connection's host
        return f"sqlite:///{conn.host}"
    return sqlalchemy_url(conn.get_uri())
