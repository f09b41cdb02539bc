"""The SQLite store's statements use its indexes: none scans `rows` or `entries`.

The store never runs ANALYZE, so SQLite plans without statistics; a batched statement
joins a JSON array (json_each) with a table, and a plan that put the table first would
scan it once per row of the batch (a capture batch then takes minutes, not milliseconds).
"""

from __future__ import annotations

import re
import sqlite3

import pytest

from sidecar.store import sqlite_sql as store

_PREFIXES = ("ROWS_", "ENTRIES_", "TOMBSTONES_", "LOOKUP", "PULL")
STATEMENTS = {
    name: sql.format(row="")
    for name, sql in vars(store).items()
    if name.startswith(_PREFIXES) and isinstance(sql, str)
}


def _parameters(sql: str) -> tuple[None, ...]:
    numbered = [int(n) for n in re.findall(r"\?(\d+)", sql)]
    return (None,) * (max(numbered) if numbered else sql.count("?"))


@pytest.fixture(scope="module")
def conn() -> sqlite3.Connection:
    c = sqlite3.connect(":memory:")
    c.executescript(store.SCHEMA)
    c.executescript(store.INDEXES)
    return c


def test_the_statements_are_found() -> None:
    assert {"LOOKUP", "PULL", "ROWS_REWRITE_IN_SCOPE", "ENTRIES_RENUMBER"} <= set(STATEMENTS)


def _plan(conn: sqlite3.Connection, sql: str) -> list[str]:
    return [row[3] for row in conn.execute("EXPLAIN QUERY PLAN " + sql, _parameters(sql))]


@pytest.mark.parametrize("name", sorted(STATEMENTS))
def test_no_table_scan(conn: sqlite3.Connection, name: str) -> None:
    plan = _plan(conn, STATEMENTS[name])
    scans = [step for step in plan if step.startswith("SCAN") and "VIRTUAL TABLE" not in step]
    assert not scans, f"{name} scans a table: {plan}"


@pytest.mark.parametrize("name", sorted(n for n, sql in STATEMENTS.items() if "json_each" in sql))
def test_batches_drive_the_join(conn: sqlite3.Connection, name: str) -> None:
    """The JSON batch is the outer loop: each of its rows looks the table up by key."""
    steps = [s for s in _plan(conn, STATEMENTS[name]) if s.startswith(("SCAN", "SEARCH"))]
    first = steps[0]
    assert "VIRTUAL TABLE" in first or "INTEGER PRIMARY KEY" in first, f"{name}: {steps}"


def test_the_guard_sees_a_bad_join_order(conn: sqlite3.Connection) -> None:
    """A join term on a parameter alone makes the planner start from the table."""
    bad = store.ROWS_REWRITE_IN_SCOPE.replace(
        "rows.collection = v.value ->> 0", "rows.collection = ?3"
    )
    steps = [s for s in _plan(conn, bad) if s.startswith(("SCAN", "SEARCH"))]
    assert "VIRTUAL TABLE" not in steps[0]


def test_pull_streams_rows_without_sorting(conn: sqlite3.Connection) -> None:
    """A pull merges two index scans already in version order: rows come one at a time
    and the reader stops at the page's byte bound. A sort (temp B-tree) would copy every
    row up to the LIMIT, big values included, before the first one is returned."""
    plan = _plan(conn, store.PULL)
    assert "MERGE (UNION ALL)" in plan
    assert not [step for step in plan if "TEMP B-TREE" in step], plan
