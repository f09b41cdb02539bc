"""How the adapters carry a core cursor: Electric offsets and RxDB checkpoints name every
field of a membership cursor, and their old forms still parse."""

from __future__ import annotations

import pytest
from aiohttp.test_utils import make_mocked_request

from adapters.electric.protocol import offset_of, parse_offset
from adapters.rxdb import _checkpoint_param, checkpoint_of
from sidecar.changes import Cursor
from sidecar.errors import InvalidRequest

CURSORS = [
    Cursor("3fa9c2d1", 1042),
    Cursor("3fa9c2d1", 1042, 1000),
    Cursor("3fa9c2d1", 1042, 1000, 1100, 17),
    Cursor("3fa9c2d1", 5, 9),  # scopes read after the version (a move just done)
]


@pytest.mark.parametrize("cursor", CURSORS, ids=str)
def test_electric_offsets_carry_the_whole_cursor(cursor: Cursor) -> None:
    offset = offset_of(cursor)
    assert offset.startswith(f"{cursor.version}_0")
    assert parse_offset(offset, cursor.epoch) == cursor


def test_electric_old_offsets_parse() -> None:
    assert offset_of(Cursor("3fa9c2d1", 1042)) == "1042_0"
    assert parse_offset("1042_0", "3fa9c2d1") == Cursor("3fa9c2d1", 1042)
    assert parse_offset("1042_inf", "3fa9c2d1") == Cursor("3fa9c2d1", 1042)
    assert parse_offset("-1", "3fa9c2d1") is None
    for bad in ("1042", "1042_0_1_2", "x_0", "1042_0_"):
        with pytest.raises(InvalidRequest):
            parse_offset(bad, "3fa9c2d1")


def _sent_back(checkpoint: dict) -> Cursor | None:
    query = f"id={checkpoint['id']}&lwt={checkpoint['lwt']}"
    return _checkpoint_param(make_mocked_request("GET", f"/rxdb/t/pull?{query}"))


@pytest.mark.parametrize("cursor", CURSORS, ids=str)
def test_rxdb_checkpoints_carry_the_whole_cursor(cursor: Cursor) -> None:
    checkpoint = checkpoint_of(cursor)
    assert set(checkpoint) == {"id", "lwt"}  # always both: RxDB stacks checkpoints
    assert checkpoint["lwt"] == cursor.version
    assert _sent_back(checkpoint) == cursor


def test_rxdb_old_checkpoints_parse() -> None:
    assert checkpoint_of(Cursor("3fa9c2d1", 1042)) == {"id": "3fa9c2d1", "lwt": 1042}
    assert _sent_back({"id": "3fa9c2d1", "lwt": 1042}) == Cursor("3fa9c2d1", 1042)
    with pytest.raises(InvalidRequest):  # id and lwt of different checkpoints
        _sent_back({"id": "3fa9c2d1-1042-1000", "lwt": 1043})
