"""The push pool: connections to the application's database for pushes, with the push
limits as session settings (`push_timeouts`), connect and keepalive timeouts, checked on
checkout, reporting to the breaker (`push_pool`).
"""

from __future__ import annotations

import psycopg
from psycopg_pool import AsyncConnectionPool

from sidecar.config.model import Config
from sidecar.push.breaker import Breaker, check_on_checkout, reporting_connection
from sidecar.values import NETWORK_KWARGS, configure_connection, session_options

POOL_RECONNECT = 5.0  # the pool's attempts to replace a connection give up after this


async def _configure(conn: psycopg.AsyncConnection) -> None:
    configure_connection(conn)


def _ms(seconds: float) -> str:
    return str(max(1, round(seconds * 1000)))


def push_timeouts(config: Config) -> dict[str, str]:
    """The push limits as the session settings of the push pool's connections."""
    limits = config.limits
    return {
        "lock_timeout": _ms(limits.push_lock_timeout),
        "statement_timeout": _ms(limits.push_statement_timeout),
    }


def push_pool(config: Config, breaker: Breaker, timeouts: dict[str, str]) -> AsyncConnectionPool:
    """The push pool: sessions with the push limits as `lock_timeout` and
    `statement_timeout` (`timeouts`, read at each connect: a reload updates it and drains
    the pool), connect and keepalive timeouts, each connection checked on checkout (a
    terminated one is replaced, not handed to a push), a failure to connect opening the
    breaker, and reconnection attempts that start over soon after an outage."""

    def kwargs() -> dict[str, object]:
        options = session_options(**timeouts)
        return {
            "options": options,
            "application_name": "sidecar-push",
            # BEGIN and COMMIT are sent by the push (pipelined with its statements)
            "autocommit": True,
            **NETWORK_KWARGS,
        }

    return AsyncConnectionPool(
        config.database.url,
        min_size=1,
        max_size=config.database.pool_size,
        kwargs=kwargs,
        connection_class=reporting_connection(breaker),
        configure=_configure,
        check=check_on_checkout,
        reconnect_timeout=POOL_RECONNECT,
        open=False,
        name="sidecar-push",
    )
