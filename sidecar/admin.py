"""Operations on the database side of a sidecar, for `sidecar init | drop | status`.

No printing here: each function returns what it did or found; `cli.py` words it.
"""

from __future__ import annotations

import urllib.request
from dataclasses import dataclass
from typing import Any

import psycopg
from psycopg import sql

from sidecar.capture.slots import read_slot
from sidecar.config.model import Config
from sidecar.errors import PreflightError
from sidecar.preflight import publication_statement, run_preflight
from sidecar.store.open import store_summary


@dataclass(frozen=True, slots=True)
class Step:
    """One statement `init` or `drop` runs (or would run), and whether it is needed."""

    statement: str
    needed: bool
    why: str


def _publication_exists(conn: psycopg.Connection, name: str) -> bool:
    row = conn.execute("SELECT 1 FROM pg_publication WHERE pubname = %s", (name,)).fetchone()
    return row is not None


def init_steps(config: Config) -> list[Step]:
    """What `init` runs: the publication for exactly the mapped tables, then the slot.

    Raises PreflightError when the database is not ready for them (every problem listed).
    """
    db = config.database
    with psycopg.connect(db.url, autocommit=True) as conn:
        report = run_preflight(conn, config)
        if not report.ok:
            raise PreflightError(list(report.problems))
        publication = publication_statement(config, list(report.tables.values()), create=True)
        slot = sql.SQL("SELECT pg_create_logical_replication_slot({}, 'pgoutput')").format(
            sql.Literal(db.slot)
        )
        has_slot = read_slot(conn, db.slot) is not None
        if report.publication_adds:
            publication = publication_statement(config, list(report.publication_adds), create=False)
        needed = not report.publication_exists or bool(report.publication_adds)
        return [
            Step(
                publication.as_string(conn),
                needed,
                "publishes the mapped tables" if needed else "exists already",
            ),
            Step(
                slot.as_string(conn),
                not has_slot,
                "exists already" if has_slot else "keeps the WAL the sidecar has not read yet",
            ),
        ]


def run_steps(config: Config, steps: list[Step]) -> None:
    with psycopg.connect(config.database.url, autocommit=True) as conn:
        for step in steps:
            if step.needed:
                conn.execute(step.statement.encode())


def drop_steps(config: Config, keep_publication: bool = False) -> list[Step]:
    """What `drop` runs: the slot (so no WAL stays pinned), then the publication."""
    db = config.database
    with psycopg.connect(db.url, autocommit=True) as conn:
        slot = read_slot(conn, db.slot)
        if slot is not None and slot.active:
            raise PreflightError(
                [
                    f"replication slot {db.slot!r} is in use by process {slot.active_pid}: "
                    "stop the sidecar first"
                ]
            )
        has_pub = _publication_exists(conn, db.publication)
        steps = [
            Step(
                sql.SQL("SELECT pg_drop_replication_slot({})")
                .format(sql.Literal(db.slot))
                .as_string(conn),
                slot is not None,
                "no such slot"
                if slot is None
                else f"releases {slot.retained_bytes or 0:,} bytes of retained WAL",
            ),
        ]
        if not keep_publication:
            steps.append(
                Step(
                    sql.SQL("DROP PUBLICATION {}")
                    .format(sql.Identifier(db.publication))
                    .as_string(conn),
                    has_pub,
                    "no such publication" if not has_pub else "the mapped tables' publication",
                )
            )
        return steps


def service_metrics(config: Config, timeout: float = 1.0) -> dict[str, float] | None:
    """Selected metrics of a running sidecar on this config's port (None if unreachable)."""
    host = config.server.host if config.server.host not in ("0.0.0.0", "::", "") else "127.0.0.1"
    url = f"http://{host}:{config.server.port}/metrics"
    try:
        with urllib.request.urlopen(url, timeout=timeout) as resp:
            text = resp.read().decode()
    except OSError:
        return None
    wanted = (
        "sidecar_live_requests",
        "sidecar_live_waiters",
        "sidecar_capture_lag_bytes",
        "sidecar_capture_rows_applied",
    )
    out: dict[str, float] = {}
    for line in text.splitlines():
        name, _, value = line.partition(" ")
        if name in wanted:
            out[name] = float(value)
    return out


def status(config: Config) -> dict[str, Any]:
    """Slot, publication, store and service state, as one JSON-able dict."""
    db = config.database
    with psycopg.connect(db.url, autocommit=True) as conn:
        slot = read_slot(conn, db.slot)
        publication = _publication_exists(conn, db.publication)
    return {
        "slot": {"name": db.slot, **slot.as_dict()} if slot else {"name": db.slot, "exists": False},
        "publication": {"name": db.publication, "exists": publication},
        "store": store_summary(config.store),
        "service": service_metrics(config),
    }
