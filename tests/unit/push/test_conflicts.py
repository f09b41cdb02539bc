"""Conflict strategies (`sidecar.push.conflicts`): what a stale update writes, or why it
loses, for every strategy the config accepts; and the registry has exactly those."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import pytest

from sidecar.config.model import CONFLICT_KINDS, ConflictStrategy
from sidecar.mutations import Mutation
from sidecar.push import conflicts
from sidecar.push.conflicts import Lost, newer, overwrites, resolve, strategy
from sidecar.push.pusher import Pusher

SERVER = {"id": 1, "title": "server", "done": True, "at": "2024-01-02T00:00:00Z", "n": 5}


def stale(base: dict[str, Any] | None = None) -> Mutation:
    return Mutation("m1", "todos", "update", {"id": 1}, {}, base_rev="old", base=base)


def test_every_configurable_strategy_has_one_function() -> None:
    assert set(conflicts.STRATEGIES) == set(CONFLICT_KINDS)
    for kind, fn in conflicts.STRATEGIES.items():
        assert fn.__name__ == kind
        assert strategy(ConflictStrategy(kind)) is fn  # type: ignore[arg-type]


def test_an_unknown_strategy_is_an_error() -> None:
    with pytest.raises(ValueError, match="no conflict strategy 'newest'"):
        strategy(ConflictStrategy("newest"))  # type: ignore[arg-type]


def test_the_pusher_refuses_routes_with_an_unknown_strategy() -> None:
    """Checked when the pusher is given its routes (at start and on a reload), not at
    the first stale push."""

    def routes(kind: str) -> dict[str, Any]:
        conflict = ConflictStrategy(kind)  # type: ignore[arg-type]
        return {"c": SimpleNamespace(config=SimpleNamespace(conflict=conflict))}

    pusher = Pusher(routes("merge"), None, None, None, pending=None)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="no conflict strategy 'newest'"):
        pusher.routes = routes("newest")
    assert pusher.routes["c"].config.conflict.kind == "merge"  # the old routes stay
    with pytest.raises(ValueError, match="no conflict strategy"):
        Pusher(routes("newest"), None, None, None, pending=None)  # type: ignore[arg-type]


@pytest.mark.parametrize("kind", ["reject", "server_wins"])
def test_reject_and_server_wins_keep_the_server_row(kind: str) -> None:
    config = ConflictStrategy(kind)  # type: ignore[arg-type]
    data = {"title": "mine"}
    assert resolve(config, stale(), SERVER, data) == Lost("the row changed since base_rev")
    assert resolve(config, stale({"title": "server"}), SERVER, data) == Lost(
        "the row changed since base_rev"
    )
    assert not overwrites(config)


def test_client_wins_writes_the_clients_data() -> None:
    data = {"title": "mine", "done": False}
    assert resolve(ConflictStrategy("client_wins"), stale(), SERVER, data) is data
    assert overwrites(ConflictStrategy("client_wins"))


def test_merge_needs_a_base() -> None:
    got = resolve(ConflictStrategy("merge"), stale(None), SERVER, {"title": "mine"})
    assert got == Lost("the row changed; send `base` to merge")
    assert not overwrites(ConflictStrategy("merge"))


@pytest.mark.parametrize(
    ("base", "data", "expected"),
    [
        # the server did not change the field since base: the client's value is written
        ({"title": "server"}, {"title": "mine"}, {"title": "mine"}),
        # both made the same change
        ({"title": "old"}, {"title": "server"}, {"title": "server"}),
        # the server changed another field: the client's fields are merged over it
        ({"title": "server", "done": True}, {"title": "mine"}, {"title": "mine"}),
        # a field the server row does not have counts as unchanged there
        ({}, {"extra": 1}, {"extra": 1}),
        # nothing to write
        ({}, {}, {}),
        # both changed the same field differently: the server row stays
        ({"title": "old"}, {"title": "mine"}, Lost("field title changed on both sides")),
        # a field absent from base that the server holds otherwise
        ({}, {"title": "mine"}, Lost("field title changed on both sides")),
        # the first clash decides
        (
            {"title": "server", "done": False},
            {"title": "mine", "done": False},
            Lost("field done changed on both sides"),
        ),
    ],
)
def test_merge_is_three_way_per_field(base: dict, data: dict, expected: Any) -> None:
    assert resolve(ConflictStrategy("merge"), stale(base), SERVER, data) == expected


@pytest.mark.parametrize(
    ("column", "ours", "expected_wins"),
    [
        ("at", "2024-01-03T00:00:00Z", True),  # later timestamp
        ("at", "2024-01-02T00:00:00+00:00", False),  # the same instant: not newer
        ("at", "2024-01-02T01:00:00+02:00", False),  # earlier, in another zone
        ("at", "2024-01-01T23:00:00-02:00", True),  # later, in another zone
        ("at", None, False),  # the client sent no value: the server row stays
        ("n", 6, True),
        ("n", 5, False),
        ("n", 4.5, False),
        ("n", "7", False),  # a string against a number: not comparable, not newer
        ("missing", 1, True),  # the server row has no value: any client value wins
        ("missing", None, False),
    ],
)
def test_latest_wins(column: str, ours: Any, expected_wins: bool) -> None:
    config = ConflictStrategy("latest_wins", column)
    data = {"title": "mine", column: ours}
    got = resolve(config, stale(), SERVER, data)
    if expected_wins:
        assert got is data
    else:
        assert got == Lost(f"the server row is newer ({column})")
    assert not overwrites(config)


def test_latest_wins_with_a_null_on_the_server() -> None:
    config = ConflictStrategy("latest_wins", "at")
    data = {"at": "2020-01-01T00:00:00Z"}
    assert resolve(config, stale(), {**SERVER, "at": None}, data) is data


def test_newer() -> None:
    assert newer("2024-01-02", "2024-01-01")
    assert newer("2024-01-01T00:00:01Z", "2024-01-01T00:00:00Z")
    assert not newer("2024-01-01T00:00:00Z", "2024-01-01T00:00:01Z")
    assert newer("b", "a")  # not timestamps: compared as strings
    assert newer(2, 1.5) and not newer(1, 1)
    assert not newer("2024-01-01T00:00:00Z", "2024-01-01")  # aware vs naive: not comparable
    assert not newer([1], 1)
