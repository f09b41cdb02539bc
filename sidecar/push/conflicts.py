"""Conflict strategies: what a push does with an update whose `base_rev` is stale.

One function per strategy, all with the same signature: given the collection's
`conflict` config, the mutation, the row as the server has it now (exposed columns, JSON
values) and the data the client writes, return the data to write, or `Lost` (the client
gets a `conflict` with the server's row). `STRATEGIES` maps each name the config accepts
(`config.model.CONFLICT_KINDS`) to its function; **a new strategy is one function here
and one entry in `STRATEGIES`** (and its name in the config's schema). A name without a
function is refused when the pusher is given its routes (`strategy`), not at the first
stale push.

Stale deletes, and inserts over a row that exists, have no data to weigh: they go
through only under `client_wins` (`overwrites`), every other strategy reports a conflict.
Pure: no database, no I/O.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sidecar.config.model import ConflictStrategy
from sidecar.mutations import Mutation


@dataclass(frozen=True, slots=True)
class Lost:
    """The server's row stays: the client is told why (`detail`) and gets the row."""

    detail: str


Resolution = dict[str, Any] | Lost
Strategy = Callable[[ConflictStrategy, Mutation, Mapping[str, Any], dict[str, Any]], Resolution]

_STALE = "the row changed since base_rev"


def reject(
    config: ConflictStrategy, m: Mutation, server: Mapping[str, Any], data: dict[str, Any]
) -> Resolution:
    """The default: any change since `base_rev` is a conflict."""
    return Lost(_STALE)


def server_wins(
    config: ConflictStrategy, m: Mutation, server: Mapping[str, Any], data: dict[str, Any]
) -> Resolution:
    """The server's row stays (the client gets it in the conflict, as with `reject`)."""
    return Lost(_STALE)


def client_wins(
    config: ConflictStrategy, m: Mutation, server: Mapping[str, Any], data: dict[str, Any]
) -> Resolution:
    """The client's data is written whatever changed since `base_rev`."""
    return data


def merge(
    config: ConflictStrategy, m: Mutation, server: Mapping[str, Any], data: dict[str, Any]
) -> Resolution:
    """Three-way, per field, against the mutation's `base` (the row as the client last
    saw it): a field is written if the server did not change it since, or changed it to
    the same value; a field changed differently on both sides is a conflict."""
    if m.base is None:
        return Lost("the row changed; send `base` to merge")
    merged = {}
    for c, v in data.items():
        theirs = server.get(c, v)
        if theirs == v or (c in m.base and m.base[c] == theirs):
            merged[c] = v  # unchanged on the server, or the same change on both
        else:
            return Lost(f"field {c} changed on both sides")
    return merged


def latest_wins(
    config: ConflictStrategy, m: Mutation, server: Mapping[str, Any], data: dict[str, Any]
) -> Resolution:
    """The greater value of `config.column` wins (ISO timestamps or numbers); a client
    row without one loses, a server row without one loses to any."""
    column = config.column
    assert column is not None
    theirs, ours = server.get(column), data.get(column)
    if ours is not None and (theirs is None or newer(ours, theirs)):
        return data
    return Lost(f"the server row is newer ({column})")


STRATEGIES: dict[str, Strategy] = {
    "reject": reject,
    "merge": merge,
    "client_wins": client_wins,
    "server_wins": server_wins,
    "latest_wins": latest_wins,
}


def strategy(config: ConflictStrategy) -> Strategy:
    """The function of a configured strategy; ValueError for a name without one."""
    try:
        return STRATEGIES[config.kind]
    except KeyError:
        known = ", ".join(STRATEGIES)
        raise ValueError(f"no conflict strategy {config.kind!r} (known: {known})") from None


def resolve(
    config: ConflictStrategy, m: Mutation, server: Mapping[str, Any], data: dict[str, Any]
) -> Resolution:
    """Data to write although the row changed since `base_rev`, or `Lost`."""
    return STRATEGIES[config.kind](config, m, server, data)


def overwrites(config: ConflictStrategy) -> bool:
    """Whether a stale delete, or an insert over an existing row, goes through anyway."""
    return config.kind == "client_wins"


def newer(ours: Any, theirs: Any) -> bool:
    """Client value strictly newer than the server's (ISO timestamps or numbers)."""

    def parse(v: Any) -> Any:
        if isinstance(v, str):
            try:
                return datetime.fromisoformat(v.replace("Z", "+00:00"))
            except ValueError:
                return v
        return v

    a, b = parse(ours), parse(theirs)
    try:
        return bool(a > b)
    except TypeError:
        return False
