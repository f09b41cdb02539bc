"""Golden types: every value survives capture the same way from COPY and from the stream,
and equals what a SELECT gives through the same JSON typing."""

from __future__ import annotations

import psycopg
import pytest

from sidecar.values import configure_connection, to_json_value
from tests.fixtures.service import state_of

pytestmark = pytest.mark.pg

SCHEMA = """
CREATE TYPE mood AS ENUM ('sad', 'ok', 'happy');
CREATE TABLE golden (
    id int PRIMARY KEY,
    owner int,
    big numeric,
    nan numeric,
    f8 float8,
    f4 float4,
    ts timestamptz,
    ts_inf timestamptz,
    tsn timestamp,
    d date,
    d_inf date,
    iv interval,
    u uuid,
    b bytea,
    j jsonb,
    js json,
    m mood,
    moods mood[],
    texts text[],
    ints int[],
    flag boolean,
    t text,
    small smallint,
    huge bigint,
    tod time,
    todz timetz
);
"""

ROW = """
INSERT INTO golden VALUES (
    {id}, 1,
    12345678901234567890.12345678901234567890,
    'NaN',
    '-Infinity',
    'NaN',
    '2024-03-10 12:00:00+05',
    'infinity',
    '2024-03-10 12:34:56.789012',
    '2024-02-29',
    '-infinity',
    '1 year 2 mons 3 days 04:05:06.5',
    'A0EEBC99-9C0B-4EF8-BB6D-6BB9BD380A11',
    '\\xdeadbeef00',
    '{{"a": [1, 2.5, {{"b": null}}], "s": "x\\"y"}}',
    '[1, "two"]',
    'happy',
    '{{sad,happy}}',
    ARRAY['a', NULL, 'with "quote"', 'comma,here', ''],
    ARRAY[1, NULL, 3],
    true,
    E'line\\nbreak \\u00e9 \\t tab',
    -32768,
    9223372036854775807,
    '23:59:59.5',
    '10:30:00+02'
)
"""

EXPECTED = {
    "owner": 1,
    "big": "12345678901234567890.12345678901234567890",
    "nan": "NaN",
    "f8": "-Infinity",
    "f4": "NaN",
    "ts": "2024-03-10T07:00:00+00:00",
    "ts_inf": "infinity",
    "tsn": "2024-03-10T12:34:56.789012",
    "tod": "23:59:59.500000",
    "todz": "10:30:00+02:00",
    "d": "2024-02-29",
    "d_inf": "-infinity",
    "iv": "P1Y2M3DT4H5M6.5S",
    "u": "a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11",
    "b": "\\xdeadbeef00",
    "j": {"a": [1, 2.5, {"b": None}], "s": 'x"y'},
    "js": [1, "two"],
    "m": "happy",
    "flag": True,
    "t": "line\nbreak é \t tab",
    "small": -32768,
    "huge": 9223372036854775807,
    "texts": ["a", None, 'with "quote"', "comma,here", ""],
    "ints": [1, None, 3],
}

PSYCOPG_CANNOT = ("ts_inf", "d_inf", "iv")  # the sidecar gives these as text (ISO 8601)

COLLECTION = """
  golden:
    table: golden
    read: "owner = :sub"
"""


def select_json(dsn: str, id_: int) -> dict:
    """The row as a plain SELECT returns it, through the sidecar's JSON typing."""
    with psycopg.connect(dsn, options="-c TimeZone=UTC") as conn:
        configure_connection(conn)  # the loaders every sidecar connection uses
        cols = ", ".join(c for c in EXPECTED if c not in PSYCOPG_CANNOT)
        cur = conn.execute(f"SELECT {cols} FROM golden WHERE id = %s", (id_,))
        names = [d.name for d in cur.description]
        row = cur.fetchone()
    out = {}
    for name, value in zip(names, row, strict=True):
        out[name] = to_json_value(value)
    return out


async def test_golden_types_from_copy_and_stream(pg_dsn, pg_url, sidecar_factory):
    with psycopg.connect(pg_dsn, autocommit=True) as conn:
        conn.execute(SCHEMA)
        conn.execute(ROW.format(id=1))  # arrives through the initial copy
        tz = conn.execute("SHOW TimeZone").fetchone()[0]
    assert tz != "UTC"  # the server's own zone must not leak into values
    sc = await sidecar_factory(pg_url, COLLECTION)
    with psycopg.connect(pg_dsn, autocommit=True) as conn:
        conn.execute(ROW.format(id=2))  # arrives through the replication stream
    await sc.caught_up(pg_dsn)
    rows = {r["id"]: r for r in state_of(await sc.sync(1)).values()}
    assert set(rows) == {1, 2}
    for id_, row in rows.items():
        for column, expected in EXPECTED.items():
            assert row[column] == expected, (id_, column, row[column])
        assert row["moods"] in (["sad", "happy"], "{sad,happy}")  # enum arrays: list or text
        selected = select_json(pg_dsn, id_)
        for column, value in selected.items():
            if column in ("f8", "f4"):
                continue  # JSON has no NaN/Infinity: the sidecar sends them as strings
            assert row[column] == value, (id_, column)
    assert rows[1] == {**rows[2], "id": 1}


async def test_enum_value_added_later_still_decodes(pg_dsn, pg_url, sidecar_factory):
    with psycopg.connect(pg_dsn, autocommit=True) as conn:
        conn.execute(SCHEMA)
    sc = await sidecar_factory(pg_url, COLLECTION)
    with psycopg.connect(pg_dsn, autocommit=True) as conn:
        conn.execute("ALTER TYPE mood ADD VALUE 'ecstatic'")
        conn.execute("INSERT INTO golden (id, owner, m) VALUES (3, 1, 'ecstatic')")
    await sc.caught_up(pg_dsn)
    (row,) = state_of(await sc.sync(1)).values()
    assert row["m"] == "ecstatic"


async def test_enum_value_added_while_streaming_decodes(pg_dsn, pg_url, sidecar_factory):
    with psycopg.connect(pg_dsn, autocommit=True) as conn:
        conn.execute("CREATE TYPE level AS ENUM ('low', 'high')")
        conn.execute("CREATE TABLE alarms (id int PRIMARY KEY, owner int, lvl level)")
        conn.execute("INSERT INTO alarms VALUES (1, 1, 'low')")
    sc = await sidecar_factory(pg_url, '  alarms:\n    table: alarms\n    read: "owner = :sub"\n')
    with psycopg.connect(pg_dsn, autocommit=True) as conn:
        conn.execute("ALTER TYPE level ADD VALUE 'critical'")
        conn.execute("INSERT INTO alarms VALUES (2, 1, 'critical')")
        conn.execute("UPDATE alarms SET lvl = 'critical' WHERE id = 1")
    await sc.caught_up(pg_dsn)
    rows = {r["id"]: r["lvl"] for r in state_of(await sc.sync(1)).values()}
    assert rows == {1: "critical", 2: "critical"}
    assert sc.service.capture.status.phase == "streaming"
