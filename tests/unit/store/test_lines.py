"""Unit tests of the v1 change line every store renders for pulls."""

from __future__ import annotations

import orjson

from sidecar.store.lines import ChangeLines, delete_line, upsert_line


def test_upsert_line_bytes() -> None:
    line = upsert_line(b'"todos"', b'{"id":1}', b'{"id":1,"title":"x"}', "abc123", 42)
    assert line == (
        b'{"collection":"todos","op":"upsert","key":{"id":1},"row":{"id":1,"title":"x"},'
        b'"rev":"abc123","version":"42"}'
    )
    assert orjson.loads(line)["version"] == "42"


def test_delete_line_bytes() -> None:
    line = delete_line(b'"todos"', b'{"id":1}', "abc123", 2**63 - 1)
    assert line == (
        b'{"collection":"todos","op":"delete","key":{"id":1},"rev":"abc123",'
        b'"version":"9223372036854775807"}'
    )


def test_change_lines_renders_entries_and_escapes_collection_names() -> None:
    lines = ChangeLines()
    up = lines.line(7, 0, 'to"dos', b'{"id":1}', "r1", b'{"id":1}')
    gone = lines.line(8, 1, 'to"dos', b'{"id":1}', "r2", None)  # type: ignore[arg-type]
    assert up == upsert_line(b'"to\\"dos"', b'{"id":1}', b'{"id":1}', "r1", 7)
    assert gone == delete_line(b'"to\\"dos"', b'{"id":1}', "r2", 8)
    assert orjson.loads(up) == {
        "collection": 'to"dos',
        "op": "upsert",
        "key": {"id": 1},
        "row": {"id": 1},
        "rev": "r1",
        "version": "7",
    }
    assert orjson.loads(gone)["op"] == "delete" and "row" not in orjson.loads(gone)
    assert lines.collection_json("é") == '"é"'.encode()
