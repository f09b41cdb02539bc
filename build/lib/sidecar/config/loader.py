"""YAML → `Config`, with every problem located and reported together.

Three phases, each collecting problems instead of stopping at the first:

1. read: compose the YAML (SafeLoader) keeping each node's line, reject duplicate keys,
   substitute `${VAR}` / `${VAR:-default}` inside scalar values (`$${` is a literal `${`);
2. structure: validate against `sidecar.schema.json` (package data) with jsonschema;
3. semantics: what the schema cannot say (durations, sizes, rates, rules, cross-key checks),
   converting to the frozen model in `sidecar.config.model` as it goes.

A problem found in a phase hides later problems at the same key path (one message per
value). Everything ends in one `ConfigError` whose problems are sorted by line.

Conventions documented here and in the schema:
- durations: `30d`, `12h`, `15m`, `10s`, `500ms` or a number of seconds → float seconds;
- sizes: `100B`, `512KB`, `5MB`, `1GB` or an integer of bytes → int bytes, binary units
  (KB = 1024, MB = 1024*1024, GB = 1024**3);
- rates: `50/s`, `600/m`, `1000/h` → `Rate(count, per_seconds)`;
- `${VAR:-default}` uses the default when VAR is unset or empty (as the shell does); a plain
  (unquoted) value that is entirely one substitution is re-typed after substitution, so
  `port: ${PORT:-8080}` is an integer while `"${PORT}"` stays a string; keys are never
  substituted;
- `store.path`: `~` is expanded and a relative path is relative to the directory of the
  config file (`:memory:` is kept as is; with `load_config_text` and a `<...>` file name,
  relative paths are kept relative);
- identifiers (tables, columns) are exact and case-sensitive: the sidecar quotes them.
"""

from __future__ import annotations

import difflib
import functools
import json
import math
import os
import re
from collections.abc import Iterator, Mapping
from importlib import resources
from types import MappingProxyType
from typing import Any, TypeVar, cast

import yaml
from jsonschema import Draft202012Validator, ValidationError
from jsonschema.exceptions import best_match

from sidecar.config.expressions import Expression, ExpressionError, parse_expression
from sidecar.config.model import (
    CONFLICT_KINDS,
    WRITE_OPS,
    AuthConfig,
    ClaimsConfig,
    CollectionConfig,
    Config,
    ConflictKind,
    ConflictStrategy,
    DatabaseConfig,
    JwtConfig,
    LimitsConfig,
    LogConfig,
    LogFormat,
    LogLevel,
    Rate,
    ServerConfig,
    SetValue,
    StoreConfig,
    TableRef,
    WriteConfig,
    WriteOp,
)
from sidecar.errors import ConfigError, ConfigProblem

__all__ = [
    "SCHEMA_RESOURCE",
    "format_path",
    "load_config",
    "load_config_text",
    "load_document",
    "load_schema",
    "parse_duration",
    "parse_rate",
    "parse_size",
]

SCHEMA_RESOURCE = "sidecar.schema.json"

KeyPath = tuple[str | int, ...]
T = TypeVar("T")
_UNREADABLE: Any = object()  # the YAML could not be composed at all

# ----------------------------------------------------------------------------- public API


def load_config(path: str | os.PathLike[str], env: Mapping[str, str] | None = None) -> Config:
    """Load and validate the config file at `path`; raise `ConfigError` with every problem."""
    file = os.fspath(path)
    try:
        with open(file, encoding="utf-8-sig") as handle:
            text = handle.read()
    except (OSError, UnicodeDecodeError) as error:
        reason = getattr(error, "strerror", None) or str(error)
        problem = ConfigProblem(file, "", None, f"cannot read the file: {reason}")
        raise ConfigError([problem]) from error
    base_dir = os.path.dirname(os.path.abspath(file))
    return _load(text, file, env, base_dir)


def load_config_text(
    text: str, file: str = "<config>", env: Mapping[str, str] | None = None
) -> Config:
    """Load a config from its text; `file` names it in problems (and anchors relative paths
    unless it looks like `<config>`)."""
    base_dir = None if file.startswith("<") else os.path.dirname(os.path.abspath(file))
    return _load(text, file, env, base_dir)


