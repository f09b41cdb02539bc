"""Unit tests of WAL position helpers: pg_lsn text both ways, and `covers`."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from sidecar.lsn import covers, lsn_to_str, str_to_lsn


@pytest.mark.parametrize(
    ("text", "value"),
    [
        ("0/0", 0),
        ("16/B374D848", 0x16B374D848),
        ("0/1", 1),
        ("1/0", 1 << 32),
        ("FFFFFFFF/FFFFFFFF", 2**64 - 1),
    ],
)
def test_lsn_round_trip(text: str, value: int) -> None:
    assert str_to_lsn(text) == value
    assert lsn_to_str(value) == text
    assert str_to_lsn(text.lower()) == value


@given(st.integers(0, 2**64 - 1))
def test_lsn_round_trip_any(value: int) -> None:
    assert str_to_lsn(lsn_to_str(value)) == value


@pytest.mark.parametrize(
    "bad",
    ["", "/", "0/", "/0", "16B374D848", "1/2/3", "G/0", "0x1/0", " 0/0", "0/0 ", "+1/0",
     "123456789/0", "0/123456789", "１/0", "0/-1"],
)  # fmt: skip
def test_str_to_lsn_rejects_malformed(bad: str) -> None:
    with pytest.raises(ValueError, match="malformed LSN"):
        str_to_lsn(bad)


def test_str_to_lsn_rejects_non_str() -> None:
    with pytest.raises(ValueError):
        str_to_lsn(b"0/0")  # type: ignore[arg-type]


@pytest.mark.parametrize("bad", [-1, 2**64, 1.0, "0/0", True])
def test_lsn_to_str_rejects_out_of_range(bad: object) -> None:
    with pytest.raises(ValueError):
        lsn_to_str(bad)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("done", "target", "ok"),
    [
        (100, 100, True),
        (101, 100, True),
        (99, 100, False),
        (8192, 8192 + 24, True),  # page boundary vs. insert position past the short header
        (16 << 20, (16 << 20) + 40, True),  # segment start: long header
        (8192 - 8, 8192 + 24, False),  # a record still ends before the boundary
        (8192, 8192 + 32, False),  # a real record after the header is not covered
        (8192 * 3, 8192 * 3 + 24, True),
    ],
)
def test_covers_treats_a_page_header_as_no_wal(done: int, target: int, ok: bool) -> None:
    assert covers(done, target) is ok
