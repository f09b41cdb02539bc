"""Simulated devices: a reference `Client` each, used the way a person uses a phone —
edits made whether online or not (queued in the outbox), going offline and back at random,
syncing while online. Edits aim at a small hot set of rows so that devices (and the legacy
application) keep overwriting each other under every conflict strategy.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import time
from dataclasses import dataclass, field

import jwt

from tests.sim.client import Client, Refused, Retry
from tests.sim.world import HOT, NOTES, Clock


def token(secret: str, user: str, team: str, device: str) -> str:
    now = int(time.time())
    claims = {"sub": user, "team": team, "device_id": device, "iat": now, "exp": now + 86400}
    return jwt.encode(claims, secret, algorithm="HS256")


@dataclass
class Device:
    name: str
    user: str
    team: str
    number: int
    client: Client
    rng: random.Random
    clock: Clock
    online: bool = True
    refusals: list[str] = field(default_factory=list)
    event_ids: list[str] = field(default_factory=list)  # every events insert it queued
    _next_key: int = 0

    async def live(self, stop: asyncio.Event) -> None:
        """Until `stop`: edit, sometimes go offline or come back, sync while online."""
        while not stop.is_set():
            if self.rng.random() < (0.04 if self.online else 0.15):
                self.online = not self.online
            for _ in range(self.rng.choice((0, 1, 1, 2))):
                self.edit()
            pause = self.rng.uniform(0.1, 0.8)
            if self.online:
                pause = max(pause, await self.sync_once())
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), pause)

    async def sync_once(self, after_lsn: str | None = None) -> float:
        """One round; the delay before the next when it must be retried (else 0)."""
        try:
            await self.client.sync(after_lsn)
        except Retry as retry:
            return retry.delay
        except Refused as refused:  # never expected: a client or server bug
            self.refusals.append(str(refused))
            return 1.0
        return 0.0

    async def settle(self, deadline: float, after_lsn: str | None = None) -> None:
        """Sync until the outbox is empty and a round finished (waiting for `after_lsn`)."""
        while True:
            delay = await self.sync_once(after_lsn)
            if delay == 0.0 and not self.client.outbox:
                return
            if time.monotonic() + delay > deadline:
                raise AssertionError(
                    f"{self.name} did not settle: {len(self.client.outbox)} mutations left, "
                    f"counts {self.client.counts}, refusals {self.refusals[-3:]}"
                )
            await asyncio.sleep(delay)

    def edit(self) -> None:
        x = self.rng.random()
        if x < 0.3:
            self.add_event()
            return
        table = self.rng.choice(NOTES)
        rows = self.client.replica.table(table)
        if x < 0.4 or not rows:
            self._next_key += 1
            key = {"id": (self.number + 1) * 100_000 + self._next_key}
            data = {"title": f"{self.name} new", "n": 0, "stamp": self.clock.tick()}
            self.client.insert(table, data, key=key)
            return
        hot = [k for k in rows if k[0][1] <= HOT]
        pick = self.rng.choice(hot if hot and self.rng.random() < 0.8 else list(rows))
        key = dict(pick)
        if x < 0.47:
            self.client.delete(table, key)
            return
        row = rows[pick]
        change: dict[str, object] = {}
        if self.rng.random() < 0.6:
            change["title"] = f"{self.name} {self.rng.randint(0, 999)}"
        if not change or self.rng.random() < 0.5:
            change["n"] = row["n"] + self.rng.randint(1, 5)
        if table == "notes_latest" or self.rng.random() < 0.3:
            change["stamp"] = self.clock.tick()
        self.client.update(table, key, change)

    def add_event(self) -> None:
        mutation_id = self.client.new_id()
        self.event_ids.append(mutation_id)
        self.client.insert("events", {"mark": mutation_id, "body": self.name}, None, mutation_id)
