"""Randomized convergence under faults: 20 devices of 5 users (3 teams) edit overlapping
rows under every conflict strategy through a fault-injecting proxy, going offline and
back, while the legacy application writes to the same tables (with a bulk job) and the
sidecar — a real `sidecar run` process — is killed with SIGKILL and restarted, and once
restarted on a dropped slot (a store rebuild: every device gets 410 and resyncs).

At quiescence (faults off, outboxes drained, capture caught up with `after_lsn`):
- every device's replica equals what PostgreSQL returns for its scope (`team = :team`);
- no device holds a row of another team;
- every `events` insert a device queued was acknowledged (`applied` or `duplicate`) and is
  in the table exactly once (its `mark` is the mutation id; the key is a `bigserial`);
- the server never refused a well-formed request (no 400/401/403/413 for the client).

Reproducing: the seed is printed and put in every failure message; set
`SIDECAR_SIM_SEED=<seed>` to run the same schedule again (each actor — device, legacy
application, chaos, proxy — draws from its own `random.Random` derived from the seed).
The operating system's scheduling still decides how the actors interleave, so a run is
not bit-for-bit reproducible: the seed reproduces the schedule of operations, not the
exact timing. `SIDECAR_SIM_DURATION` (seconds of chaos, default 10) makes it a soak
(`make soak`: 600 s).
"""

from __future__ import annotations

import asyncio
import os
import random
import time
from collections.abc import Awaitable
from pathlib import Path

import aiohttp
import psycopg
import pytest

from sidecar.embedded import free_port
from sidecar.lsn import str_to_lsn
from tests.fixtures.service import SECRET, run_sql
from tests.sim.client import Client
from tests.sim.devices import Device, token
from tests.sim.faultproxy import NONE, FaultProxy, Faults
from tests.sim.world import (
    NOTES,
    TEAMS,
    Clock,
    Legacy,
    SidecarProcess,
    config_yaml,
    current_lsn,
    derived,
    drop_slot,
    event_counts,
    oracle,
    schema_sql,
)

pytestmark = [pytest.mark.pg, pytest.mark.slow]

SEED = int(os.environ.get("SIDECAR_SIM_SEED") or random.SystemRandom().randrange(2**32))
DURATION = float(os.environ.get("SIDECAR_SIM_DURATION") or 10)
USERS = {"u1": "red", "u2": "red", "u3": "green", "u4": "green", "u5": "blue"}
DEVICES_PER_USER = 4
FAULTS = Faults(drop=0.04, delay=0.12, cut=0.05, truncate=0.03, duplicate=0.05, max_delay=0.25)
RATE = "6/s"  # per device: bursts (a resync, a drain) meet 429 and its Retry-After


async def test_devices_converge_under_faults_kills_and_a_rebuild(pg_dsn, pg_url, tmp_path):
    print(f"SIDECAR_SIM_SEED={SEED} SIDECAR_SIM_DURATION={DURATION:g}")
    try:
        await Simulation(SEED, DURATION, pg_dsn, pg_url, tmp_path).run()
    except BaseException as exc:
        note = f"[reproduce with SIDECAR_SIM_SEED={SEED} SIDECAR_SIM_DURATION={DURATION:g}]"
        if isinstance(exc, AssertionError):
            raise AssertionError(f"{note} {exc}") from exc
        raise AssertionError(f"{note} {type(exc).__name__}: {exc}") from exc


