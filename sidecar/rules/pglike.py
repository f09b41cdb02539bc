"""PostgreSQL's LIKE: `%` any run, `_` one character, backslash escapes the next one.

A pattern ending with a lone backslash fails only when matching reaches it, as in
PostgreSQL (like_match.c). Case folding for ILIKE is the caller's (ASCII only).
"""

from __future__ import annotations

import re
from collections.abc import Callable

from sidecar.rules.pgvalues import EvaluationError

__all__ = ["like_matcher"]


_LIKE_ESCAPE_ERROR = "LIKE pattern must not end with escape character"


def like_matcher(pattern: str) -> Callable[[str], bool]:
    """A LIKE matcher: % any run, _ one character, backslash escapes the next character.

    A regex, except for a pattern ending with a lone backslash: PostgreSQL raises for it
    only when matching reaches that backslash, so its own algorithm is followed there.
    """
    out: list[str] = []
    chars = iter(pattern)
    for char in chars:
        if char == "\\":
            escaped = next(chars, None)
            if escaped is None:
                return lambda text: _match_text(text, 0, pattern, 0) is True
            out.append(re.escape(escaped))
        elif char == "%":
            out.append(".*")
        elif char == "_":
            out.append(".")
        else:
            out.append(re.escape(char))
    regex = re.compile("".join(out), re.DOTALL)
    return lambda text: regex.fullmatch(text) is not None


def _match_text(t: str, ti: int, p: str, pi: int) -> bool | None:
    """PostgreSQL's MatchText (like_match.c): True, False, or None for "abort" (no match)."""
    while ti < len(t) and pi < len(p):
        char = p[pi]
        if char == "\\":
            pi += 1
            if pi >= len(p):
                raise EvaluationError(_LIKE_ESCAPE_ERROR)
            if p[pi] != t[ti]:
                return False
        elif char == "%":
            return _match_percent(t, ti, p, pi + 1)
        elif char != "_" and char != t[ti]:
            return False
        ti, pi = ti + 1, pi + 1
    if ti < len(t):
        return False
    while pi < len(p) and p[pi] == "%":
        pi += 1
    return True if pi >= len(p) else None


def _match_percent(t: str, ti: int, p: str, pi: int) -> bool | None:
    """MatchText after a `%`: skip wildcards, then try each text position."""
    while pi < len(p) and p[pi] in "%_":
        if p[pi] == "_":
            if ti >= len(t):
                return None
            ti += 1
        pi += 1
    if pi >= len(p):
        return True
    if p[pi] == "\\":
        if len(p) - pi < 2:
            raise EvaluationError(_LIKE_ESCAPE_ERROR)
        first = p[pi + 1]
    else:
        first = p[pi]
    while ti < len(t):
        if t[ti] == first:
            matched = _match_text(t, ti, p, pi)
            if matched is not False:
                return matched
        ti += 1
    return None
