"""views.py without a database: the move logic over an in-memory StoreView, and the read
rules' history."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

import orjson

from sidecar.changes import Cursor
from sidecar.store.base import PageData
from sidecar.store.lines import ChangeLines, merged
from sidecar.views import next_rules, read_view, rule_at, rules_changed

EPOCH = "0000abcd"


class MemoryView:
    """A store snapshot: rows (key → (version, scopes)), tombstones (scope, key, version)
    and grants (scope → [(value, added, removed)])."""

    def __init__(self, version: int) -> None:
        self.version = version
        self.grants_version = 0
        self.rows: dict[int, tuple[int, tuple[str, ...]]] = {}
        self.tombstones: list[tuple[str, int, int]] = []
        self.granted: dict[str, list[tuple[str, int, int | None]]] = {}
        self.lines = ChangeLines()

    def grants(self, lookup: str, scopes: Sequence[str], at: int) -> list[str]:
        return sorted(
            {
                v
                for s in scopes
                for v, added, removed in self.granted.get(s, [])
                if added <= at and (removed is None or removed > at)
            }
        )

    def grants_changed(self, keys: Sequence[str], after: int, upto: int) -> bool:
        return any(
            after < added <= upto or (removed is not None and after < removed <= upto)
            for key in keys
            for _, added, removed in self.granted.get(key.split("|", 1)[1], [])
        )

    def _entries(self, scope: str, after: int, upto: int, live: bool) -> list[tuple[Any, ...]]:
        out = [
            (v, 0, "c", orjson.dumps({"id": k}), "r", orjson.dumps({"id": k}))
            for k, (v, scopes) in self.rows.items()
            if scope in scopes and after < v <= upto
        ]
        if not live:
            out += [
                (v, 1, "c", orjson.dumps({"id": k}), "r", b"")
                for s, k, v in self.tombstones
                if s == scope and after < v <= upto
            ]
        return sorted(out, key=lambda r: (r[0], r[1]))

    def changes(
        self, scopes: Sequence[str], after: int, limit: int, max_bytes: int | None
    ) -> PageData:
        rows = merged(self._entries(s, after, 1 << 62, after == 0) for s in scopes)
        return PageData(*self.lines.page(rows, after, limit, max_bytes))

    def live(
        self, scopes: Sequence[str], after: int, upto: int, limit: int, max_bytes: int | None
    ) -> PageData:
        rows = merged(self._entries(s, after, upto, True) for s in scopes)
        return PageData(*self.lines.page(rows, after, limit, max_bytes))

    def held(self, scope: str, after: int) -> Iterable[tuple[int, str, str, bytes, str, Any]]:
        for k, (v, scopes) in self.rows.items():
            if scope in scopes:
                yield v, "c", str(k), orjson.dumps({"id": k}), "r", orjson.dumps(list(scopes))
        for s, k, v in self.tombstones:
            if s == scope and v > after:
                now = self.rows.get(k)
                yield (
                    v,
                    "c",
                    str(k),
                    orjson.dumps({"id": k}),
                    "r",
                    (None if now is None else orjson.dumps(list(now[1]))),
                )

    def delete_line(self, version: int, collection: str, key: bytes, rev: str) -> bytes:
        return self.lines.line(version, 1, collection, key, rev, b"")


def scopes_of(grants: Any, watch: set[str] | None, at: int) -> list[str]:
    """A caller whose scopes are the projects granted to `alice` (one lookup `L`)."""
    if watch is not None:
        watch.add("L|alice")
    return [f"p{v}" for v in grants("L", ["alice"])]


def fold(state: dict[int, bool], lines: list[bytes]) -> dict[int, bool]:
    for line in lines:
        change = orjson.loads(line)
        if change["op"] == "delete":
            state.pop(change["key"]["id"], None)
        else:
            state[change["key"]["id"]] = True
    return state


def pull_all(view: MemoryView, cursor: Cursor | None, limit: int) -> tuple[dict[int, bool], Cursor]:
    state: dict[int, bool] = {}
    while True:
        page = read_view(view, scopes_of, EPOCH, cursor, limit, None)
        fold(state, page.lines)
        cursor = page.cursor
        if not page.has_more:
            return state, cursor


def test_move_in_pages_through_old_rows_and_move_out_spares_rows_visible_elsewhere() -> None:
    view = MemoryView(version=10)
    view.rows = {
        1: (1, ("p1",)),
        2: (2, ("p2",)),
        3: (3, ("p1", "p3")),  # visible through p3 too
        4: (10, ("p2",)),  # last changed exactly at the cursor's version
        5: (5, ("p3",)),
    }
    view.granted = {"alice": [("1", 0, None), ("3", 0, None)]}
    state, cursor = pull_all(view, None, limit=1)
    assert state == {1: True, 3: True, 5: True}
    assert cursor.version == 10
    # alice gains p2 at version 11 and loses p1 at 12: rows 2 and 4 (old) move in,
    # row 1 moves out, row 3 stays (visible through p3, which she keeps: not sent again)
    view.version = 12
    view.granted = {"alice": [("1", 0, 12), ("2", 11, None), ("3", 0, None)]}
    view.grants_version = 12
    held = dict(state)
    sent: list[bytes] = []
    while True:
        page = read_view(view, scopes_of, EPOCH, cursor, 1, None)
        sent.extend(page.lines)
        fold(held, page.lines)
        cursor = page.cursor
        if not page.has_more:
            break
    assert held == {2: True, 3: True, 4: True, 5: True}
    assert sorted(orjson.loads(line)["key"]["id"] for line in sent) == [1, 2, 4]
    assert str(cursor) == f"{EPOCH}-12"


def test_the_rules_history_names_the_rule_in_force_at_a_version() -> None:
    first = next_rules(None, {"c": "a = :sub"}, since=5)
    history = orjson.loads(first)
    assert history == {"c": [[0, "a = :sub"]]}
    second = orjson.loads(next_rules(first, {"c": "a = :sub OR b"}, since=9))
    assert rule_at(second, "c", 8) == "a = :sub"
    assert rule_at(second, "c", 9) == "a = :sub OR b"
    assert rules_changed(second, ["c"], 8, 9) and not rules_changed(second, ["c"], 9, 20)
    assert next_rules(orjson.dumps(second).decode(), {"c": "a = :sub OR b"}, 30) == (
        orjson.dumps(second).decode()
    )  # unchanged: no new entry