class Simulation:
    def __init__(self, seed: int, duration: float, dsn: str, url: str, tmp: Path) -> None:
        self.seed, self.duration, self.dsn = seed, duration, dsn
        self.port = free_port()
        config = tmp / "sidecar.yaml"
        config.write_text(config_yaml(url, tmp / "store.db", self.port, SECRET, RATE))
        self.side = SidecarProcess(config, self.port, tmp / "sidecar.log")
        self.proxy = FaultProxy(self.port, derived(seed, "proxy"), FAULTS)
        self.clock = Clock()
        self.legacy = Legacy(dsn, derived(seed, "legacy"), self.clock)
        self.devices: list[Device] = []
        self.kills = self.rebuilds = 0
        self.timings = ""

    async def run(self) -> None:
        run_sql(self.dsn, *schema_sql())
        t = time.monotonic()
        self.side.start()
        await self.side.wait_ready()
        self.timings = f"first start {time.monotonic() - t:.1f} s, "
        await self.proxy.start()
        try:
            self._make_devices()
            t0 = time.monotonic()
            await self._chaos_phase()
            t1 = time.monotonic()
            self.timings += f"chaos {t1 - t0:.1f} s"
            await self._quiesce()
            self.timings += f", quiescence {time.monotonic() - t1:.1f} s"
            self._check()
        finally:
            print(self._summary())
            await self.proxy.close()
            self.side.stop()

    def _make_devices(self) -> None:
        base = f"http://127.0.0.1:{self.proxy.port}"
        for user, team in USERS.items():
            for i in range(DEVICES_PER_USER):
                name = f"{user}-d{i}"
                rng = derived(self.seed, name)
                client = Client(
                    base, token(SECRET, user, team, name), rng=rng, backoff_base=0.05,
                    backoff_cap=2.0, timeout=30,
                )  # fmt: skip
                self.devices.append(
                    Device(name, user, team, len(self.devices), client, rng, self.clock)
                )

    async def _chaos_phase(self) -> None:
        stop = asyncio.Event()
        rng = derived(self.seed, "schedule")
        bulks = [self.duration * rng.uniform(0.15, 0.4)]
        bulks += [float(t) for t in range(90, int(self.duration), 90)]  # soak: every 90 s
        devices = [asyncio.create_task(d.live(stop)) for d in self.devices]
        others = [
            asyncio.create_task(self.legacy.run(stop, bulks)),
            asyncio.create_task(self._chaos(stop, derived(self.seed, "chaos"))),
        ]
        try:
            await asyncio.sleep(self.duration)
        finally:
            stop.set()
            # A device still waiting for an answer is closed like an app the user swipes
            # away: its outbox keeps what was not answered, and sends it again later.
            _, busy = await asyncio.wait(devices, timeout=1.0)
            for task in busy:
                task.cancel()
            await asyncio.gather(*busy, return_exceptions=True)
            await asyncio.gather(*(d for d in devices if d not in busy), *others)
        assert self.legacy.counts.get("bulk_rows", 0) >= 3000, "the bulk job did not run"

    async def _chaos(self, stop: asyncio.Event, rng: random.Random) -> None:
        """SIGKILL and restart at random: mostly after a while up, sometimes during the
        start (capture catching up); once, a rebuild (the slot dropped while down)."""
        started = time.monotonic()
        rebuild_at = started + self.duration * rng.uniform(0.25, 0.5)
        await _until(stop, self.duration * rng.uniform(0.05, 0.2))
        while not stop.is_set():
            if not self.rebuilds and time.monotonic() >= rebuild_at:
                await self._rebuild()
            else:
                self.side.kill9()
                self.kills += 1
                await asyncio.sleep(rng.uniform(0.0, 0.5))
                self.side.start()
            early = rng.random() < 0.2  # killed again while starting
            if not early:  # else up for a while: a sidecar that never serves tests little
                await _until(stop, 60, self.side.wait_ready())
            up = rng.uniform(0.0, 1.5) if early else rng.uniform(1.0, 6.0)
            if not self.rebuilds:
                up = min(up, rebuild_at - time.monotonic())
            await _until(stop, up)
            if time.monotonic() - started > self.duration - min(10, self.duration / 4):
                return  # the last restart gets time to finish before quiescence

    async def _rebuild(self) -> None:
        """Kill with nothing in flight and capture caught up, drop the slot, restart: the
        store is rebuilt in place on the same database (a new epoch, 410 for every cursor;
        the mutation ids recorded so far are kept). Mutations never captured would be
        forgotten, as docs/ops.md says; that is why nothing may be in flight here."""
        self.proxy.pause()
        try:
            await asyncio.wait_for(self.proxy.idle(), 60)  # a push may take its 30 s
            await self._no_push_in_progress()
            if not self.side.alive():
                self.side.start()
            await self.side.wait_ready()
            await self._captured(current_lsn(self.dsn))
            self.side.kill9()
            drop_slot(self.dsn)
            self.side.start()
            self.rebuilds += 1
        finally:
            self.proxy.resume()

    async def _no_push_in_progress(self) -> None:
        """A push the client gave up on may still be running in the sidecar."""
        for _ in range(300):
            with psycopg.connect(self.dsn) as conn:
                (busy,) = conn.execute(  # type: ignore[misc]
                    "SELECT count(*) FROM pg_stat_activity WHERE application_name = "
                    "'sidecar-push' AND xact_start IS NOT NULL"
                ).fetchone()
            if not busy:
                return
            await asyncio.sleep(0.1)
        raise AssertionError("a push transaction stayed open for 30 s")

    async def _captured(self, lsn: str, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        async with aiohttp.ClientSession() as http:
            while time.monotonic() < deadline:
                async with http.get(f"http://127.0.0.1:{self.port}/readyz") as r:
                    body = await r.json(content_type=None)
                if r.status == 200 and str_to_lsn(body["lsn"]) >= str_to_lsn(lsn):
                    return
                await asyncio.sleep(0.1)
        raise AssertionError(f"capture did not reach {lsn}")

    async def _quiesce(self) -> None:
        self.proxy.faults = NONE
        if not self.rebuilds:  # restarts were too slow for the chaos phase to get to it
            await self._rebuild()
        if not self.side.alive():
            self.side.start()
        t0 = time.monotonic()
        await self.side.wait_ready()
        t1 = time.monotonic()
        deadline = time.monotonic() + 90 + self.duration / 10
        await asyncio.gather(*(d.settle(deadline) for d in self.devices))
        t2 = time.monotonic()
        lsn = current_lsn(self.dsn)  # every push and legacy write is committed before it
        await asyncio.gather(*(d.settle(deadline, after_lsn=lsn) for d in self.devices))
        self.timings += (
            f" (ready {t1 - t0:.1f} s, outboxes drained {t2 - t1:.1f} s, "
            f"caught up {time.monotonic() - t2:.1f} s)"
        )

    def _check(self) -> None:
        problems: list[str] = []
        expected = {team: oracle(self.dsn, team) for team in TEAMS}
        for d in self.devices:
            for table in (*NOTES, "events"):
                got, want = d.client.replica.table(table), expected[d.team][table]
                if got != want:
                    problems.append(f"{d.name} {table}: {_diff(got, want)}")
                foreign = [row for row in got.values() if row["team"] != d.team]
                if foreign:
                    problems.append(f"{d.name} holds rows of other teams: {foreign[:3]}")
            problems += [f"{d.name} refused: {r}" for r in d.refusals[:3]]
        marks = event_counts(self.dsn)
        problems += [f"events mark {m} is there {n} times" for m, n in marks.items() if n > 1]
        for d in self.devices:
            for mid in d.event_ids:
                status = d.client.answers.get(mid, {}).get("status")
                if status not in ("applied", "duplicate"):
                    problems.append(f"{d.name} event {mid}: {d.client.answers.get(mid)}")
                elif marks.get(mid) != 1:
                    problems.append(
                        f"{d.name} event {mid} {status}, in the table: {marks.get(mid)}"
                    )
        assert self.kills >= 1 and self.rebuilds == 1, (self.kills, self.rebuilds)
        assert not problems, f"{len(problems)} problems:\n" + "\n".join(problems[:40])

    def _summary(self) -> str:
        totals: dict[str, int] = {}
        for d in self.devices:
            for k, v in d.client.counts.items():
                totals[k] = totals.get(k, 0) + v
        slowest = max(d.client.slowest_push for d in self.devices)
        return (
            f"{self.timings}; slowest push {slowest:.1f} s; kills {self.kills}, "
            f"rebuilds {self.rebuilds}, starts {self.side.starts}; "
            f"clients {dict(sorted(totals.items()))}; proxy {dict(self.proxy.counts)}; "
            f"legacy {self.legacy.counts}"
        )


async def _until(stop: asyncio.Event, seconds: float, work: Awaitable[None] | None = None) -> None:
    """Wait `seconds`, or until `work` is done (its failure ignored), or until `stop`."""
    waiters = {asyncio.ensure_future(stop.wait())}
    if work is not None:
        waiters.add(asyncio.ensure_future(work))
    first = asyncio.FIRST_COMPLETED
    _, pending = await asyncio.wait(waiters, timeout=max(0.0, seconds), return_when=first)
    for w in pending:
        w.cancel()
    await asyncio.gather(*waiters, return_exceptions=True)


def _diff(got: dict, want: dict) -> str:
    missing = [k for k in want if k not in got]
    extra = [k for k in got if k not in want]
    differ = [(k, got[k], want[k]) for k in want if k in got and got[k] != want[k]]
    return f"missing {missing[:5]}, extra {extra[:5]}, different {differ[:3]} (replica, db)"