def load_document(text: str, file: str = "<config>", env: Mapping[str, str] | None = None) -> Any:
    """The YAML as plain data after `${VAR}` substitution, not validated (e.g. to validate
    it with another JSON Schema tool); `ConfigError` on syntax or substitution problems."""
    problems = _Problems(file, _Locations(text))
    data = _Reader(text, _env(env), problems).read()
    problems.raise_if_any()
    return None if data is _UNREADABLE else data


def load_schema() -> dict[str, Any]:
    """A fresh copy of the config's JSON Schema (draft 2020-12)."""
    return json.loads(_schema_text())


def format_path(path: KeyPath) -> str:
    """`("collections", "todos", "write", "ops", 1)` → `collections.todos.write.ops[1]`."""
    text = ""
    for part in path:
        if isinstance(part, int):
            text += f"[{part}]"
        else:
            text += f".{part}" if text else part
    return text


_DURATION = re.compile(r"([0-9]+(?:\.[0-9]+)?)(ms|s|m|h|d)")
_DURATION_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}
_SIZE = re.compile(r"([0-9]+)(B|KB|MB|GB)")
_SIZE_UNITS = {"B": 1, "KB": 1024, "MB": 1024**2, "GB": 1024**3}
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
            f" got {_show(value)}"
        )
    return _checked_positive(seconds, value, allow_zero=allow_zero)


def parse_size(value: object) -> int:
    """`100B`, `512KB`, `5MB`, `1GB` (binary units) or an integer of bytes → bytes."""
    if isinstance(value, str) and (match := _SIZE.fullmatch(value)):
        size = int(match[1]) * _SIZE_UNITS[match[2]]
    elif isinstance(value, int) and not isinstance(value, bool):
        size = value
    else:
        raise ValueError(
            f"expected a size such as 100B, 512KB, 5MB, 1GB or an integer of bytes,"
            f" got {_show(value)}"
        )
    return int(_checked_positive(size, value, allow_zero=False))


def parse_rate(value: object) -> Rate:
    """`50/s`, `600/m`, `1000/h` → `Rate(count, per_seconds)`."""
    match = _RATE.fullmatch(value) if isinstance(value, str) else None
    if match is None:
        raise ValueError(f"expected a rate such as 50/s, 600/m or 1000/h, got {_show(value)}")
    count = int(_checked_positive(int(match[1]), value, allow_zero=False))
    return Rate(count, _RATE_UNITS[match[2]])


def _checked_positive(number: float, value: object, *, allow_zero: bool) -> float:
    if not math.isfinite(number):
        raise ValueError(f"must be a finite number, got {_show(value)}")
    if number < 0 or (number == 0 and not allow_zero):
        bound = "zero or more" if allow_zero else "greater than zero"
        raise ValueError(f"must be {bound}, got {_show(value)}")
    return number


# ------------------------------------------------------------------ locations and problems


class _Locations:
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
        offset = before.count("\n") + (1 if node.style in ("|", ">") else 0)
        return min(first + offset, last)


def _nth_index(text: str, needle: str, nth: int) -> int | None:
    index = -1
    for _ in range(nth + 1):
        index = text.find(needle, index + 1)
        if index < 0:
            return None
    return index


class _Problems:
    """Collects problems; a problem hides those of later phases at the same key path."""

    def __init__(self, file: str, where: _Locations) -> None:
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


# ------------------------------------------------------------------------- phase 1: read

_STR_TAG = "tag:yaml.org,2002:str"
_MAP_TAG = "tag:yaml.org,2002:map"
_SEQ_TAG = "tag:yaml.org,2002:seq"
_MERGE_TAG = "tag:yaml.org,2002:merge"
_TIMESTAMP_TAG = "tag:yaml.org,2002:timestamp"
_NODE_BUDGET = 100_000  # values built, aliases expanded: a bound on "billion laughs"

_SUBSTITUTION = re.compile(r"\$\$\{|\$\{([^}]*)\}|\$\{")
_WHOLE_SUBSTITUTION = re.compile(r"\$\{[^}]*\}")
_VARIABLE = re.compile(r"([A-Za-z_][A-Za-z0-9_]*)(?::-(.*))?", re.DOTALL)


def _env(env: Mapping[str, str] | None) -> Mapping[str, str]:
    return os.environ if env is None else env


