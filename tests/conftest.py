"""Test harness: a real PostgreSQL (wal_level=logical) started once per session.

Fixtures:
- `pg_server`: the `EmbeddedPostgres` (session scope).
- `pg_dsn`: a fresh empty database per test (DSN string, superuser).
- `pg_url`: the same database as a postgresql:// URL.
Replication slots are cluster-wide, so every test drops the slots of its own database
at teardown.
"""

from __future__ import annotations

import itertools
import os
from collections.abc import Iterator

import psycopg
import pytest

from sidecar.embedded import EmbeddedPostgres

_counter = itertools.count()


@pytest.fixture(scope="session")
def pg_server() -> Iterator[EmbeddedPostgres]:
    server = EmbeddedPostgres(timezone="Europe/Paris")  # non-UTC on purpose
    server.start()
    try:
        yield server
    finally:
        server.stop()


def _drop_database(server: EmbeddedPostgres, name: str) -> None:
    with psycopg.connect(server.dsn(), autocommit=True) as conn:
        conn.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
            "WHERE datname = %s AND pid <> pg_backend_pid()",
            (name,),
        )
        for (slot,) in conn.execute(
            "SELECT slot_name FROM pg_replication_slots WHERE database = %s", (name,)
        ).fetchall():
            conn.execute("SELECT pg_drop_replication_slot(%s)", (slot,))
        conn.execute(f'DROP DATABASE IF EXISTS "{name}"')


@pytest.fixture
def pg_dbname(pg_server: EmbeddedPostgres) -> Iterator[str]:
    name = f"t_{os.getpid()}_{next(_counter)}"
    with psycopg.connect(pg_server.dsn(), autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    try:
        yield name
    finally:
        _drop_database(pg_server, name)


@pytest.fixture
def pg_dsn(pg_server: EmbeddedPostgres, pg_dbname: str) -> str:
    return pg_server.dsn(pg_dbname)


@pytest.fixture
def pg_url(pg_server: EmbeddedPostgres, pg_dbname: str) -> str:
    return pg_server.url(pg_dbname)
