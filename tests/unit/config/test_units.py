"""The config's units: durations, sizes and rates (`sidecar.config.units`), and the schema's
patterns for them."""

from __future__ import annotations

import re

import pytest

from sidecar.config.model import Rate
from sidecar.config.schema import load_schema
from sidecar.config.units import parse_duration, parse_rate, parse_size


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("30d", 2592000.0),
        ("12h", 43200.0),
        ("15m", 900.0),
        ("10s", 10.0),
        ("500ms", 0.5),
        ("1.5h", 5400.0),
        (30, 30.0),
        (0.25, 0.25),
    ],
)
def test_parse_duration(text: object, seconds: float) -> None:
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("bad", ["10x", "10", "s", "-5s", " 5s", "5 s", "1e3s", True, None, -1])
def test_parse_duration_rejects(bad: object) -> None:
    with pytest.raises(ValueError, match=r"duration|greater than zero"):
        parse_duration(bad)


def test_duration_zero_is_allowed_only_where_it_makes_sense() -> None:
    for zero in ("0s", "0ms", 0, 0.0):
        with pytest.raises(ValueError, match="greater than zero"):
            parse_duration(zero)
        assert parse_duration(zero, allow_zero=True) == 0.0
    with pytest.raises(ValueError, match="finite"):
        parse_duration(float("inf"))


@pytest.mark.parametrize(
    ("text", "size"),
    [
        ("100B", 100),
        ("512KB", 512 * 1024),
        ("5MB", 5 * 1024 * 1024),
        ("1GB", 1024**3),
        ("512KiB", 512 * 1024),
        ("1MiB", 1024 * 1024),
        ("2GiB", 2 * 1024**3),
        (42, 42),
    ],
)
def test_parse_size(text: object, size: int) -> None:
    assert parse_size(text) == size


@pytest.mark.parametrize(
    "bad", ["5mb", "5 MB", "5TB", "5mib", "5Mib", "1.5MB", "0MB", 0, -1, 2.5, "-1B", True]
)
def test_parse_size_rejects(bad: object) -> None:
    with pytest.raises(ValueError):
        parse_size(bad)


@pytest.mark.parametrize(
    ("text", "rate"),
    [("50/s", Rate(50, 1.0)), ("600/m", Rate(600, 60.0)), ("1000/h", Rate(1000, 3600.0))],
)
def test_parse_rate(text: str, rate: Rate) -> None:
    assert parse_rate(text) == rate


@pytest.mark.parametrize("bad", ["0/s", "50/d", "50 /s", "-1/s", "50", 50, "1.5/s"])
def test_parse_rate_rejects(bad: object) -> None:
    with pytest.raises(ValueError):
        parse_rate(bad)


PARSERS = {"duration": parse_duration, "size": parse_size, "rate": parse_rate}
UNIT_SAMPLES = ["30d", "500ms", "1.5h", "5MB", "100B", "1GB", "50/s", "1000/h"]
UNIT_SAMPLES += ["5mb", "10x", "-5s", "50/d", "1.5MB", "5 MB", "", "1e3s", "5/s/s"]


@pytest.mark.parametrize("key", list(PARSERS))
@pytest.mark.parametrize("sample", UNIT_SAMPLES)
def test_schema_patterns_agree_with_the_parsers(key: str, sample: str) -> None:
    pattern = re.compile(load_schema()["$defs"][key]["pattern"])
    try:
        PARSERS[key](sample)
        parsed = True
    except ValueError:
        parsed = False
    assert parsed == bool(pattern.search(sample))
