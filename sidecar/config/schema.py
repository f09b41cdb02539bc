"""The config's JSON Schema (draft 2020-12): `sidecar.schema.json`, package data.

One schema, read two ways:

- an editor checks the file as written, before substitution. Wherever the loader
  substitutes, the schema also accepts a `${VAR}` string: an `anyOf`/`oneOf` alternative
  `#/$defs/substitution` (the whole value is one `${VAR}` or `${VAR:-default}`: integers
  and booleans, re-typed after substitution) or `#/$defs/substitutedText` (text holding
  substitutions: strings with a pattern or a list of allowed values, durations, sizes);
- the loader checks the substituted values against `strict_schema()`, the same schema
  without those alternatives (a `${` left after substitution is text written `$${`).
  docs/config.md is generated from the strict schema as well (tools/config_reference.py).
"""

from __future__ import annotations

import functools
import json
from importlib import resources
from typing import Any

__all__ = ["SCHEMA_RESOURCE", "SUBSTITUTION_REFS", "load_schema", "strict_schema"]

SCHEMA_RESOURCE = "sidecar.schema.json"
SUBSTITUTION_DEFS = ("substitution", "substitutedText")
SUBSTITUTION_REFS = frozenset(f"#/$defs/{name}" for name in SUBSTITUTION_DEFS)
_ALTERNATIVES = ("anyOf", "oneOf")


@functools.cache
def _schema_text() -> str:
    return resources.files("sidecar.config").joinpath(SCHEMA_RESOURCE).read_text("utf-8")


def load_schema() -> dict[str, Any]:
    """A fresh copy of the config's JSON Schema, as an editor reads it."""
    schema: dict[str, Any] = json.loads(_schema_text())
    return schema


def strict_schema(schema: dict[str, Any] | None = None) -> dict[str, Any]:
    """The schema substituted values must match: `schema` (default: the config's) with every
    substitution alternative removed; an `anyOf`/`oneOf` left with one alternative becomes
    that alternative, merged into the value's own keywords (description, default, ...)."""
    stripped: dict[str, Any] = _strip(load_schema() if schema is None else schema)
    return stripped


def _strip(node: Any) -> Any:
    if isinstance(node, list):
        return [_strip(item) for item in node]
    if not isinstance(node, dict):
        return node
    result: dict[str, Any] = {}
    for key, value in node.items():
        if key == "$defs":
            result[key] = {n: _strip(d) for n, d in value.items() if n not in SUBSTITUTION_DEFS}
        elif key in _ALTERNATIVES and isinstance(value, list):
            kept = [alt for alt in value if not _is_substitution(alt)]
            if len(kept) == 1 and len(kept) < len(value):
                only = _strip(kept[0])
                clash = sorted(set(only) & set(node))
                if clash:
                    raise ValueError(f"schema: {key} alternative repeats {', '.join(clash)}")
                result.update(only)
            else:
                result[key] = _strip(kept)
        else:
            result[key] = _strip(value)
    return result


def _is_substitution(alternative: Any) -> bool:
    return isinstance(alternative, dict) and alternative.get("$ref") in SUBSTITUTION_REFS
