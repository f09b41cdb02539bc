"""A rule expression's text as the user wrote it: tokens, `:claim` rewriting, positions.

The real PostgreSQL lexer (`pglast.parser.scan`) splits the text into tokens, so strings,
quoted identifiers and comments are never looked into by hand (`scan_tokens`). Each `:`
immediately followed by an identifier token becomes a positional parameter `$n`
(`rewrite_claims`; the same claim name always gets the same `n`; `::` casts are a
distinct token), and a `SourceMap` maps positions of the rewritten, wrapped text back to
the user's. `ExpressionError` is a refusal located by token and 0-based offset.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass

from pglast.parser import ParseError, scan

__all__ = [
    "LPAREN",
    "PREFIX",
    "RPAREN",
    "ExpressionError",
    "ExpressionTooLarge",
    "SourceMap",
    "Token",
    "clean_message",
    "error_location",
    "located",
    "precheck_tokens",
    "rewrite_claims",
    "scan_tokens",
    "token_at",
]

PREFIX = "SELECT 1 WHERE "  # the statement an expression is parsed in
_COMMENTS = frozenset({"SQL_COMMENT", "C_COMMENT"})
_SEMICOLON, _COLON, LPAREN, RPAREN = "ASCII_59", "ASCII_58", "ASCII_40", "ASCII_41"
_BARE_NAME = re.compile(r"[A-Za-z_\u0080-\U0010ffff][\w$\u0080-\U0010ffff]*")


class ExpressionError(Exception):
    """An expression that is refused; `token` and `position` locate it in the user's text."""

    def __init__(self, message: str, token: str | None = None, position: int | None = None):
        super().__init__(message)
        self.message = message
        self.token = token
        self.position = position  # 0-based character offset into the expression text

    def __repr__(self) -> str:
        return f"ExpressionError({self.message!r}, token={self.token!r}, position={self.position})"


class ExpressionTooLarge(ExpressionError):
    """An expression over a size limit (characters or nodes): refused before any work on it."""


@dataclass(frozen=True, slots=True)
class SourceMap:
    """Maps a location of the parsed (wrapped, rewritten) text back to the user's text."""

    offset: int = 0  # length of the wrapper prefix
    # (start, end) in the rewritten expression -> (start, end) in the user's text
    replacements: tuple[tuple[int, int, int, int], ...] = ()

    def to_source(self, location: int | None) -> int | None:
        """The user's character offset of a parser location (None when unknown)."""
        if location is None or location < 0:
            return None
        pos = location - self.offset
        delta = 0
        for new_start, new_end, old_start, old_end in self.replacements:
            if pos < new_start:
                break
            if pos < new_end:
                return old_start
            delta = old_end - new_end
        return max(0, pos + delta)


@dataclass(frozen=True, slots=True)
class Token:
    """One lexer token: its span in the text, the lexer's name and keyword kind."""

    start: int
    end: int  # exclusive
    name: str
    kind: str

    def text(self, source: str) -> str:
        return source[self.start : self.end]


def scan_tokens(text: str) -> list[Token]:
    """Tokens of `text` with the real lexer (comments dropped)."""
    try:
        raw = scan(text)
    except ParseError as error:
        position = error_location(error)
        rest = text[position:].split(None, 1) if position is not None else []
        raise ExpressionError(clean_message(error), rest[0] if rest else None, position) from None
    return [Token(t.start, t.end + 1, t.name, t.kind) for t in raw if t.name not in _COMMENTS]


def error_location(error: ParseError) -> int | None:
    """The parser's character offset of `error`, when it gives one."""
    location = error.args[1] if len(error.args) > 1 else None
    return location if isinstance(location, int) else None


def clean_message(error: ParseError) -> str:
    """The parser's message of `error`, without its location."""
    return str(error.args[0]) if error.args else str(error)


