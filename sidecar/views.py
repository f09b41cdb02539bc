"""Pulls under membership rules: a caller's scopes change with captured rows.

A caller's scopes at version x, S(x), come from the grants the store held at x. The
invariant: when `has_more` is false, a client's folded state at cursor C equals what the
rules admit at C. A cursor says what the client holds (see `changes.Cursor`):

- `(w, g)`: every change up to version w of the scopes S(g);
- `(w, g, t, m)`: the same, while it moves to S(t): the rows of the scopes it gains are
  being sent, those up to version m already (a move-in spans pages).

A pull at store version V over `(w, g)`:
1. S(g) = S(V) (no grant the caller depends on began or ended in (g, V], or g = V):
   the changes of S(V) after w, as a pull without membership rules;
2. otherwise a move starts to t = V: **move-out**, a delete for each row the client may
   hold of a scope it lost (its rows now, and those that left it after w) unless the
   row is visible through S(V) now; all in this page, whatever `limit` says (deletes are
   small), so that the next page no longer needs S(g). Then
3. **move-in** (also how `(w, g, t, m)` goes on): the live rows of the gained scopes
   S(t) − S(g) with versions in (m, w], in version order, page by page — rows changed
   after w come with step 4;
4. then, in the same page if it has room, the changes of S(t) after w, and the cursor
   is `(w', t)`: from there on, step 1 or 2 again.

No HTTP and no SQL here: `read_view` runs over a `StoreView` (one consistent snapshot).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import orjson

from sidecar.changes import Cursor
from sidecar.store.base import PageData, StoreView

__all__ = [
    "Known",
    "ScopesOf",
    "ViewPage",
    "next_rules",
    "read_view",
    "rule_at",
    "rules_changed",
]

# The caller's scopes at a version, given how to read grants at it, adding
# `<lookup>|<scope>` keys of the grants they depend on to the set given (if any).
ScopesOf = Callable[[Callable[[str, Sequence[str]], list[str]], set[str] | None, int], list[str]]


@dataclass(frozen=True, slots=True)
class Known:
    """A caller's scopes S(x) and the `<lookup>|<scope>` keys of the grants they come
    from, read at a version x whose store had `grants_version`: they are S(y) for every
    y ≥ `grants_version` up to the first version at which a grant begins or ends."""

    scopes: tuple[str, ...]
    keys: tuple[str, ...]
    grants_version: int

    @property
    def watch(self) -> tuple[str, ...]:
        """What a live wait watches: the scopes and the grants they come from."""
        return (*self.scopes, *self.keys)


@dataclass(frozen=True, slots=True)
class ViewPage:
    lines: list[bytes]
    cursor: Cursor
    has_more: bool
    version: int  # the snapshot's
    known: Known  # the caller's scopes in this snapshot

    @property
    def watch(self) -> tuple[str, ...]:
        return self.known.watch


class _Reader:
    def __init__(self, view: StoreView, scopes_of: ScopesOf) -> None:
        self.view = view
        self.scopes_of = scopes_of
        self.now: list[str] | None = None  # S(view.version), once read

    def scopes(self, at: int, watch: set[str] | None = None) -> list[str]:
        if self.now is not None and self.view.grants_version <= at <= self.view.version:
            return self.now  # no grant began or ended since (nor a rule): the same scopes
        return self.scopes_of(lambda lookup, sc: self.view.grants(lookup, sc, at), watch, at)


def read_view(
    view: StoreView,
    scopes_of: ScopesOf,
    epoch: str,
    cursor: Cursor | None,
    limit: int,
    max_bytes: int | None,
    known: Known | None = None,
    rules_changed: Callable[[int, int], bool] = lambda after, upto: False,
) -> ViewPage:
    """One page of changes for a caller whose scopes `scopes_of` computes (see the
    module docstring), or `known` gives while the store's grants version is its;
    `rules_changed(a, b)`: whether a read rule changed in (a, b] (a rule change moves
    the grants version too).
    `cursor` is already checked against the store's epoch and purge."""
    reader = _Reader(view, scopes_of)
    version = view.version
    if known is None or known.grants_version != view.grants_version:
        found: set[str] = set()
        known = Known(
            tuple(reader.scopes(version, found)), tuple(sorted(found)), view.grants_version
        )
    now = reader.now = list(known.scopes)
    keys = known.keys
    if cursor is None:
        page = view.changes(now, 0, limit, max_bytes)
        # the client holds S(version) up to `last`: that is plain `last` when the grants
        # did not change in between (one spelling, which adapters can carry as a number)
        last = page.last_version
        steady = page.has_more and _same_scopes(view, keys, rules_changed, last, version)
        return _plain(page, epoch, version, last if steady else version, known)
    w, g = cursor.version, cursor.scopes_version
    if cursor.target is not None:
        target = cursor.target
        gained = _minus(reader.scopes(target), reader.scopes(g))
        lines: list[bytes] = []
        moved = cursor.moved
    elif g == version or _same_scopes(view, keys, rules_changed, g, version):
        # S(x) = S(version) for every x in [g, version]: a cut page's cursor is plain
        # `last` when last >= g
        page = view.changes(now, w, limit, max_bytes)
        steady = page.has_more and page.last_version >= g
        return _plain(page, epoch, version, page.last_version if steady else version, known)
    else:
        before = reader.scopes(g)
        target, moved = version, 0
        gained = _minus(now, before)
        lines = _move_out(view, _minus(before, now), set(now), w)
    return _move_in(reader, epoch, cursor, target, moved, gained, lines, limit, max_bytes, known)


