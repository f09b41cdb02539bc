"""Phase 2 of loading a config: the substituted data against the JSON Schema.

`check_structure` validates with jsonschema (draft 2020-12) against the strict schema
(`schema.strict_schema`) and turns each error into one located problem in the user's
words: unknown keys with the closest allowed one, missing keys with a hint, wrong types
with how to quote, enums, patterns (the schema's `patternErrorMessage`), bounds, and for
`oneOf`/`anyOf` the deepest precise error or the schema's own `errorMessage`.
"""

from __future__ import annotations

import difflib
import functools
from collections.abc import Iterator, Mapping
from typing import Any

from jsonschema import Draft202012Validator, ValidationError
from jsonschema.exceptions import best_match

from sidecar.config.problems import (
    KeyPath,
    Problems,
    describe,
    is_secret,
    kind,
    show,
    yaml_scalar,
)
from sidecar.config.schema import strict_schema

__all__ = ["check_structure"]

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
def _validator() -> Draft202012Validator:
    return Draft202012Validator(strict_schema())


def check_structure(data: Any, problems: Problems) -> None:
    """Add a problem for every way `data` does not match the schema."""
    for error in _validator().iter_errors(data):
        for path, message, at_key in _explain(error):
            value_path = path[:-1] if at_key else path  # at a key: the key is in the value
            if is_secret(value_path):
                path, message, at_key = value_path, _secret_message(error), False
            problems.add(path, message, at_key=at_key)


def _secret_message(error: ValidationError) -> str:
    """A problem with a secret's value, said without the value."""
    if error.validator == "type":
        types = _items(error.validator_value) or [error.validator_value]
        expected = " or ".join(_TYPE_NAMES.get(str(t), f"a {t}") for t in types)
        return f"expected {expected}, got {kind(error.instance)} (a secret: its value is not shown)"
    return f"not a valid value ({error.validator}; a secret: its value is not shown)"


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


def _schema(error: ValidationError) -> Mapping[str, Any]:
    """The schema keyword's node (the stubs allow a bool or unset: read those as empty)."""
    schema = error.schema
    return schema if isinstance(schema, Mapping) else {}


def _items(value: object) -> list[Any]:
    """An instance or keyword value that is a mapping (its keys) or a list, as a list."""
    return list(value) if isinstance(value, Mapping | list | tuple) else []


def _unknown_keys(error: ValidationError, path: KeyPath) -> Iterator[Found]:
    allowed = list(_schema(error).get("properties", {}))
    for key in _items(error.instance):
        if key in allowed:
            continue
        close = difflib.get_close_matches(key, allowed, n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        yield (*path, key), f"unknown key {key!r}{hint}; allowed: {', '.join(allowed)}", True


def _missing_keys(error: ValidationError, path: KeyPath) -> Iterator[Found]:
    present = _items(error.instance)
    for key in _items(error.validator_value):
        if key not in present:
            hint = _REQUIRED_HINTS.get(key)
            yield (*path, key), "missing (required)" + (f": {hint}" if hint else ""), False


def _wrong_type(error: ValidationError, path: KeyPath) -> Iterator[Found]:
    types = error.validator_value
    types = types if isinstance(types, list) else [types]
    expected = " or ".join(_TYPE_NAMES.get(t, f"a {t}") for t in types)
    message = f"expected {expected}, got {describe(error.instance)}"
    if types == ["string"] and isinstance(error.instance, bool | int | float | type(None)):
        message += f' (quote it to make it a string: "{yaml_scalar(error.instance)}")'
    yield path, message, False


def _not_in_enum(error: ValidationError, path: KeyPath) -> Iterator[Found]:
    choices = ", ".join(str(choice) for choice in _items(error.validator_value))
    yield path, f"{show(error.instance)} is not one of: {choices}", False


def _pattern(error: ValidationError, path: KeyPath) -> Iterator[Found]:
    yield path, _pattern_message(error), False


def _pattern_message(error: ValidationError) -> str:
    expected = _schema(error).get("patternErrorMessage")
    if expected is None:
        return error.message
    return f"{expected}, got {show(error.instance)}"


def _empty(error: ValidationError, path: KeyPath) -> Iterator[Found]:
    yield path, "must not be empty", False


def _too_long(error: ValidationError, path: KeyPath) -> Iterator[Found]:
    yield path, f"must be at most {error.validator_value} characters long", False


def _duplicate_item(error: ValidationError, path: KeyPath) -> Iterator[Found]:
    items = _items(error.instance)
    for index, item in enumerate(items):
        if item in items[:index]:
            first = items.index(item)
            yield (*path, index), f"{show(item)} is listed twice (also at [{first}])", False
            return


def _out_of_range(error: ValidationError, path: KeyPath) -> Iterator[Found]:
    bound = {
        "minimum": "at least",
        "exclusiveMinimum": "greater than",
        "maximum": "at most",
        "exclusiveMaximum": "less than",
    }[str(error.validator)]
    yield path, f"must be {bound} {error.validator_value}, got {show(error.instance)}", False


def _alternatives(error: ValidationError, path: KeyPath) -> Iterator[Found]:
    """oneOf/anyOf: a problem deeper in the value is the precise one; else the schema's own
    `errorMessage` (the convention VS Code also reads) says what was expected."""
    deeper = [e for e in error.context if len(e.absolute_path) > len(path)]
    if deeper:
        yield from _explain(best_match(deeper))
    elif "errorMessage" in _schema(error):
        yield path, str(_schema(error)["errorMessage"]), False
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
