"""A batch reduced to its net effect (`sidecar.store.netting`), without a store: the stored
rows are given as a store looks them up, and the result read off the `Netting`."""

from __future__ import annotations

from typing import Any

from sidecar.changes import Image
from sidecar.store.base import RowChange
from sidecar.store.netting import Netting, Stored


def image(n: int, title: str, *scopes: str, hidden: bytes = b"{}") -> Image:
    return Image(
        f'{{"id":{n}}}', f'{{"id":{n}}}'.encode(), f'{{"t":"{title}"}}'.encode(), title, scopes,
        hidden,
    )  # fmt: skip


def stored(n: int, title: str, version: int, *scopes: str, row: bool = False) -> Stored:
    """A stored row as the lookup returns it: [ident, rowid, version, rev, scopes, key,
    hidden(, row)]; the rowid is 100 + n, the rev the title."""
    found: list[Any] = [f'{{"id":{n}}}', 100 + n, version, title, scopes, f'{{"id":{n}}}', "{}"]
    if row:
        found.append(f'{{"t":"{title}"}}')
    return found


def netting(*rows: Stored, version: int = 10, repeated: set[str] | None = None) -> Netting:
    return Netting(version, {"c": {r[0]: r for r in rows}}, {"c": repeated} if repeated else {})


def test_a_stored_row_changed_once_in_its_scope_is_rewritten_in_place() -> None:
    n = netting(stored(1, "a", 4, "s"))
    n.replay(RowChange("c", None, image(1, "b", "s")))
    assert n.rewrites == [(101, 11, "b", '{"id":1}', '{"t":"b"}', "{}")]
    assert n.renumbers == [] and n.states == {}
    assert (n.version, n.touched) == (11, {"s"})


def test_a_row_in_several_scopes_has_its_entries_renumbered() -> None:
    n = netting(stored(1, "a", 4, "s", "t"))
    n.replay(RowChange("c", None, image(1, "b", "s", "t")))
    assert n.rewrites == [(101, 11, "b", '{"id":1}', '{"t":"b"}', "{}")]
    assert n.renumbers == [("s", 4, 11), ("t", 4, 11)]
    assert n.touched == {"s", "t"}


def test_an_unchanged_image_makes_no_version() -> None:
    n = netting(stored(1, "a", 4, "s"))
    n.replay(RowChange("c", None, image(1, "a", "s")))
    assert n.version == 10 and n.touched == set() and n.rewrites == []
    (st,) = n.states.values()
    assert not st.changed


def test_a_change_of_hidden_columns_only_is_kept_without_a_version() -> None:
    n = netting(stored(1, "a", 4, "s"))
    n.replay(RowChange("c", None, image(1, "a", "s", hidden=b'{"h":1}')))
    (st,) = n.states.values()
    assert st.changed and st.hidden == b'{"h":1}' and st.version == 4
    assert n.version == 10 and n.touched == set()


def test_a_new_row_gets_the_next_version_in_each_of_its_scopes() -> None:
    n = netting()
    n.replay(RowChange("c", None, image(1, "a", "s", "t")))
    st = n.states[("c", '{"id":1}')]
    assert st.rowid is None and st.exists and st.changed and st.version == 11
    assert st.entries == {"s": (11, 0, None, None), "t": (11, 0, None, None)}
    assert n.touched == {"s", "t"} and n.rewrites == []


def test_a_delete_leaves_a_tombstone_in_every_scope() -> None:
    n = netting(stored(1, "a", 4, "s", "t"))
    n.replay(RowChange("c", '{"id":1}', None))
    st = n.states[("c", '{"id":1}')]
    assert not st.exists and st.changed and st.scopes == () and st.rowid == 101
    tomb = (11, 1, b'{"id":1}', "a")  # the key and rev the row had
    assert st.entries == {"s": tomb, "t": tomb}
    assert n.touched == {"s", "t"}


def test_deleting_an_unknown_row_does_nothing() -> None:
    n = netting()
    n.replay(RowChange("c", '{"id":9}', None))
    assert n.version == 10 and n.touched == set()
    assert not n.states[("c", '{"id":9}')].changed


def test_leaving_a_scope_leaves_a_tombstone_there() -> None:
    n = netting(stored(1, "a", 4, "s"))
    n.replay(RowChange("c", None, image(1, "a", "t")))  # same rev, other scope
    st = n.states[("c", '{"id":1}')]
    assert st.entries == {"s": (11, 1, b'{"id":1}', "a"), "t": (11, 0, None, None)}
    assert st.scopes == ("t",) and st.stored_scopes == ("s",) and st.stored_version == 4
    assert n.touched == {"s", "t"}


def test_a_row_named_twice_is_replayed_in_order() -> None:
    n = netting(stored(1, "a", 4, "s"), repeated={'{"id":1}'})
    n.replay(RowChange("c", None, image(1, "b", "s")))
    n.replay(RowChange("c", None, image(1, "c", "s", "t")))
    assert n.rewrites == []  # not the simple case: the row is named twice
    st = n.states[("c", '{"id":1}')]
    assert (st.version, st.rev, st.scopes) == (12, "c", ("s", "t"))
    assert st.entries == {"s": (12, 0, None, None), "t": (12, 0, None, None)}
    assert n.version == 12


def test_a_row_deleted_then_inserted_again() -> None:
    n = netting(stored(1, "a", 4, "s"), repeated={'{"id":1}'})
    n.replay(RowChange("c", '{"id":1}', None))
    n.replay(RowChange("c", None, image(1, "b", "t")))
    st = n.states[("c", '{"id":1}')]
    assert st.exists and st.version == 12 and st.rowid == 101
    assert st.entries == {"s": (11, 1, b'{"id":1}', "a"), "t": (12, 0, None, None)}


def test_a_key_change_removes_the_old_identity() -> None:
    n = netting(stored(1, "a", 4, "s"))
    n.replay(RowChange("c", '{"id":1}', image(2, "a", "s")))
    old, new = n.states[("c", '{"id":1}')], n.states[("c", '{"id":2}')]
    assert not old.exists and old.entries == {"s": (11, 1, b'{"id":1}', "a")}
    assert new.exists and new.rowid is None and new.entries == {"s": (12, 0, None, None)}


class Pending:
    """A row image with a value the stream did not resend (TOAST)."""

    def __init__(self, ident: str) -> None:
        self.ident = ident
        self.given: list[tuple[bytes | None, bytes | None]] = []

    def complete(self, row: bytes | None, hidden: bytes | None) -> Image:
        self.given.append((row, hidden))
        return image(1, "filled", "s")


def test_a_pending_image_is_completed_from_the_stored_row() -> None:
    n = netting(stored(1, "a", 4, "s", row=True))
    pending = Pending('{"id":1}')
    n.replay(RowChange("c", None, pending))
    assert pending.given == [(b'{"t":"a"}', b"{}")]
    assert n.states[("c", '{"id":1}')].rev == "filled"
    missing = Pending('{"id":1}')
    netting().replay(RowChange("c", None, missing))  # the store does not hold the row
    assert missing.given == [(None, None)]