def _substitute(value: str, env: Mapping[str, str]) -> str:
    """Expand `${VAR}` and `${VAR:-default}`; `$${` → `${`. ValueError names what failed."""
    missing: list[str] = []

    def expand(match: re.Match[str]) -> str:
        if match[0] == "$${":
            return "${"
        body = match[1]
        variable = _VARIABLE.fullmatch(body) if body is not None else None
        if variable is None or (variable[2] is not None and "${" in variable[2]):
            shown = match[0] if body is not None else "${ without a closing }"
            raise ValueError(
                f"invalid substitution {shown}: write ${{NAME}} or ${{NAME:-default}}"
                " (nesting is not supported; $${ is a literal ${)"
            )
        name, default = variable[1], variable[2]
        found = env.get(name)
        if default is not None and not found:
            return default
        if found is None:
            missing.append(name)
            return ""
        return found

    result = _SUBSTITUTION.sub(expand, value)
    if missing:
        names = ", ".join(dict.fromkeys(missing))
        plural = "s" if len(set(missing)) > 1 else ""
        raise ValueError(
            f"environment variable{plural} {names} not set"
            f" (set it, or give a default: ${{{missing[0]}:-default}})"
        )
    return result


class _Reader:
    """Composes the YAML and builds plain data, recording every node's location."""

    def __init__(self, text: str, env: Mapping[str, str], problems: _Problems) -> None:
        self.text = text
        self.env = env
        self.problems = problems
        self.where = problems.where
        self._constructor = yaml.constructor.SafeConstructor()
        self._resolver = yaml.resolver.Resolver()
        self._open: set[int] = set()
        self._budget = _NODE_BUDGET

    def read(self) -> Any:
        try:
            root = yaml.compose(self.text, Loader=yaml.SafeLoader)
        except yaml.MarkedYAMLError as error:
            self.problems.add((), _yaml_message(error, self.text), line=_yaml_line(error))
            return _UNREADABLE
        except (yaml.YAMLError, RecursionError) as error:
            self.problems.add((), f"not readable as YAML: {error}")
            return _UNREADABLE
        if root is None:
            self.problems.add((), "the file is empty: expected database, auth and collections")
            return _UNREADABLE
        return self._value((), None, root)

    def _value(self, path: KeyPath, key: yaml.Node | None, node: yaml.Node) -> Any:
        self.where.record(path, key, node)
        self._budget -= 1
        if self._budget < 0:
            if self._budget == -1:
                self.problems.add(path, "the document is too large (aliases expand too much)")
            return None
        if isinstance(node, yaml.ScalarNode):
            return self._scalar(path, node)
        if id(node) in self._open:
            self.problems.add(path, "an alias refers to a value that contains it")
            return None
        self._open.add(id(node))
        try:
            return self._collection(path, node)
        finally:
            self._open.discard(id(node))

    def _collection(self, path: KeyPath, node: yaml.Node) -> Any:
        if isinstance(node, yaml.SequenceNode) and node.tag == _SEQ_TAG:
            return [self._value((*path, i), None, item) for i, item in enumerate(node.value)]
        if isinstance(node, yaml.MappingNode) and node.tag == _MAP_TAG:
            return self._mapping(path, node)
        self.problems.add(path, f"unsupported YAML tag {node.tag}")
        return None

    def _mapping(self, path: KeyPath, node: yaml.MappingNode) -> dict[str, Any]:
        result: dict[str, Any] = {}
        for key_node, value_node in node.value:
            if key_node.tag == _MERGE_TAG:
                result.update(self._merged(path, value_node))
        lines: dict[str, int] = {}
        for key_node, value_node in node.value:
            if key_node.tag == _MERGE_TAG:
                continue
            key = self._key(path, key_node, lines)
            if key is not None:
                result[key] = self._value((*path, key), key_node, value_node)
        return result

    def _merged(self, path: KeyPath, node: yaml.Node) -> dict[str, Any]:
        """The mappings of a `<<` merge key (the first of a list wins, as YAML says)."""
        sources = node.value if isinstance(node, yaml.SequenceNode) else [node]
        result: dict[str, Any] = {}
        for source in reversed(sources):
            if not isinstance(source, yaml.MappingNode) or id(source) in self._open:
                self.problems.add(path, "<< (merge) takes a mapping or a list of mappings")
                continue
            self._open.add(id(source))
            try:
                result.update(self._mapping(path, source))
            finally:
                self._open.discard(id(source))
        return result

    def _key(self, path: KeyPath, node: yaml.Node, lines: dict[str, int]) -> str | None:
        line = node.start_mark.line + 1
        if not isinstance(node, yaml.ScalarNode):
            self.problems.add(path, "keys must be plain strings", line=line)
            return None
        key = str(node.value)
        if key in lines:
            self.problems.add(
                (*path, key), f"duplicate key {key!r} (first on line {lines[key]})", line=line
            )
            return None
        lines[key] = line
        return key

    def _scalar(self, path: KeyPath, node: yaml.ScalarNode) -> Any:
        value, tag = str(node.value), node.tag
        if "${" in value:
            try:
                value = _substitute(value, self.env)
            except ValueError as error:
                self.problems.add(path, str(error))
                return None
            if node.style is None and tag == _STR_TAG and _WHOLE_SUBSTITUTION.fullmatch(node.value):
                tag = self._resolver.resolve(yaml.ScalarNode, value, (True, False))
        if tag == _TIMESTAMP_TAG:
            return value  # dates stay text: nothing in the config is a date
        resolved = yaml.ScalarNode(tag, value, node.start_mark, node.end_mark, node.style)
        try:
            return self._constructor.construct_object(resolved)
        except (yaml.YAMLError, ValueError, TypeError) as error:
            self.problems.add(path, f"cannot read this value: {error}")
            return None


