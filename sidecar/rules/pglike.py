"""PostgreSQL's LIKE: `%` any run, `_` one character, backslash escapes the next one.

Linear in the text, never backtracking: the pattern is split at its `%` runs into
segments of fixed length (characters and `_`), and each segment is placed at its leftmost
occurrence after the previous one (the last one at the end of the text). That greedy
placement is what PostgreSQL's own MatchText (like_match.c) computes — once a segment is
placed, its `LIKE_ABORT` never lets it try a later place — so the verdicts are the same,
including a pattern ending with a lone backslash, which raises only when matching reaches
it with text left (or right after a `%`). A segment without `_` is found with `str.find`;
one with `_` with a fixed-length regular expression (no quantifier) on short texts, else
with a bit-parallel scan (Shift-And) in bounded steps. Case folding for ILIKE is the
caller's (ASCII only).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from sidecar.rules.pgvalues import EvaluationError

__all__ = ["like_matcher"]

_LIKE_ESCAPE_ERROR = "LIKE pattern must not end with escape character"
_ANY = None  # `_` in a segment
_REGEX_WORK = 1 << 16  # text length x segment length up to which a regex scan is used


class _Segment:
    """Characters and `_` (None) of fixed length, found in a text at or after a position."""

    __slots__ = ("length", "literal", "masks", "regex", "wild")

    def __init__(self, items: Sequence[str | None]) -> None:
        self.length = len(items)
        self.wild = _ANY in items
        self.literal = "" if self.wild else "".join(i for i in items if i is not None)
        self.regex = re.compile(
            "".join("." if i is None else re.escape(i) for i in items), re.DOTALL
        )
        wildcards = sum(1 << n for n, i in enumerate(items) if i is None)
        self.masks: dict[str, int] = {}
        for n, item in enumerate(items):
            if item is not None:
                self.masks[item] = self.masks.get(item, wildcards) | 1 << n
        self.masks[""] = wildcards  # any other character

    def at(self, text: str, start: int) -> bool:
        """Whether the segment occurs at `start` (entirely inside the text)."""
        if start + self.length > len(text):
            return False
        if not self.wild:
            return text.startswith(self.literal, start)
        return self.regex.match(text, start) is not None

    def find(self, text: str, start: int) -> int:
        """The leftmost start >= `start` of an occurrence inside the text, or -1."""
        if not self.wild:
            return text.find(self.literal, start)
        if (len(text) - start) * self.length <= _REGEX_WORK:
            found = self.regex.search(text, start)
            return -1 if found is None else found.start()
        return self._shift_and(text, start)

    def _shift_and(self, text: str, start: int) -> int:
        """Bit-parallel scan: bit n of `state` is set when the segment's first n + 1 items
        match the text ending here. Linear in the text, one step per character."""
        masks, other = self.masks, self.masks[""]
        last = 1 << (self.length - 1)
        state = 0
        for end in range(start, len(text)):
            state = ((state << 1) | 1) & masks.get(text[end], other)
            if state & last:
                return end - self.length + 1
        return -1


@dataclass(frozen=True, slots=True)
class _Part:
    """A `%` run (with the `_` inside it: `skip` characters) and the segment after it."""

    skip: int
    segment: _Segment  # empty at the end of the pattern


@dataclass(frozen=True, slots=True)
class _Pattern:
    head: _Segment  # before the first `%`, anchored at the start
    parts: tuple[_Part, ...]
    dangling: bool  # ends with a lone backslash

    def match(self, text: str) -> bool:
        n = len(text)
        head = self.head
        if not head.at(text, 0):  # a mismatch, or the text ran out (LIKE_ABORT)
            return False
        ti = head.length
        if not self.parts:
            if self.dangling and ti < n:
                raise EvaluationError(_LIKE_ESCAPE_ERROR)
            return ti == n and not self.dangling
        for index, part in enumerate(self.parts):
            if ti == n:  # the text ended at a `%`: only `%`s may be left
                return self._only_percent_left(index)
            ti += part.skip
            if ti > n:  # a `_` after `%` found no character
                return False
            segment = part.segment
            last = index == len(self.parts) - 1
            if segment.length == 0:  # the pattern ends after the `%` run
                if self.dangling:
                    raise EvaluationError(_LIKE_ESCAPE_ERROR)
                return True
            if ti >= n:
                return False
            if last and not self.dangling:  # anchored at the end of the text
                start = n - segment.length
                return start >= ti and segment.at(text, start)
            found = segment.find(text, ti)
            if found < 0:
                return False
            ti = found + segment.length
            if last:  # dangling: reached with text left, the backslash is read
                if ti < n:
                    raise EvaluationError(_LIKE_ESCAPE_ERROR)
                return False
        raise AssertionError("unreachable")  # pragma: no cover

    def _only_percent_left(self, index: int) -> bool:
        rest = self.parts[index:]
        return (
            len(rest) == 1 and rest[0].skip == 0 and rest[0].segment.length == 0
        ) and not self.dangling


def _compile(pattern: str) -> _Pattern:
    items: list[str | None] = []  # characters, `_` (None) and `%` ("%" marks a run)
    percent: list[int] = []  # indexes in `items` of the `%`s
    dangling = False
    chars = iter(pattern)
    for char in chars:
        if char == "\\":
            escaped = next(chars, None)
            if escaped is None:
                dangling = True
            else:
                items.append(escaped)
        elif char == "%":
            percent.append(len(items))
            items.append("%")
        elif char == "_":
            items.append(_ANY)
        else:
            items.append(char)
    marks = set(percent)
    bounds = [*percent, len(items)]
    head = _Segment(items[: bounds[0]])
    parts: list[_Part] = []
    position = bounds[0]
    while position < len(items):  # at a `%`: the run of `%` and `_`, then the segment
        skip = 0
        while position < len(items) and (position in marks or items[position] is _ANY):
            skip += position not in marks
            position += 1
        end = position
        while end < len(items) and end not in marks:
            end += 1
        parts.append(_Part(skip, _Segment(items[position:end])))
        position = end
    return _Pattern(head, tuple(parts), dangling)


def like_matcher(pattern: str) -> Callable[[str], bool]:
    """A LIKE matcher for `pattern`: linear in the text, PostgreSQL's verdicts and errors."""
    return _compile(pattern).match
