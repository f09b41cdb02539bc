"""The config's JSON Schema, read two ways (`sidecar.config.schema`): as an editor reads
the file before substitution, and strictly, as the loader checks substituted values."""

from __future__ import annotations

from typing import Any

import pytest
from jsonschema import Draft202012Validator

from sidecar.config.loader import load_config_text
from sidecar.config.schema import SUBSTITUTION_REFS, load_schema, strict_schema
from sidecar.errors import ConfigError

MINIMAL = {
    "database": {"url": "postgresql://localhost/app"},
    "auth": {"jwt": {"secret": "abc"}},
    "collections": {"todos": {"table": "todo_items", "read": "owner_id = :sub"}},
}


def _refs(node: Any) -> set[str]:
    if isinstance(node, dict):
        found = {node["$ref"]} if isinstance(node.get("$ref"), str) else set()
        return found.union(*(_refs(v) for v in node.values()))
    if isinstance(node, list):
        return set().union(*(_refs(v) for v in node))
    return set()


def _editor_errors(document: dict[str, Any]) -> list[str]:
    return [e.message for e in Draft202012Validator(load_schema()).iter_errors(document)]


def test_the_strict_schema_has_no_substitution_left() -> None:
    strict = strict_schema()
    Draft202012Validator.check_schema(strict)
    assert not _refs(strict) & SUBSTITUTION_REFS
    assert {"substitution", "substitutedText"}.isdisjoint(strict["$defs"])
    assert _refs(load_schema()) >= SUBSTITUTION_REFS


def test_a_lone_alternative_is_merged_into_the_value() -> None:
    schema = {
        "properties": {
            "port": {
                "anyOf": [{"type": "integer"}, {"$ref": "#/$defs/substitution"}],
                "default": 8080,
            },
            "lag": {
                "anyOf": [{"type": "null"}, {"type": "string"}, {"$ref": "#/$defs/substitution"}]
            },
        },
        "$defs": {"substitution": {"type": "string"}, "other": {"type": "string"}},
    }
    assert strict_schema(schema) == {
        "properties": {
            "port": {"type": "integer", "default": 8080},
            "lag": {"anyOf": [{"type": "null"}, {"type": "string"}]},
        },
        "$defs": {"other": {"type": "string"}},
    }


def test_a_merge_that_would_overwrite_a_keyword_is_refused() -> None:
    clash = {"anyOf": [{"default": 1}, {"$ref": "#/$defs/substitution"}], "default": 2}
    with pytest.raises(ValueError, match="repeats default"):
        strict_schema(clash)


@pytest.mark.parametrize(
    ("section", "values"),
    [
        ("server", {"port": "${PORT:-8080}", "ready_max_lag": "${LAG}"}),
        ("database", {"url": "x", "pool_size": "${POOL}", "create_publication": "${CREATE}"}),
        ("database", {"url": "x", "slot": "${SLOT}", "publication": "pub_${ENV}"}),
        ("limits", {"max_body": "${MB:-5}MB", "rate": "${RATE}/s", "pull_wait": "${WAIT}"}),
        ("limits", {"max_page_bytes": "${PAGE_BYTES:-1MB}"}),
        ("log", {"level": "${LOG_LEVEL:-info}", "format": "${LOG_FORMAT}"}),
    ],
)
def test_an_editor_accepts_substitutions_where_the_loader_substitutes(
    section: str, values: dict[str, str]
) -> None:
    document = {**MINIMAL, section: values}
    assert _editor_errors(document) == []


def test_an_editor_accepts_substitutions_in_lists_and_collections() -> None:
    todos = {
        "table": "${SCHEMA:-public}.todo_items",
        "key": ["${KEY}"],
        "read": "true",
        "write": {"ops": ["${OP}"]},
        "conflict": "${CONFLICT:-merge}",
    }
    document = {**MINIMAL, "collections": {"todos": todos}}
    document["auth"] = {"jwt": {"secret": "x", "algorithms": ["${ALG}"]}}
    assert _editor_errors(document) == []
    todos["conflict"] = {"latest_wins": "${COLUMN}"}
    assert _editor_errors(document) == []


def test_an_editor_still_refuses_what_no_substitution_can_fix() -> None:
    assert _editor_errors({**MINIMAL, "server": {"port": "${PORT}0"}})  # stays text
    assert _editor_errors({**MINIMAL, "server": {"port": "$${PORT}"}})  # a literal ${
    assert _editor_errors({**MINIMAL, "log": {"level": "verbose"}})
    assert _editor_errors({**MINIMAL, "collections": {"${NAME}": MINIMAL["collections"]["todos"]}})


def test_the_loader_checks_substituted_values_strictly() -> None:
    text = (
        "database: {url: x}\nauth: {jwt: {secret: abc}}\n"
        "collections: {todos: {table: t, read: 'true'}}\n"
        'server: {port: "$${PORT}"}\n'
    )
    with pytest.raises(ConfigError) as caught:
        load_config_text(text, "test.yaml", env={})
    (problem,) = caught.value.problems
    assert problem.path == "server.port"
    assert "expected an integer, got string '${PORT}'" in problem.message