def _yaml_line(error: yaml.MarkedYAMLError) -> int | None:
    mark = error.problem_mark or error.context_mark
    return mark.line + 1 if mark is not None else None


def _yaml_message(error: yaml.MarkedYAMLError, source: str) -> str:
    parts = [error.context, error.problem]
    if error.context_mark is not None and error.problem_mark is not None and error.context:
        parts[0] = f"{error.context} (line {error.context_mark.line + 1})"
    message = "invalid YAML: " + " ".join(part for part in parts if part)
    line, lines = _yaml_line(error), source.split("\n")
    source_line = lines[line - 1] if line and line <= len(lines) else ""
    if "flow" in (error.context or "") and "${" in source_line:
        message += ' (inside {...} or [...], quote a value using ${...}: {url: "${DATABASE_URL}"})'
    return message


# -------------------------------------------------------------------- phase 2: structure

_REQUIRED_HINTS = {
    "read": 'use read: "true" to expose every row to every authenticated caller',
    "database": 'the PostgreSQL database to sync, e.g. database: {url: "${DATABASE_URL}"}',
    "auth": 'how tokens are verified, e.g. auth: {jwt: {secret: "${JWT_SECRET}"}}',
    "collections": "the tables to sync, by collection name",
    "url": "e.g. url: ${DATABASE_URL}",
    "ops": "the operations clients may push, e.g. ops: [insert, update, delete]",
}
_TYPE_NAMES = {"object": "a mapping", "array": "a list", "null": "null", "integer": "an integer"}

Found = tuple[KeyPath, str, bool]  # key path, message, point at the key rather than the value


@functools.cache
def _schema_text() -> str:
    return resources.files("sidecar.config").joinpath(SCHEMA_RESOURCE).read_text("utf-8")


@functools.cache
def _validator() -> Draft202012Validator:
    return Draft202012Validator(json.loads(_schema_text()))


def _check_structure(data: Any, problems: _Problems) -> None:
    for error in _validator().iter_errors(data):
        for path, message, at_key in _explain(error):
            problems.add(path, message, at_key=at_key)


def _explain(error: ValidationError) -> Iterator[Found]:
    path = tuple(error.absolute_path)
    if "propertyNames" in error.absolute_schema_path:
        yield (*path, str(error.instance)), _pattern_message(error), True
        return
    explain = _EXPLAINERS.get(str(error.validator))
    if explain is None:
        yield path, error.message, False
    else:
        yield from explain(error, path)