def _same_scopes(
    view: StoreView,
    keys: Sequence[str],
    rules_changed: Callable[[int, int], bool],
    after: int,
    upto: int,
) -> bool:
    """Whether the caller's scopes are the same at every version in [after, upto]."""
    if after >= view.grants_version:  # no grant began or ended (nor a rule changed) since
        return True
    return not rules_changed(after, upto) and not view.grants_changed(keys, after, upto)


def _plain(page: PageData, epoch: str, version: int, scopes_at: int, known: Known) -> ViewPage:
    last = page.last_version if page.has_more else max(page.last_version, version)
    return ViewPage(page.lines, Cursor(epoch, last, scopes_at), page.has_more, version, known)


def _minus(a: Sequence[str], b: Sequence[str]) -> list[str]:
    drop = set(b)
    return [s for s in a if s not in drop]


def _move_out(view: StoreView, lost: Sequence[str], now: set[str], after: int) -> list[bytes]:
    """A delete for each row the client may hold of the `lost` scopes and cannot see
    through the scopes it has `now`."""
    lines: list[bytes] = []
    seen: set[tuple[str, str]] = set()
    for scope in lost:
        for version, collection, ident, key, rev, scopes in view.held(scope, after):
            if (collection, ident) in seen:
                continue
            seen.add((collection, ident))
            if scopes is not None and not now.isdisjoint(orjson.loads(scopes)):
                continue  # still visible through another scope
            lines.append(view.delete_line(version, collection, key, rev))
    return lines


def _move_in(
    reader: _Reader,
    epoch: str,
    cursor: Cursor,
    target: int,
    moved: int,
    gained: Sequence[str],
    lines: list[bytes],
    limit: int,
    max_bytes: int | None,
    known: Known,
) -> ViewPage:
    view, w, g = reader.view, cursor.version, cursor.scopes_version
    version = view.version
    used = sum(len(line) + 1 for line in lines)
    room, budget = limit - len(lines), None if max_bytes is None else max_bytes - used
    if gained and w > moved:
        if room <= 0 or (budget is not None and budget <= 0):
            return ViewPage(lines, Cursor(epoch, w, g, target, moved), True, version, known)
        page = view.live(gained, moved, w, room, budget)
        lines = lines + page.lines
        if page.has_more:
            return ViewPage(
                lines, Cursor(epoch, w, g, target, page.last_version), True, version, known
            )
        used += sum(len(line) + 1 for line in page.lines)
        room, budget = limit - len(lines), None if max_bytes is None else max_bytes - used
    # the move is done: the client holds S(target) up to w; then the changes after w
    if room <= 0 or (budget is not None and budget <= 0):
        return ViewPage(lines, Cursor(epoch, w, target), True, version, known)
    page = view.changes(reader.scopes(target), w, room, budget if lines else max_bytes)
    rest = _plain(page, epoch, version, target, known)
    return ViewPage(lines + rest.lines, rest.cursor, rest.has_more, version, known)


# -- read rules' history (a rule changed by a reload: see `StoreState.rules`) ---------------

History = dict[str, list[list[Any]]]  # collection → [[since version, rule text], ...]
KEEP = 16  # rule changes remembered per collection


def next_rules(stored: str | None, current: Mapping[str, str], since: int) -> str:
    """The history once the collections' read rules are `current` (name → text), the
    changed ones from version `since` on (a collection without history: from 0)."""
    history: History = orjson.loads(stored) if stored else {}
    out: History = {}
    for name, text in current.items():
        entries = list(history.get(name, []))
        if not entries:
            entries = [[0, text]]
        elif entries[-1][1] != text:
            entries.append([since, text])
        out[name] = entries[-KEEP:]
    return orjson.dumps(out).decode()


def rule_at(history: History, name: str, version: int) -> str | None:
    """The text of the collection's read rule at `version` (None: not recorded; the oldest
    recorded one for a version before it: the history keeps the last `KEEP` changes)."""
    entries = history.get(name, [])
    found = entries[0][1] if entries else None
    for since, text in entries:
        if since <= version:
            found = text
    return found


def rules_changed(history: History, names: Sequence[str], after: int, upto: int) -> bool:
    """Whether a read rule of these collections changed in (after, upto]."""
    return any(after < since <= upto for name in names for since, _ in history.get(name, []))
