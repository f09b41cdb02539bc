"""The leadership of a shared PostgreSQL store (several replicas, one capturing): the
statements and settings `PGStore` uses when it is opened `shared`.

- The leader is the replica whose writer session holds a session advisory lock keyed by
  the store's schema (`TRY_LOCK`): when that session ends (the process killed, the
  network cut, the backend terminated), the lock goes with it.
- Each new leader increments the store's `term` (meta) in the transaction that makes it
  leader (`NEXT_TERM`); every write transaction of the writer first checks that the term
  is still its own (`CHECK_TERM`, which also locks the term's row until the transaction
  ends, so a new leader's increment waits for it). Zero rows: another replica leads, the
  writer is fenced (`Fenced`).
- The writer session's TCP keepalives, on both sides (`lead_kwargs`), end a cut-off
  leader's session within `store.takeover_timeout`.
- Each commit notifies the store's channel (`channel`, `payload`) in its transaction: the
  other replicas refresh their state and wake their waiters (`replica/listen.py`).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import orjson

TRY_LOCK = "SELECT pg_try_advisory_lock(hashtext('sidecar:' || %s))"
UNLOCK = "SELECT pg_advisory_unlock(hashtext('sidecar:' || %s))"
NEXT_TERM = (
    "INSERT INTO meta (key, value) VALUES ('term', '1') ON CONFLICT (key) DO UPDATE "
    "SET value = (meta.value::bigint + 1)::text RETURNING value"
)
CHECK_TERM = "UPDATE meta SET value = value WHERE key = 'term' AND value = %s"
NOTIFY = "SELECT pg_notify(%s, %s)"
STILL_LEADS = (
    "SELECT (SELECT value FROM meta WHERE key = 'term'), "
    "EXISTS (SELECT FROM pg_stat_activity WHERE pid = %s)"
)
MAX_PAYLOAD = 7000  # bytes; PostgreSQL's limit is 8000: beyond, "all"


def channel(schema: str) -> str:
    """The NOTIFY channel of the store in `schema`."""
    return f"sidecar:{schema}"


def payload(version: int, scopes: Iterable[str] | None) -> str:
    """A commit's notification: the store's version and the scopes it touched (none
    listed: every waiter wakes)."""
    if scopes is not None:
        text = orjson.dumps({"v": version, "s": sorted(scopes)}).decode()
        if len(text.encode()) <= MAX_PAYLOAD:
            return text
    return orjson.dumps({"v": version}).decode()


def read_payload(text: str) -> tuple[int, list[str] | None]:
    """(version, scopes) of a notification; scopes None: all (or a payload not ours)."""
    try:
        data = orjson.loads(text)
        version = int(data["v"])
    except (orjson.JSONDecodeError, KeyError, TypeError, ValueError):
        return 0, None
    scopes = data.get("s")
    if not isinstance(scopes, list):
        return version, None
    return version, [str(s) for s in scopes]


def keepalives(takeover: float) -> tuple[int, int, int]:
    """(idle, interval, count) in seconds: a silent peer is given up on after
    idle + interval × count, about two thirds of `takeover` (never more than it)."""
    idle = max(1, int(takeover / 3))
    interval = max(1, int(takeover / 9))
    count = max(1, min(3, int((takeover - idle) / interval)))  # short bounds: fewer probes
    return idle, interval, count


def lead_kwargs(takeover: float) -> dict[str, Any]:
    """Connection parameters of a shared store's writer (and of the listener): TCP
    keepalives on the client and, as session settings, on the server, and a bound on
    unacknowledged data (`tcp_user_timeout`), all within `takeover`."""
    idle, interval, count = keepalives(takeover)
    user_timeout = int((idle + interval * count) * 1000)
    server = (
        f"-c tcp_keepalives_idle={idle} -c tcp_keepalives_interval={interval} "
        f"-c tcp_keepalives_count={count} -c tcp_user_timeout={user_timeout}"
    )
    return {
        "keepalives": 1,
        "keepalives_idle": idle,
        "keepalives_interval": interval,
        "keepalives_count": count,
        "tcp_user_timeout": user_timeout,
        "options": server,
    }