def _unknown_keys(error: ValidationError, path: KeyPath) -> Iterator[Found]:
    allowed = list(error.schema.get("properties", {}))
    for key in error.instance:
        if key in allowed:
            continue
        close = difflib.get_close_matches(key, allowed, n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        yield (*path, key), f"unknown key {key!r}{hint}; allowed: {', '.join(allowed)}", True


def _missing_keys(error: ValidationError, path: KeyPath) -> Iterator[Found]:
    for key in error.validator_value:
        if key not in error.instance:
            hint = _REQUIRED_HINTS.get(key)
            yield (*path, key), "missing (required)" + (f": {hint}" if hint else ""), False


def _wrong_type(error: ValidationError, path: KeyPath) -> Iterator[Found]:
    types = error.validator_value
    types = types if isinstance(types, list) else [types]
    expected = " or ".join(_TYPE_NAMES.get(t, f"a {t}") for t in types)
    message = f"expected {expected}, got {_kind(error.instance)}"
    if types == ["string"] and isinstance(error.instance, bool | int | float | type(None)):
        message += f' (quote it to make it a string: "{_yaml_scalar(error.instance)}")'
    yield path, message, False


def _not_in_enum(error: ValidationError, path: KeyPath) -> Iterator[Found]:
    choices = ", ".join(str(choice) for choice in error.validator_value)
    yield path, f"{_show(error.instance)} is not one of: {choices}", False


def _pattern(error: ValidationError, path: KeyPath) -> Iterator[Found]:
    yield path, _pattern_message(error), False


def _pattern_message(error: ValidationError) -> str:
    expected = error.schema.get("patternErrorMessage")
    if expected is None:
        return error.message
    return f"{expected}, got {_show(error.instance)}"


def _empty(error: ValidationError, path: KeyPath) -> Iterator[Found]:
    yield path, "must not be empty", False


def _too_long(error: ValidationError, path: KeyPath) -> Iterator[Found]:
    yield path, f"must be at most {error.validator_value} characters long", False


def _duplicate_item(error: ValidationError, path: KeyPath) -> Iterator[Found]:
    items = list(error.instance)
    for index, item in enumerate(items):
        if item in items[:index]:
            first = items.index(item)
            yield (*path, index), f"{_show(item)} is listed twice (also at [{first}])", False
            return


def _out_of_range(error: ValidationError, path: KeyPath) -> Iterator[Found]:
    bound = {
        "minimum": "at least",
        "exclusiveMinimum": "greater than",
        "maximum": "at most",
        "exclusiveMaximum": "less than",
    }[str(error.validator)]
    yield path, f"must be {bound} {error.validator_value}, got {_show(error.instance)}", False


def _alternatives(error: ValidationError, path: KeyPath) -> Iterator[Found]:
    """oneOf/anyOf: a problem deeper in the value is the precise one; else the schema's own
    `errorMessage` (the convention VS Code also reads) says what was expected."""
    deeper = [e for e in error.context if len(e.absolute_path) > len(path)]
    if deeper:
        yield from _explain(best_match(deeper))
    elif "errorMessage" in error.schema:
        yield path, str(error.schema["errorMessage"]), False
    elif error.context:
        yield from _explain(best_match(error.context))
    else:
        yield path, error.message, False


_EXPLAINERS = {
    "additionalProperties": _unknown_keys,
    "required": _missing_keys,
    "type": _wrong_type,
    "enum": _not_in_enum,
    "pattern": _pattern,
    "minLength": _empty,
    "minItems": _empty,
    "minProperties": _empty,
    "maxLength": _too_long,
    "uniqueItems": _duplicate_item,
    "minimum": _out_of_range,
    "exclusiveMinimum": _out_of_range,
    "maximum": _out_of_range,
    "exclusiveMaximum": _out_of_range,
    "oneOf": _alternatives,
    "anyOf": _alternatives,
}


def _kind(value: object) -> str:
    if isinstance(value, dict):
        return "a mapping"
    if isinstance(value, list):
        return "a list"
    names = {bool: "boolean", int: "integer", float: "number", str: "string"}
    name = names.get(type(value), type(value).__name__)
    return "null" if value is None else f"{name} {_show(value)}"


def _yaml_scalar(value: object) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return "null" if value is None else str(value)


def _show(value: object) -> str:
    if isinstance(value, str):
        return repr(value if len(value) <= 60 else value[:57] + "...")
    if isinstance(value, dict | list):
        return _kind(value)
    return _yaml_scalar(value)


# -------------------------------------------------------------------- phase 3: semantics

_CLAIM_REF = re.compile(r":[A-Za-z_][A-Za-z0-9_]*")
_LOG_LEVELS = ("debug", "info", "warning", "error")
_LOG_FORMATS = ("auto", "json", "console")
_MAX_IDENTIFIER = 63


def _load(text: str, file: str, env: Mapping[str, str] | None, base_dir: str | None) -> Config:
    problems = _Problems(file, _Locations(text))
    data = _Reader(text, _env(env), problems).read()
    if data is _UNREADABLE:
        problems.raise_if_any()
    problems.next_phase()
    _check_structure(data, problems)
    problems.next_phase()
    config = _Builder(file, base_dir, problems).config(data)
    problems.raise_if_any()
    return config


def _section(raw: Any, key: str) -> dict[str, Any]:
    value = raw.get(key) if isinstance(raw, dict) else None
    return value if isinstance(value, dict) else {}


def _typed(raw: dict[str, Any], key: str, kind: type[T], default: T) -> T:
    """`raw[key]` when present and of `kind` (the schema reported anything else)."""
    value = raw.get(key, default)
    if kind is int and isinstance(value, float) and value.is_integer():
        value = int(value)
    if isinstance(value, bool) and kind is not bool:
        return default
    return value if isinstance(value, kind) else default


def _optional_str(raw: dict[str, Any], key: str) -> str | None:
    value = raw.get(key)
    return value if isinstance(value, str) else None


def _names(value: Any) -> tuple[str, ...] | None:
    if isinstance(value, list) and all(isinstance(item, str) for item in value):
        return tuple(value)
    return None


class _Builder:
    """Builds the model from validated data, adding the problems the schema cannot find."""

    def __init__(self, file: str, base_dir: str | None, problems: _Problems) -> None:
        self.file = file
        self.base_dir = base_dir
        self.problems = problems

    def config(self, data: Any) -> Config:
        collections = _section(data, "collections")
        built = {name: self.collection(name, body) for name, body in collections.items()}
        return Config(
            file=self.file,
            database=self.database(_section(data, "database")),
            store=self.store(_section(data, "store")),
            server=self.server(_section(data, "server")),
            auth=self.auth(_section(data, "auth")),
            limits=self.limits(_section(data, "limits")),
            log=self.log(_section(data, "log")),
            collections=MappingProxyType({k: c for k, c in built.items() if c is not None}),
        )

    # -- converted values

    def duration(
        self, raw: dict[str, Any], path: KeyPath, default: float, *, allow_zero: bool = False
    ) -> float:
        key = path[-1]
        if key not in raw:
            return default
        try:
            return parse_duration(raw[key], allow_zero=allow_zero)
        except ValueError as error:
            self.problems.add(path, str(error))
            return default

    def size(self, raw: dict[str, Any], path: KeyPath, default: int) -> int:
        if path[-1] not in raw:
            return default
        try:
            return parse_size(raw[path[-1]])
        except ValueError as error:
            self.problems.add(path, str(error))
            return default

    def rate(self, raw: dict[str, Any], path: KeyPath) -> Rate | None:
        if raw.get(path[-1]) is None:
            return None
        try:
            return parse_rate(raw[path[-1]])
        except ValueError as error:
            self.problems.add(path, str(error))
            return None

    def expression(self, raw: dict[str, Any], path: KeyPath) -> Expression | None:
        text = raw.get(path[-1])
        if not isinstance(text, str) or not text:
            return None  # missing or not a string: the schema said so
        try:
            return parse_expression(text)
        except RecursionError:
            self.problems.add(path, "invalid expression: nested too deeply")
            return None
        except ExpressionError as error:
            near = f" (near {error.token!r})" if error.token else ""
            line = self.problems.where.line_in_scalar(path, text, error)
            self.problems.add(path, f"invalid expression: {error.message}{near}", line=line)
            return None

    # -- sections

    def database(self, raw: dict[str, Any]) -> DatabaseConfig:
        defaults = DatabaseConfig(url="")
        url = _typed(raw, "url", str, "")
        if "url" in raw and isinstance(raw["url"], str) and not url.strip():
            self.problems.add(("database", "url"), "must not be empty")
        return DatabaseConfig(
            url=url,
            publication=_typed(raw, "publication", str, defaults.publication),
            slot=_typed(raw, "slot", str, defaults.slot),
            create_publication=_typed(raw, "create_publication", bool, defaults.create_publication),
            pool_size=_typed(raw, "pool_size", int, defaults.pool_size),
        )

    def store(self, raw: dict[str, Any]) -> StoreConfig:
        defaults = StoreConfig()
        path = _typed(raw, "path", str, defaults.path)
        retention = self.duration(
            raw, ("store", "tombstone_retention"), defaults.tombstone_retention
        )
        if path == ":memory:":
            self.problems.add(
                ("store", "path"),
                "must be a file: the store is read from several threads and must survive "
                "restarts (e.g. ./data/sidecar.db)",
            )
        return StoreConfig(path=self.store_path(path), tombstone_retention=retention)

    def store_path(self, path: str) -> str:
        if path == ":memory:":
            return path
        path = os.path.expanduser(path)
        if self.base_dir is None or os.path.isabs(path):
            return path
        return os.path.normpath(os.path.join(self.base_dir, path))

    def server(self, raw: dict[str, Any]) -> ServerConfig:
        defaults = ServerConfig()
        return ServerConfig(
            host=_typed(raw, "host", str, defaults.host),
            port=_typed(raw, "port", int, defaults.port),
            ready_max_lag=(
                self.duration(raw, ("server", "ready_max_lag"), 0.0)
                if raw.get("ready_max_lag") is not None
                else None
            ),
        )

    def auth(self, raw: dict[str, Any]) -> AuthConfig:
        claims = _section(raw, "claims")
        defaults = ClaimsConfig()
        return AuthConfig(
            jwt=self.jwt(_section(raw, "jwt")),
            claims=ClaimsConfig(
                user=_typed(claims, "user", str, defaults.user),
                device=_typed(claims, "device", str, defaults.device),
                scope=_typed(claims, "scope", str, defaults.scope),
                roles=_typed(claims, "roles", str, defaults.roles),
            ),
            admin=self.admin(raw),
        )

    def admin(self, raw: dict[str, Any]) -> Expression | None:
        rule = self.expression(raw, ("auth", "admin"))
        if rule is not None and rule.columns:
            columns = ", ".join(sorted(rule.columns))
            self.problems.add(
                ("auth", "admin"), f"may only use :claims, not columns (found {columns})"
            )
        return rule

    def jwt(self, raw: dict[str, Any]) -> JwtConfig:
        defaults = JwtConfig()
        secret = _optional_str(raw, "secret")
        jwks = _optional_str(raw, "jwks")
        fallback = ("RS256", "ES256") if jwks and not secret else defaults.algorithms
        algorithms = _names(raw.get("algorithms")) or fallback
        self.check_algorithms(algorithms, secret, jwks)
        return JwtConfig(
            secret=secret,
            jwks=jwks,
            issuer=_optional_str(raw, "issuer"),
            audience=_optional_str(raw, "audience"),
            algorithms=algorithms,
            leeway=self.duration(raw, ("auth", "jwt", "leeway"), defaults.leeway, allow_zero=True),
            max_age=(
                self.duration(raw, ("auth", "jwt", "max_age"), 0.0)
                if raw.get("max_age") is not None
                else None
            ),
        )

    def check_algorithms(
        self, algorithms: tuple[str, ...], secret: str | None, jwks: str | None
    ) -> None:
        if bool(secret) == bool(jwks):
            return  # the schema reported "exactly one of"
        path: KeyPath = ("auth", "jwt", "algorithms")
        for index, name in enumerate(algorithms):
            if secret and not name.startswith("HS"):
                message = "a secret verifies HMAC tokens only: use HS256, HS384 or HS512"
                self.problems.add((*path, index), f"{name}: {message}")
            if jwks and name.startswith("HS"):
                message = "HMAC algorithms cannot be used with jwks (public keys)"
                self.problems.add((*path, index), f"{name}: {message}")

    def limits(self, raw: dict[str, Any]) -> LimitsConfig:
        defaults = LimitsConfig()
        return LimitsConfig(
            max_page=_typed(raw, "max_page", int, defaults.max_page),
            max_push=_typed(raw, "max_push", int, defaults.max_push),
            max_body=self.size(raw, ("limits", "max_body"), defaults.max_body),
            rate=self.rate(raw, ("limits", "rate")),
            pull_wait=self.duration(raw, ("limits", "pull_wait"), defaults.pull_wait),
            live_per_subject=_typed(raw, "live_per_subject", int, defaults.live_per_subject),
            live_total=_typed(raw, "live_total", int, defaults.live_total),
            page_cache=self.size(raw, ("limits", "page_cache"), defaults.page_cache),
            client_timeout=self.duration(
                raw, ("limits", "client_timeout"), defaults.client_timeout
            ),
        )

    def log(self, raw: dict[str, Any]) -> LogConfig:
        defaults = LogConfig()
        level = raw.get("level", defaults.level)
        form = raw.get("format", defaults.format)
        return LogConfig(
            level=cast(LogLevel, level) if level in _LOG_LEVELS else defaults.level,
            format=cast(LogFormat, form) if form in _LOG_FORMATS else defaults.format,
        )

    # -- collections

    def collection(self, name: str, raw: Any) -> CollectionConfig | None:
        raw = raw if isinstance(raw, dict) else {}
        path: KeyPath = ("collections", name)
        table = self.table(raw.get("table"), (*path, "table"))
        key, columns = _names(raw.get("key")), _names(raw.get("columns"))
        self.check_among(key, columns, (*path, "key"), "key column")
        read = self.expression(raw, (*path, "read"))
        write = self.write(_section(raw, "write"), (*path, "write"))
        conflict = self.conflict(raw.get("conflict", "reject"), columns, (*path, "conflict"))
        if table is None or read is None:
            return None
        return CollectionConfig(
            name=name,
            table=table,
            key=key,
            columns=columns,
            read=read,
            write=write,
            conflict=conflict,
            line=self.problems.where.line(path, at_key=True),
            roles=_names(raw.get("roles")),
        )

    def table(self, value: Any, path: KeyPath) -> TableRef | None:
        if not isinstance(value, str):
            return None
        schema, _, name = value.rpartition(".")
        for part in (schema, name):
            if len(part) > _MAX_IDENTIFIER:
                self.problems.add(path, f"{part!r} is longer than {_MAX_IDENTIFIER} characters")
        return TableRef(schema or "public", name)

    def check_among(
        self,
        names: tuple[str, ...] | None,
        columns: tuple[str, ...] | None,
        path: KeyPath,
        what: str,
    ) -> None:
        if names is None or columns is None:
            return
        for index, name in enumerate(names):
            if name not in columns:
                listed = ", ".join(columns)
                self.problems.add((*path, index), f"{what} {name!r} is not among columns: {listed}")

    def write(self, raw: dict[str, Any], path: KeyPath) -> WriteConfig:
        ops = _names(raw.get("ops")) or ()
        return WriteConfig(
            ops=tuple(cast(WriteOp, op) for op in ops if op in WRITE_OPS),
            set=self.set_values(raw.get("set"), (*path, "set")),
            immutable=_names(raw.get("immutable")) or (),
            check=self.expression(raw, (*path, "check")),
        )

    def set_values(self, raw: Any, path: KeyPath) -> Mapping[str, SetValue]:
        if not isinstance(raw, dict):
            return MappingProxyType({})
        for column, value in raw.items():
            if isinstance(value, str) and value.startswith(":") and not _CLAIM_REF.fullmatch(value):
                self.problems.add(
                    (*path, column),
                    f"{value!r}: a claim is written ':' and its name, e.g. ':sub'"
                    " (values starting with ':' always name a claim)",
                )
        return MappingProxyType(dict(raw))

    def conflict(
        self, value: Any, columns: tuple[str, ...] | None, path: KeyPath
    ) -> ConflictStrategy:
        if isinstance(value, str) and value in CONFLICT_KINDS and value != "latest_wins":
            return ConflictStrategy(cast(ConflictKind, value))
        column = value.get("latest_wins") if isinstance(value, dict) else None
        if not isinstance(column, str):
            return ConflictStrategy()  # the schema reported it
        if columns is not None and column not in columns:
            listed = ", ".join(columns)
            self.problems.add(
                (*path, "latest_wins"), f"column {column!r} is not among columns: {listed}"
            )
        return ConflictStrategy("latest_wins", column)
