"""Triggers that need more than one database server, end to end against real PostgreSQL
processes: a failover to a physical standby that was behind (with and without a slot of
the same name on it), and a slot invalidated because its WAL was removed.

In each, a client holding a cursor from before pulls afterwards: no 410, it receives only
the differences, and its folded state equals what the (new) primary answers to SELECT.
"""

from __future__ import annotations

import shutil
import subprocess
import tempfile
import time
from pathlib import Path

import psycopg
import pytest
import structlog

from sidecar.embedded import EmbeddedPostgres
from sidecar.lsn import lsn_to_str, str_to_lsn
from tests.fixtures.service import Sidecar, make_config, run_sql, state_of

pytestmark = pytest.mark.pg

ITEMS = """
  items:
    table: items
    read: "true"
    write: {ops: [insert, update, delete]}
"""

ROWS = 2000


def insert(mid: str, key: int) -> dict:
    """A push's insert of row `key` (mutation id `mid`)."""
    data = {"id": key, "owner": 1, "val": 0, "note": f"pushed as {mid}"}
    return {"id": mid, "collection": "items", "op": "insert", "data": data}


class Standby(EmbeddedPostgres):
    """A physical standby of `primary` (``pg_basebackup -R``), on its own port and socket
    directory; `promote()` makes it a primary on a new timeline."""

    def __init__(self, primary: EmbeddedPostgres) -> None:
        super().__init__()
        self.primary = primary

    def start(self) -> Standby:
        self.root = Path(tempfile.mkdtemp(prefix="sidecar-standby-"))
        self._run_as = self.primary._run_as
        if self._run_as:
            shutil.chown(self.root, self._run_as, self._run_as)
        self._run(
            str(self.bindir / "pg_basebackup"),
            "-D",
            str(self.datadir),
            "-h",
            "127.0.0.1",
            "-p",
            str(self.primary.port),
            "-U",
            self.superuser,
            "-R",
            "-X",
            "stream",
            "--checkpoint=fast",
            "--no-sync",
        )
        self._own_port(self.port)
        self.pg_ctl("start")
        return self

    def _own_port(self, port: int) -> None:
        self.port = port
        with open(self.datadir / "postgresql.auto.conf", "a", encoding="utf-8") as fh:
            fh.write(f"port = {port}\nunix_socket_directories = '{self.sockdir}'\n")

    def take_over(self, primary: EmbeddedPostgres) -> None:
        """Listen where `primary` (stopped) listened: the same address after a failover."""
        self._own_port(primary.port)

    def pg_ctl(self, *args: str) -> None:
        self._run(
            str(self.bindir / "pg_ctl"),
            "-D",
            str(self.datadir),
            "-l",
            str(self.root / "server.log"),  # type: ignore[operator]
            "-w",
            "-t",
            "60",
            *args,
        )

    def promote(self) -> None:
        self.pg_ctl("promote")


