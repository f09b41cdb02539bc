"""Values crossing the read path (`sidecar.changes`): cursors round-trip through their
text and anything else is refused; revisions are stable short hashes."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from sidecar.changes import Cursor, rev_of
from sidecar.errors import InvalidRequest

EPOCHS = st.text(alphabet="0123456789abcdef", min_size=8, max_size=8)
VERSIONS = st.integers(min_value=0, max_value=10**19 - 1)


@given(EPOCHS, VERSIONS)
def test_a_cursor_round_trips_through_its_text(epoch: str, version: int) -> None:
    cursor = Cursor(epoch, version)
    assert Cursor.parse(str(cursor)) == cursor


def test_the_text_is_epoch_dash_version() -> None:
    assert str(Cursor("3fa9c2d1", 1042)) == "3fa9c2d1-1042"
    assert Cursor.parse("3fa9c2d1-0") == Cursor("3fa9c2d1", 0)


@pytest.mark.parametrize(
    "text",
    [
        "",
        "3fa9c2d1",
        "3fa9c2d1-",
        "-1042",
        "3fa9c2d1-1042-1-2",  # a scopes version, then a target without its progress
        "3FA9C2D1-1042",  # the epoch is lower-case hex
        "3fa9c2d-1042",  # 7 hex digits
        "3fa9c2d1a-1042",  # 9
        "3fa9c2dg-1042",
        "3fa9c2d1--1",
        "3fa9c2d1-1.5",
        "3fa9c2d1-" + "1" * 20,  # more digits than a version has
        " 3fa9c2d1-1042",
    ],
)
def test_anything_else_is_a_400_naming_the_parameter(text: str) -> None:
    with pytest.raises(InvalidRequest, match="cursor is malformed") as caught:
        Cursor.parse(text)
    assert caught.value.status == 400 and caught.value.extra == {"parameter": "cursor"}


def test_rev_is_a_stable_short_hash_of_the_row_json() -> None:
    rev = rev_of(b'{"id":1}')
    assert rev == rev_of(b'{"id":1}') and len(rev) == 16 and int(rev, 16) >= 0
    assert rev != rev_of(b'{"id":2}')
