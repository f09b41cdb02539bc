"""The config's units: durations, sizes and rates, from what the YAML says to numbers.

- durations: `30d`, `12h`, `15m`, `10s`, `500ms` or a number of seconds → float seconds;
- sizes: `100B`, `512KB`, `5MB`, `1GB` or an integer of bytes → int bytes, binary units
  (KB = 1024, MB = 1024*1024, GB = 1024**3);
- rates: `50/s`, `600/m`, `1000/h` → `Rate(count, per_seconds)`.

Each parser raises `ValueError` with the message the loader reports at the value.
"""

from __future__ import annotations

import math
import re

from sidecar.config.model import Rate
from sidecar.config.problems import show

__all__ = ["parse_duration", "parse_rate", "parse_size"]

_DURATION = re.compile(r"([0-9]+(?:\.[0-9]+)?)(ms|s|m|h|d)")
_DURATION_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}
_SIZE = re.compile(r"([0-9]+)(B|KB|MB|GB|KiB|MiB|GiB)")
_SIZE_UNITS = {"B": 1, "KB": 1024, "MB": 1024**2, "GB": 1024**3}
_SIZE_UNITS |= {"KiB": 1024, "MiB": 1024**2, "GiB": 1024**3}  # the same, spelt as IEC does
_RATE = re.compile(r"([0-9]+)/(s|m|h)")
_RATE_UNITS = {"s": 1.0, "m": 60.0, "h": 3600.0}


def parse_duration(value: object, *, allow_zero: bool = False) -> float:
    """`30d`, `12h`, `15m`, `10s`, `500ms` or a number of seconds → seconds (ValueError)."""
    if isinstance(value, str) and (match := _DURATION.fullmatch(value)):
        seconds = float(match[1]) * _DURATION_UNITS[match[2]]
    elif isinstance(value, int | float) and not isinstance(value, bool):
        seconds = float(value)
    else:
        raise ValueError(
            f"expected a duration such as 30d, 12h, 15m, 10s, 500ms or a number of seconds,"
            f" got {show(value)}"
        )
    return _checked_positive(seconds, value, allow_zero=allow_zero)


def parse_size(value: object) -> int:
    """`100B`, `512KB`, `5MB`, `1GB` (binary units; `KiB`, `MiB`, `GiB` too) or an integer
    of bytes → bytes."""
    if isinstance(value, str) and (match := _SIZE.fullmatch(value)):
        size = int(match[1]) * _SIZE_UNITS[match[2]]
    elif isinstance(value, int) and not isinstance(value, bool):
        size = value
    else:
        raise ValueError(
            f"expected a size such as 100B, 512KB, 5MB, 1GB or an integer of bytes,"
            f" got {show(value)}"
        )
    return int(_checked_positive(size, value, allow_zero=False))


def parse_rate(value: object) -> Rate:
    """`50/s`, `600/m`, `1000/h` → `Rate(count, per_seconds)`."""
    match = _RATE.fullmatch(value) if isinstance(value, str) else None
    if match is None:
        raise ValueError(f"expected a rate such as 50/s, 600/m or 1000/h, got {show(value)}")
    count = int(_checked_positive(int(match[1]), value, allow_zero=False))
    return Rate(count, _RATE_UNITS[match[2]])


def _checked_positive(number: float, value: object, *, allow_zero: bool) -> float:
    if not math.isfinite(number):
        raise ValueError(f"must be a finite number, got {show(value)}")
    if number < 0 or (number == 0 and not allow_zero):
        bound = "zero or more" if allow_zero else "greater than zero"
        raise ValueError(f"must be {bound}, got {show(value)}")
    return number
