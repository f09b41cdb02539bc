"""`pgtypes.float_text` against PostgreSQL's own float8 and float4 text output."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import psycopg
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sidecar.pgtypes import float_text

pytestmark = pytest.mark.pg

FLOAT8 = [1e15, 1e16, 1e23, 2e23, 9007199254740992.0, 123456789012345.0, 1e-5, 5e-324, -0.0]
FLOAT4 = [1e6, 1234567.0, 16777216.0, 1e23, 3.4e38, 1e-45, 1e-5, 0.1, -0.0]


@pytest.fixture
def conn(pg_dsn: str) -> Iterator[psycopg.Connection[Any]]:
    with psycopg.connect(pg_dsn, autocommit=True) as connection:
        connection.execute("SET extra_float_digits = 3")  # as every sidecar session
        yield connection


def _text(conn: psycopg.Connection[Any], value: float, kind: str) -> str:
    row = conn.execute(f"SELECT %s::{kind}::text", [value]).fetchone()
    assert row is not None
    return str(row[0])


def _check(conn: psycopg.Connection[Any], value: float, kind: str) -> None:
    text = _text(conn, value, kind)
    if kind == "float8":
        assert float_text(value) == text, value
    else:  # psycopg loads a float4 from its text as a double
        assert float_text(float(text), "float4") == text, value


def test_pinned_values_match_postgres(conn: psycopg.Connection[Any]) -> None:
    for value in FLOAT8:
        _check(conn, value, "float8")
    for value in FLOAT4:
        _check(conn, value, "float4")


def test_float8_text_matches_postgres(conn: psycopg.Connection[Any]) -> None:
    @settings(max_examples=300, deadline=None)
    @given(st.floats())
    def check(value: float) -> None:
        _check(conn, value, "float8")

    check()


def test_float4_text_matches_postgres(conn: psycopg.Connection[Any]) -> None:
    @settings(max_examples=300, deadline=None)
    @given(st.floats(width=32))
    def check(value: float) -> None:
        _check(conn, value, "float4")

    check()