def token_at(
    text: str, position: int | None, names: frozenset[str] | None = None
) -> tuple[str | None, int | None]:
    """(token, its start): the first token at or after `position`.

    With `names`, the first one whose lexer name is in `names`. An opening parenthesis is
    skipped, and a claim gives `:name`.
    """
    if position is None:
        return None, None
    try:
        tokens = scan_tokens(text)
    except ExpressionError:
        return text[position : position + 1] or None, position
    for i, tok in enumerate(tokens):
        if tok.end <= position or (names is not None and tok.name not in names):
            continue
        if tok.name == LPAREN and names is None and i + 1 < len(tokens):
            i, tok = i + 1, tokens[i + 1]
        if tok.name == _COLON and i + 1 < len(tokens) and tokens[i + 1].start == tok.end:
            return text[tok.start : tokens[i + 1].end], tok.start
        return tok.text(text), tok.start
    return None, position


def located(message: str, text: str, position: int | None) -> ExpressionError:
    """An error at the token found at `position` of `text`."""
    token, start = token_at(text, position)
    return ExpressionError(message, token, start)


def _is_name(token: Token) -> bool:
    return token.name == "IDENT" or token.kind != "NO_KEYWORD"


def _is_operand(token: Token) -> bool:
    return _is_name(token) or token.name.endswith("CONST") or token.name == "PARAM"


def _claim_name(text: str, token: Token) -> str:
    raw = token.text(text)
    if raw.startswith('"') and raw.endswith('"') and len(raw) >= 2:
        name = raw[1:-1].replace('""', '"')
        if name:
            return name
    elif _BARE_NAME.fullmatch(raw):
        return raw
    raise ExpressionError(f"invalid claim name {raw!r}", ":" + raw, token.start - 1)


def rewrite_claims(text: str, tokens: Sequence[Token]) -> tuple[str, tuple[str, ...], SourceMap]:
    """Replace every `:name` by ` $n`; returns (new text, claim names by n, source map)."""
    params: list[str] = []
    numbers: dict[str, int] = {}
    parts: list[str] = []
    replacements: list[tuple[int, int, int, int]] = []
    copied = 0
    new_len = 0
    for i, tok in enumerate(tokens):
        if tok.name != _COLON:
            continue
        nxt = tokens[i + 1] if i + 1 < len(tokens) else None
        if nxt is None or nxt.start != tok.end or not _is_name(nxt):
            raise ExpressionError(
                "':' must be immediately followed by a claim name (e.g. :sub)", ":", tok.start
            )
        prev = tokens[i - 1] if i else None
        if prev is not None and prev.end == tok.start and _is_operand(prev):
            raise ExpressionError(
                f"claim :{nxt.text(text)} must be separated from {prev.text(text)!r}",
                ":" + nxt.text(text),
                tok.start,
            )
        name = _claim_name(text, nxt)
        if name not in numbers:
            params.append(name)
            numbers[name] = len(params)
        chunk = text[copied : tok.start]
        parts.append(chunk)
        new_len += len(chunk)
        placeholder = f" ${numbers[name]}"  # the space keeps `x:sub` from fusing into `x$1`
        parts.append(placeholder)
        replacements.append((new_len, new_len + len(placeholder), tok.start, nxt.end))
        new_len += len(placeholder)
        copied = nxt.end
    parts.append(text[copied:])
    return "".join(parts), tuple(params), SourceMap(len(PREFIX), tuple(replacements))


def precheck_tokens(text: str, tokens: Sequence[Token]) -> None:
    """Refuse what the lexer alone shows: emptiness, several statements, `$n` parameters."""
    if not tokens:
        raise ExpressionError("empty expression", None, 0)
    for tok in tokens:
        if tok.name == _SEMICOLON:
            raise ExpressionError(
                "only one expression is allowed (no ';')", tok.text(text), tok.start
            )
        if tok.name == "PARAM":
            raise ExpressionError(
                f"positional parameter {tok.text(text)} is not allowed: write claims as :name",
                tok.text(text),
                tok.start,
            )