def halt(server: EmbeddedPostgres, mode: str = "fast") -> None:
    """Stop a server, keeping its files."""
    proc = subprocess.run(
        server._cmd(str(server.bindir / "pg_ctl"), "-D", str(server.datadir), "-m", mode, "stop"),
        capture_output=True,
        text=True,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr


def wal_lsn(dsn: str) -> str:
    with psycopg.connect(dsn) as conn:
        row = conn.execute("SELECT pg_current_wal_lsn()::text").fetchone()
    assert row is not None
    return str(row[0])


def wait_replayed(standby: Standby, lsn: str, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while True:
        with psycopg.connect(standby.dsn()) as conn:
            row = conn.execute("SELECT pg_last_wal_replay_lsn() >= %s::pg_lsn", (lsn,)).fetchone()
        if row and row[0]:
            return
        assert time.monotonic() < deadline, "the standby did not catch up"
        time.sleep(0.05)


def timeline(dsn: str) -> int:
    with psycopg.connect(dsn) as conn:
        row = conn.execute("SELECT pg_walfile_name(pg_current_wal_lsn())").fetchone()
    assert row is not None
    return int(row[0][:8], 16)  # the WAL file being written names its timeline


def db_state(dsn: str) -> dict:
    with psycopg.connect(dsn) as conn:
        rows = conn.execute("SELECT id, owner, val, note FROM items").fetchall()
    return {
        ("items", (("id", r[0]),)): {"id": r[0], "owner": r[1], "val": r[2], "note": r[3]}
        for r in rows
    }


def keys(changes: list) -> dict[str, set[int]]:
    """The ids of the changes received, by operation."""
    out: dict[str, set[int]] = {"upsert": set(), "delete": set()}
    for c in changes:
        out[c["op"]].add(c["key"]["id"])
    return out


@pytest.fixture
def pair() -> object:
    """A primary (logical WAL, standbys allowed) with a database `app` holding `items`,
    and a streaming physical standby of it; both stopped and removed after the test."""
    primary = EmbeddedPostgres(settings={"hot_standby": "on", "wal_keep_size": "256MB"})
    primary.start()
    standby = Standby(primary)
    try:
        run_sql(primary.dsn(), "CREATE DATABASE app")
        run_sql(
            primary.dsn("app"),
            "CREATE TABLE items (id int PRIMARY KEY, owner int, val int, note text)",
            f"INSERT INTO items SELECT g, 1, g, 'n' FROM generate_series(1, {ROWS}) g",
        )
        standby.start()
        yield primary, standby
    finally:
        standby.stop()
        primary.stop()


async def failover(
    pair: tuple[EmbeddedPostgres, Standby],
    store: Path,
    *,
    slot_on_standby: bool,
    same_address: bool,
) -> None:
    """The scenario of both failover tests (see their docstrings)."""
    primary, standby = pair
    sc = Sidecar(make_config(primary.url("app"), store, ITEMS))
    await sc.start()
    try:
        before, cursor = await sc.pull_all(1)
        assert len(before) == ROWS
        held = state_of(before)
        # The sidecar's own writes survive when the standby had them, are lost otherwise.
        status, body = await sc.push([insert("kept-1", 9001)])
        assert status == 200 and body["results"][0]["status"] == "applied", body
        wait_replayed(standby, wal_lsn(primary.dsn("app")))
        halt(standby)  # from here on the standby sees nothing: it falls behind
        status, body = await sc.push([insert("lost-1", 9002)])
        assert status == 200 and body["results"][0]["status"] == "applied", body
        run_sql(
            primary.dsn("app"),
            "INSERT INTO items SELECT g, 2, g, 'phantom' FROM generate_series(2001, 2300) g",
            "UPDATE items SET val = -val, note = 'stale' WHERE id <= 200",
            "DELETE FROM items WHERE id > 1900 AND id <= 2000",
        )
        await sc.caught_up(primary.dsn("app"))
        changes, cursor = await sc.pull_all(1, cursor)  # the client holds the lost writes too
        held = state_of(changes, held)
        assert len(held) == ROWS + 1 + 300 - 100 + 1
        ahead = sc.service.store.state().lsn  # type: ignore[union-attr]

        if same_address:  # an HA address: the running sidecar reconnects by itself
            halt(primary, "immediate")
            standby.take_over(primary)
        else:
            await sc.stop()
            halt(primary, "immediate")
        standby.pg_ctl("start")  # it cannot reach its primary any more
        standby.promote()
        new = standby.dsn("app")
        assert timeline(new) == 2
        with psycopg.connect(new) as conn:  # the new primary is behind the store
            row = conn.execute(
                "SELECT pg_current_wal_lsn() < %s::pg_lsn", (lsn_to_str(ahead),)
            ).fetchone()
        assert row is not None and row[0]
        run_sql(new, "INSERT INTO items VALUES (5001, 3, 1, 'written before the sidecar came')")
        if slot_on_standby:  # `sidecar init` run there, or an HA tool that syncs slots
            run_sql(new, "SELECT pg_create_logical_replication_slot('sidecar_test', 'pgoutput')")

        with structlog.testing.capture_logs() as logs:
            if same_address:
                await _wait_resynced(sc)
            else:
                sc = Sidecar(make_config(standby.url("app"), store, ITEMS))
                await sc.start()
        status_ = sc.service.capture.status  # type: ignore[union-attr]
        assert (status_.rebuilds, status_.resyncs) == (0, 1)
        reasons = [e.get("reason", "") for e in logs if "new replication slot" in e["event"]]
        assert len(reasons) == 1 and "timeline 2" in reasons[0], reasons
        # the old timeline's positions, ahead of this server, are not kept (they would be
        # acknowledged to the new slot, and a wait for a position would end too early)
        assert status_.flushed_lsn <= str_to_lsn(wal_lsn(new))
        assert status_.acked_lsn <= str_to_lsn(wal_lsn(new))

        changes, cursor = await sc.pull_all(1, cursor)  # the old cursor: no 410
        got = keys(changes)
        # only the differences: 300 phantoms and the lost push's row deleted; 200 stale
        # rows, 100 missing rows and the row written before the sidecar came sent again
        assert got["delete"] == {*range(2001, 2301), 9002}
        assert got["upsert"] == {*range(1, 201), *range(1901, 2001), 5001}
        assert len(changes) == 301 + 200 + 100 + 1
        held = state_of(changes, held)
        assert held == db_state(new)

        # the mutation ids of the old timeline are forgotten: the lost push's retry is
        # applied again on the new primary
        status, body = await sc.push([insert("lost-1", 9002)])
        assert status == 200 and body["results"][0]["status"] == "applied", body

        # the new primary's writes arrive
        run_sql(
            new,
            "INSERT INTO items VALUES (5002, 3, 2, 'after the failover')",
            "UPDATE items SET val = 0 WHERE id = 1",
            "DELETE FROM items WHERE id = 2",
        )
        await sc.caught_up(new)
        changes, cursor = await sc.pull_all(1, cursor)
        assert keys(changes) == {"upsert": {9002, 5002, 1}, "delete": {2}}
        assert state_of(changes, held) == db_state(new)
    finally:
        await sc.stop()


async def _wait_resynced(sc: Sidecar, timeout: float = 60.0) -> None:
    from tests.fixtures.service import wait_until

    async def done() -> bool:
        status = sc.service.capture.status  # type: ignore[union-attr]
        return status.resyncs == 1 and status.phase == "streaming"

    await wait_until(done, timeout, "the resync after the failover")


async def test_a_failover_to_a_standby_behind_with_a_slot_of_the_same_name(pair, tmp_path):
    """The standby missed inserts, updates, deletes and a push the store captured; after
    the failover a slot of the same name exists on it (`sidecar init`, an HA tool): the
    store must not stream on from its old position (once, phantom, missing and stale
    rows were served forever); it is reconciled with the new primary instead."""
    await failover(pair, tmp_path / "store.db", slot_on_standby=True, same_address=False)


async def test_a_failover_to_a_promoted_standby_without_a_slot(pair, tmp_path):
    """The common case: the promoted standby has no slot and answers at the same address;
    the running sidecar reconnects, makes a slot and reconciles."""
    await failover(pair, tmp_path / "store.db", slot_on_standby=False, same_address=True)


async def test_an_invalidated_slot_is_reconciled(tmp_path):
    """`max_slot_wal_keep_size` let the server remove WAL the stopped sidecar's slot still
    needed (`wal_status = lost`): the store is reconciled with a new slot, no 410."""
    server = EmbeddedPostgres(settings={"max_slot_wal_keep_size": "1MB"})
    server.start()
    try:
        run_sql(server.dsn(), "CREATE DATABASE app")
        dsn = server.dsn("app")
        run_sql(
            dsn,
            "CREATE TABLE items (id int PRIMARY KEY, owner int, val int, note text)",
            "CREATE TABLE filler (x int)",
            f"INSERT INTO items SELECT g, 1, g, 'n' FROM generate_series(1, {ROWS}) g",
        )
        sc = Sidecar(make_config(server.url("app"), tmp_path / "store.db", ITEMS))
        await sc.start()
        try:
            changes, cursor = await sc.pull_all(1)
            held = state_of(changes)
            await sc.stop()
            run_sql(
                dsn,
                "UPDATE items SET val = -val WHERE id <= 50",
                "DELETE FROM items WHERE id > 1980",
                "INSERT INTO items VALUES (3001, 1, 1, 'while the slot was lost')",
            )
            deadline = time.monotonic() + 30
            while True:
                run_sql(
                    dsn,
                    "INSERT INTO filler SELECT generate_series(1, 1000)",
                    "SELECT pg_switch_wal()",
                    "CHECKPOINT",
                )
                with psycopg.connect(dsn) as conn:
                    row = conn.execute(
                        "SELECT wal_status FROM pg_replication_slots "
                        "WHERE slot_name = 'sidecar_test'"
                    ).fetchone()
                if row is not None and row[0] == "lost":
                    break
                assert time.monotonic() < deadline, f"the slot is still {row}"
            await sc.start()
            status = sc.service.capture.status  # type: ignore[union-attr]
            assert (status.rebuilds, status.resyncs) == (0, 1)
            changes, cursor = await sc.pull_all(1, cursor)  # no 410
            got = keys(changes)
            assert got == {"upsert": {*range(1, 51), 3001}, "delete": set(range(1981, 2001))}
            held = state_of(changes, held)
            assert held == db_state(dsn)
            run_sql(dsn, "INSERT INTO items VALUES (3002, 1, 2, 'after')")
            await sc.caught_up(dsn)
            changes, _ = await sc.pull_all(1, cursor)
            assert keys(changes) == {"upsert": {3002}, "delete": set()}
            assert state_of(changes, held) == db_state(dsn)
        finally:
            await sc.stop()
    finally:
        server.stop()
