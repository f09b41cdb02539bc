"""Adapter: the ElectricSQL Shape API, `GET /electric/v1/shape`, over the core pull.

Speaks the HTTP protocol of `@electric-sql/client` 1.x (`ShapeStream`, `Shape`): a shape is
one collection (`table=`), optionally narrowed by `columns=` and `where=`; the client walks
a log by `offset` within a `handle`, then long-polls (`live=true`, or Server-Sent Events
with `live_sse=true`). See docs/adapters/electric.md for the user side.

Mapping onto the core (`Puller.pull`, cursors `<epoch>-<version>`):

- **handle** `<epoch>-<shape>-<generation>`: the store epoch, a hash of what decides the
  shape's rows (collection, columns, where and its params, replica, schema version, the
  caller's read scopes and the claims the `where` uses) and the time it was minted (ms).
  A handle whose epoch or shape hash is not current gets `409` + `must-refetch` with a new
  handle (store rebuilt, tombstones past retention, claims or schema changed): handles are
  never reused, as the client requires.
- **offset** `-1` = the initial sync (no cursor); `<version>_0` = after core version
  `<version>` of the handle's epoch. Offsets are decimal integers; the `_0` is Electric's op
  index, always 0 because each change has its own version. Under a membership rule the rest
  of the core cursor follows (`<version>_0_<scopes_at>[_<target>_<moved>]`) when it names
  more than a version; SSE up-to-dates are sent only at plain positions (`protocol`).
- **messages**: the first response of an initial sync (`offset=-1`) sends each row as
  `insert` and leaves out tombstones; later responses send an upsert as `update` carrying
  the whole row (the core does not tell inserts from updates) and a delete as `delete`.
  With `where`, an upserted row the expression does not admit becomes a `delete`, so a
  row moving out of the shape leaves the client.
- **values** are PostgreSQL's text form, typed by `electric-schema` for the client's
  parser: numbers as decimal text, booleans `t`/`f`, json as JSON text, arrays as array
  literals, timestamps as PostgreSQL prints them; NULL stays `null`.
- **txids**: a row the caller last wrote through push carries that push's transaction id
  (`headers.txids`, for the client's `awaitTxId`); other changes carry none (another
  subject's pushes are never shown).

Modules: `shape` (what a request asks for), `where` (the client's filter), `protocol`
(handles, offsets, the live cursor), `values` (PostgreSQL text and `electric-schema`),
`messages` (change lines → messages), `handlers` (the HTTP endpoint).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from adapters.electric.handlers import cors, preflight, shape
from adapters.electric.protocol import PATH

if TYPE_CHECKING:
    from aiohttp import web

    from sidecar.service import Service

__all__ = ["install"]


def install(app: web.Application, service: Service) -> None:
    """Add `GET /electric/v1/shape`, its CORS preflight and CORS headers on its answers."""
    app.router.add_get(PATH, shape)
    app.router.add_route("OPTIONS", PATH, preflight)
    app.on_response_prepare.append(cors)
