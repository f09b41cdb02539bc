"""values.py: json/jsonb kept as PostgreSQL's text, the exact JSON helpers (`raw_members`,
`loads_exact`, `json_value`) and the collection's salvage of values it cannot take."""

from __future__ import annotations

import json
from decimal import Decimal

import orjson
from hypothesis import given
from hypothesis import strategies as st
from psycopg.postgres import types as t

from sidecar.catalog import ColumnInfo, TableInfo
from sidecar.collection import Collection
from sidecar.config.loader import load_config_text
from sidecar.config.model import TableRef
from sidecar.values import JsonText, dumps, json_value, loads_exact, raw_members

json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(10**40), max_value=10**40)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(), inner, max_size=4),
    max_leaves=20,
)


@given(st.dictionaries(st.text(), json_values, max_size=6), st.sampled_from([None, 2]))
def test_raw_members_are_the_members_text(obj, indent):
    text = json.dumps(obj, indent=indent)
    members = raw_members(text)
    assert list(members) == list(obj)
    for name, raw in members.items():
        assert json.loads(raw) == obj[name]


def test_raw_members_keep_any_depth_and_number():
    deep = "[" * 5000 + "1" + "]" * 5000
    text = f'{{"a": {deep}, "b": 123456789012345678901234567890 , "c":"}}]\\"", "d": 1e400}}'
    assert raw_members(text) == {
        "a": deep,
        "b": "123456789012345678901234567890",
        "c": '"}]\\""',
        "d": "1e400",
    }


def test_json_text_is_emitted_verbatim():
    value = JsonText('{"a": 123456789012345678901234567890, "b": [[[]]]}')
    assert dumps({"x": value, "y": [value]}) == (
        b'{"x":{"a": 123456789012345678901234567890, "b": [[[]]]},'
        b'"y":[{"a": 123456789012345678901234567890, "b": [[[]]]}]}'
    )


def test_loads_exact_keeps_what_orjson_would_round():
    line = b'{"op":"upsert","row":{"id":1,"f":1.5,"j":{"n": 123456789012345678901234567890}}}'
    change = loads_exact(line)
    assert change["row"]["id"] == 1 and change["row"]["f"] == 1.5
    assert orjson.dumps(change) == line  # the fragment is emitted as it came
    plain = b'{"op":"upsert","row":{"id":1,"j":{"a":[1,2]}}}'
    assert loads_exact(plain) == orjson.loads(plain)


def test_json_value_parses_for_rules_exactly():
    assert json_value(JsonText('{"a": 1}')) == {"a": 1}
    assert json_value(JsonText('{"a": 123456789012345678901234567890}')) == {
        "a": 123456789012345678901234567890
    }
    assert json_value(JsonText("[0.1000000000000000055511151231257827]")) == [
        Decimal("0.1000000000000000055511151231257827")
    ]
    assert json_value(7) == 7


def _collection() -> Collection:
    cfg = load_config_text(
        """
database: {url: "postgresql://h/d"}
auth: {jwt: {secret: "0123456789abcdef0123456789abcdef"}}
collections:
  items: {table: items, read: "owner = :sub"}
""",
        file="t.yaml",
        env={},
    )
    cols = (
        ColumnInfo("id", t["int4"].oid, "integer", False),
        ColumnInfo("owner", t["int4"].oid, "integer", False),
        ColumnInfo("n", t["int4"].oid, "integer", True),
        ColumnInfo("data", t["jsonb"].oid, "jsonb", True),
    )
    table = TableInfo(TableRef("public", "items"), 1, cols, ("id",), "d", ("id",), ())
    return Collection(cfg.collections["items"], table)


def test_a_value_that_cannot_be_loaded_is_kept_as_text_not_dropped():
    route = _collection()
    image = route.change_image([b"1", b"7", b"not a number", b'{"a": 1e40}'])
    assert orjson.loads(image.row) == {
        "id": 1,
        "owner": 7,
        "n": "not a number",
        "data": {"a": 1e40},
    }
    assert image.row.endswith(b'"data":{"a": 1e40}}')
    assert image.scopes and route.values_as_text == 1


def test_a_copied_value_that_cannot_be_encoded_is_kept_as_text():
    route = _collection()

    class Odd:
        def __str__(self) -> str:
            return "odd"

    (image,) = route.copied_images([(1, 7, Odd(), None)])
    assert orjson.loads(image.row) == {"id": 1, "owner": 7, "n": "odd", "data": None}
    assert route.values_as_text == 1
