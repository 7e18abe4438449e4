"""SQLAlchemy engines for the recommendation table: SQLite pragmas, URLs with the password
masked, Airflow connection URIs turned into SQLAlchemy URLs."""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Engine

SQLITE_BUSY_SECONDS = 120  # a second writer waits for the first instead of failing at once


def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
    # WAL: readers keep reading the last committed set while a publish writes the next one
    # (with the default rollback journal they would get "database is locked").
    cursor = dbapi_connection.cursor()
    try:
        cursor.execute("PRAGMA journal_mode=WAL")
    finally:
        cursor.close()


def create_db_engine(url: str | sa.URL) -> Engine:
    """An engine for `url`; SQLite connections use the WAL journal and wait when busy."""
    parsed = sa.make_url(url)
    if parsed.get_backend_name() == "sqlite":
        engine = sa.create_engine(parsed, connect_args={"timeout": SQLITE_BUSY_SECONDS})
        sa.event.listen(engine, "connect", _sqlite_pragmas)
        return engine
    if parsed.get_backend_name() == "postgresql":
        # A database that is down fails the task in seconds, not after the OS's TCP timeout.
        return sa.create_engine(parsed, connect_args={"connect_timeout": 10})
    return sa.create_engine(parsed)


def masked_url(url: str | sa.URL) -> str:
    """The URL as text with any password replaced by ***, fit for logs and the manifest."""
    return sa.make_url(url).render_as_string(hide_password=True)


def sqlalchemy_url(uri: str) -> str:
    """A database URI as Airflow connections and libpq write it -> a SQLAlchemy URL.

    `postgres://` and `postgresql://` get the psycopg 3 driver; other URLs pass unchanged.
    """
    for prefix in ("postgres://", "postgresql://"):
        if uri.startswith(prefix):
            return "postgresql+psycopg://" + uri.removeprefix(prefix)
    return uri
