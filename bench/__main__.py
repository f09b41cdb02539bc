"""`python -m bench`: every benchmark, one after the other, each printing its ratio."""

from __future__ import annotations

import asyncio

from bench import (
    capture,
    live,
    membership,
    ndjson,
    push,
    push_during_bulk,
    reconcile,
    replicas,
    snapshot,
)


def main() -> None:
    asyncio.run(snapshot.run(500_000))
    asyncio.run(capture.run(500_000))
    asyncio.run(capture.run(500_000, store="postgresql"))
    asyncio.run(reconcile.run(1_000_000))
    asyncio.run(push.run(10_000, 100))
    asyncio.run(push_during_bulk.run(200_000, 300))
    asyncio.run(ndjson.run(500_000))
    asyncio.run(live.run(40, 10_000))
    asyncio.run(membership.run())
    asyncio.run(replicas.run(40, 2_000, 10.0))


if __name__ == "__main__":
    main()
