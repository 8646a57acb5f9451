"""The PostgreSQL server the tests use, at 127.0.0.1:5432 (or `FLUVIAL_PG_DSN`), database
`test`, and a fresh schema per test.

Without a server the PostgreSQL tests skip with the reason, except in CI (`CI=true`), where
they fail: CI starts the server (.ci/run), so a skip there would hide a broken setup.
"""

from __future__ import annotations

import functools
import os
import uuid
from collections.abc import Iterator

import psycopg
import pytest
from psycopg import sql

DSN = os.environ.get("FLUVIAL_PG_DSN", "postgresql://postgres@127.0.0.1:5432/test")
START = "pg_ctlcluster --skip-systemctl-redirect $(ls /etc/postgresql) main start"
CREATE = "createdb -h 127.0.0.1 -U postgres test"


@functools.cache
def _unreachable(dsn: str) -> str | None:
    """Why the server cannot be used, or None; asked once per test run."""
    try:
        with psycopg.connect(dsn, connect_timeout=3) as conn:
            conn.execute("SELECT 1")
    except psycopg.Error as exc:
        return str(exc).strip() or type(exc).__name__
    return None


def require_postgres(dsn: str = DSN) -> None:
    """Skip the calling test when the server is unreachable (fail it in CI)."""
    error = _unreachable(dsn)
    if error is None:
        return
    message = (
        f"PostgreSQL not reachable at {dsn}: {error}; start it with `{START}` "
        f"(and create the database with `{CREATE}`; docs/postgres.md, Tests)"
    )
    if os.environ.get("CI") == "true":
        pytest.fail(f"{message} (CI=true: PostgreSQL tests must run, not skip)")
    pytest.skip(message)


@pytest.fixture
def postgres_schema() -> Iterator[str]:
    """The name of a schema no other test uses, dropped (with all in it) after the test."""
    require_postgres()
    schema = f"test_{uuid.uuid4().hex[:16]}"
    yield schema
    with psycopg.connect(DSN, autocommit=True) as conn:
        conn.execute(sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(sql.Identifier(schema)))
