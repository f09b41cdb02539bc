"""PostgreSQL type names in parts, and PostgreSQL's float text output."""

from __future__ import annotations

import math

import pytest

from sidecar.pgtypes import TypeName, float_text, parse_type_name


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("integer", TypeName("integer", (), 0)),
        ("numeric(10,2)", TypeName("numeric", ("10", "2"), 0)),
        ("numeric(10,2)[]", TypeName("numeric", ("10", "2"), 1)),
        ("character varying(20)", TypeName("character varying", ("20",), 0)),
        ("timestamp(3) with time zone", TypeName("timestamp with time zone", ("3",), 0)),
        ("timestamp(6) without time zone[]", TypeName("timestamp without time zone", ("6",), 1)),
        ("interval day to second(3)", TypeName("interval day to second", ("3",), 0)),
        ("double  precision", TypeName("double precision", (), 0)),
        ("text[][]", TypeName("text", (), 2)),
        ("geometry(Point, 4326)", TypeName("geometry", ("Point", "4326"), 0)),
        ('"MyEnum"', TypeName('"MyEnum"', (), 0)),
        ('myschema."Mood"[]', TypeName('myschema."Mood"', (), 1)),
        ('"odd (name)[]"', TypeName('"odd (name)[]"', (), 0)),  # quoted: all name
        ('"two  spaces"', TypeName('"two  spaces"', (), 0)),
    ],
)
def test_type_names_in_parts(name: str, expected: TypeName) -> None:
    assert parse_type_name(name) == expected


@pytest.mark.parametrize(
    ("value", "text"),
    [
        (1.0, "1"),
        (-2.5, "-2.5"),
        (0.1, "0.1"),
        (0.0001, "0.0001"),
        (1e-5, "1e-05"),
        (123456789012345.0, "123456789012345"),
        (1e15, "1e+15"),  # DBL_DIG: exponent form from 1e15 (Python's repr waits for 1e16)
        (1e16, "1e+16"),
        (1e20, "1e+20"),
        (1e23, "9.999999999999999e+22"),  # never a decimal on the interval's bound (Ryu)
        (5e-324, "5e-324"),
        (1.7976931348623157e308, "1.7976931348623157e+308"),
        (0.0, "0"),
        (-0.0, "-0"),
        (math.inf, "Infinity"),
        (-math.inf, "-Infinity"),
        (math.nan, "NaN"),
    ],
)
def test_float8_text(value: float, text: str) -> None:
    assert float_text(value) == text
    assert float_text(value, "float8") == text


@pytest.mark.parametrize(
    ("value", "text"),
    [
        (123456.0, "123456"),
        (999999.0, "999999"),
        (1234567.0, "1.234567e+06"),  # FLT_DIG: exponent form from 1e6
        (1.5e6, "1.5e+06"),
        (16777216.0, "1.6777216e+07"),
        (3.4e38, "3.4e+38"),
        (0.1, "0.1"),
        (1e-5, "1e-05"),
        (1e-45, "1e-45"),
        (-0.0, "-0"),
        (math.nan, "NaN"),
    ],
)
def test_float4_text(value: float, text: str) -> None:
    assert float_text(value, "float4") == text
