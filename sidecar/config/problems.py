"""Where a config problem is and how it is said: key paths, YAML lines, collected problems.

`Locations` maps every key path the reader saw back to its YAML nodes, so any problem can
name its line; `Problems` collects them for one file (a problem found in one phase hides
later phases' problems at the same key path, one message per value) and raises them all in
one `ConfigError`, sorted by line. `show` and `describe` render a value in a message.
"""

from __future__ import annotations

import yaml

from sidecar.config.expression_source import ExpressionError
from sidecar.errors import ConfigError, ConfigProblem

__all__ = ["KeyPath", "Locations", "Problems", "describe", "format_path", "show", "yaml_scalar"]

KeyPath = tuple[str | int, ...]


def format_path(path: KeyPath) -> str:
    """`("collections", "todos", "write", "ops", 1)` → `collections.todos.write.ops[1]`."""
    text = ""
    for part in path:
        if isinstance(part, int):
            text += f"[{part}]"
        else:
            text += f".{part}" if text else part
    return text


class Locations:
    """Key path → YAML nodes, to turn any path back into a line of the source."""

    def __init__(self, source: str) -> None:
        self.source = source
        self._nodes: dict[KeyPath, tuple[yaml.Node | None, yaml.Node]] = {}

    def record(self, path: KeyPath, key: yaml.Node | None, value: yaml.Node) -> None:
        self._nodes[path] = (key, value)

    def line(self, path: KeyPath, *, at_key: bool = False) -> int | None:
        """The value's line for a scalar; the key's line for a collection, a key problem, or
        a missing key (then the nearest recorded ancestor's key)."""
        found = path
        while found not in self._nodes:
            if not found:
                return None
            found = found[:-1]
        if not found:
            return None
        key, value = self._nodes[found]
        if key is not None and (at_key or found != path or not isinstance(value, yaml.ScalarNode)):
            return key.start_mark.line + 1
        return value.start_mark.line + 1

    def line_in_scalar(self, path: KeyPath, text: str, error: ExpressionError) -> int | None:
        """The line of `error` inside the scalar at `path` whose value is `text`."""
        entry = self._nodes.get(path)
        if entry is None or error.position is None:
            return self.line(path)
        node = entry[1]
        first, last = node.start_mark.line + 1, node.end_mark.line + 1
        span = self.source[node.start_mark.index : node.end_mark.index]
        before = text[: error.position]
        index = _nth_index(span, error.token, before.count(error.token)) if error.token else None
        if index is not None:
            return first + span[:index].count("\n")
        block = isinstance(node, yaml.ScalarNode) and node.style in ("|", ">")
        offset = before.count("\n") + (1 if block else 0)
        return min(first + offset, last)


def _nth_index(text: str, needle: str, nth: int) -> int | None:
    index = -1
    for _ in range(nth + 1):
        index = text.find(needle, index + 1)
        if index < 0:
            return None
    return index


class Problems:
    """Collects problems; a problem hides those of later phases at the same key path."""

    def __init__(self, file: str, where: Locations) -> None:
        self.file = file
        self.where = where
        self._found: list[ConfigProblem] = []
        self._seen: set[tuple[KeyPath, str]] = set()
        self._paths: set[KeyPath] = set()
        self._hidden: set[KeyPath] = set()

    def add(
        self, path: KeyPath, message: str, *, at_key: bool = False, line: int | None = None
    ) -> None:
        if path in self._hidden or (path, message) in self._seen:
            return
        self._seen.add((path, message))
        self._paths.add(path)
        where = line if line is not None else self.where.line(path, at_key=at_key)
        self._found.append(ConfigProblem(self.file, format_path(path), where, message))

    def next_phase(self) -> None:
        self._hidden |= self._paths

    def raise_if_any(self) -> None:
        if self._found:
            raise ConfigError(sorted(self._found, key=lambda p: p.line or 0))


# Keys whose values are secrets (`auth.jwt.secret`, `store.encryption_key`): a message never
# quotes them, and a `${VAR}` there stays text (a numeric passphrase is still a string).
SECRET_KEYS = frozenset({"secret", "encryption_key"})


def is_secret(path: KeyPath) -> bool:
    """`path` is, or is inside, the value of a secret key."""
    return any(isinstance(key, str) and key in SECRET_KEYS for key in path)


def kind(value: object) -> str:
    """What a value is, without the value: `a mapping`, `an integer`, `a string`."""
    if value is None:
        return "null"
    if isinstance(value, dict):
        return "a mapping"
    if isinstance(value, list):
        return "a list"
    names = {bool: "a boolean", int: "an integer", float: "a number", str: "a string"}
    return names.get(type(value), type(value).__name__)


def describe(value: object) -> str:
    """What a value is, for a message: `a mapping`, `a list`, `integer 3`, `string 'x'`."""
    if isinstance(value, dict):
        return "a mapping"
    if isinstance(value, list):
        return "a list"
    names = {bool: "boolean", int: "integer", float: "number", str: "string"}
    name = names.get(type(value), type(value).__name__)
    return "null" if value is None else f"{name} {show(value)}"


def yaml_scalar(value: object) -> str:
    """A scalar as it is written in YAML (`true`, `null`, `8080`)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    return "null" if value is None else str(value)


def show(value: object) -> str:
    """A value as a message quotes it (long strings cut)."""
    if isinstance(value, str):
        return repr(value if len(value) <= 60 else value[:57] + "...")
    if isinstance(value, dict | list):
        return describe(value)
    return yaml_scalar(value)
