"""Generate docs/config.md from the config's JSON Schema.

    python -m tools.config_reference          # write docs/config.md
    python -m tools.config_reference --check  # exit 1 when docs/config.md is out of date

Every key of `sidecar/config/sidecar.schema.json` gets its type, whether it is required,
its default, its allowed values, patterns and bounds, its examples and its description, in
the schema's own order. The output depends on the schema (and on the notes below) only, so
it is byte-for-byte reproducible; `tests/repo/test_docs.py` keeps the file current.

The page describes the values the sidecar checks after substitution: the schema's
`${VAR}` alternatives (there for editors, see `sidecar.config.schema`) are left out, as the
loader leaves them out (`strict_schema`).

`STATUS_NOTES` says where the code does not act on a key yet: the schema describes the
design, the notes what the running sidecar does today. Update them with the code.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from sidecar.config.schema import strict_schema

ROOT = Path(__file__).resolve().parents[1]
SCHEMA_PATH = ROOT / "sidecar" / "config" / "sidecar.schema.json"
OUTPUT_PATH = ROOT / "docs" / "config.md"

_WRITE_SUB_SELECTS = (
    "It may use sub-selects of the form `read` allows (`project_id IN (SELECT project_id "
    "FROM members WHERE user_id = :sub AND role = 'editor')`); PostgreSQL evaluates them in "
    "the write statement, so a negated one (`NOT IN (SELECT …)`) is allowed here. Their "
    "tables must exist, have the columns named and grant SELECT to the sidecar's role "
    "(`sidecar check` names each problem); they are not published or captured."
)

# Where the running code does not (yet) do what the schema describes. Keyed by key path.
STATUS_NOTES: dict[str, str] = {
    "database.create_publication": (
        "PostgreSQL lets only the **owner** of a table (or a superuser) add it to a "
        "publication, so `CREATE` on the database is enough only when the sidecar's role "
        "owns the mapped tables; otherwise have an administrator create the publication and "
        "set this to false (see [ops.md](ops.md#privileges)). A mapped table missing from an "
        "existing publication is a preflight problem naming the `ALTER PUBLICATION … ADD "
        "TABLE` to run."
    ),
    "store.path": "`:memory:` is refused: the store must be a file that survives restarts.",
    "store.url": (
        "Set either `store.path` or `store.url`, not both. The store's tables (and the "
        "pending mutation ids, table `pending`) are created in `store.schema` at the first "
        "start; the role needs `CREATE` on the database (or an existing schema it owns). "
        "One sidecar per store for now: replicas sharing a store come later (issue 16)."
    ),
    "store.schema": (
        "Refused when `store.url` names the application's own database (the same host, port "
        "and database as `database.url`) and the schema is `public` or the schema of a "
        "synced table: nothing of the store goes into the application's schema. Ignored "
        "without `store.url`."
    ),
    "store.tombstone_retention": (
        "Tombstones (and recorded mutation ids) older than this are purged once the initial "
        "copy is done and then every hour, so a cursor stays valid for at least this long "
        "after the change it points at was stored, and at most about an hour longer."
    ),
    "auth.jwt.jwks": (
        "A file path or an http(s) URL. The key set is cached for 10 minutes and fetched again "
        "when a token names an unknown `kid` (at most every 30 s). Tokens must carry `exp`."
    ),
    "auth.jwt.secret": (
        "`sidecar check` warns (and `sidecar run` logs at start) when it is shorter than its "
        "algorithm's hash (32 bytes for HS256, 48 for HS384, 64 for HS512) or a published "
        "value such as the demo's; the secret itself is never printed."
    ),
    "auth.admin": (
        "Grants `GET /v1/audit`. `/metrics`, `/readyz` and `/healthz` need no token. A claim "
        'that is a list (`"role": ["admin", "user"]`) satisfies the rule when one '
        "of its elements does (the rule is tried with each element in its place); a claim "
        "the rule cannot compare (an object, or a boolean compared to text) does not."
    ),
    "collections.<collection>.read": (
        "`now()` is refused here (rows are scoped when they change, not when they are read); "
        "a rule that cannot be turned into scopes over the table's column types is a "
        "preflight problem in `sidecar check` and at start. `sidecar check` warns when "
        "writes are allowed under a rule with an OR-branch that names no `:claim` and no "
        '`write.where` is set, and when `read: "true"` shows every column (no `columns:`); '
        "a branch through a sub-select whose condition names no `:claim` "
        "(`project_id IN (SELECT id FROM projects WHERE public)`) counts as such a branch.\n\n"
        "**Membership sub-selects.** A rule may decide visibility through other tables: "
        "`<column> IN (SELECT <column> FROM <table> WHERE <condition>)` (or "
        "`<column> = ANY (SELECT …)`), e.g. "
        "`project_id IN (SELECT project_id FROM public.members WHERE user_id = :sub)`. The "
        "sub-select selects one bare column of one table (`table` or `schema.table`, no "
        "alias); the WHERE is optional and uses that table's columns, `:claims` and "
        "literals, with the operators and functions of any rule; it may itself hold such a "
        "sub-select, up to 3 levels deep (organisation → project → task: "
        "`project_id IN (SELECT id FROM projects WHERE org_id IN (SELECT org_id FROM "
        "org_members WHERE user_id = :sub))`). Sub-selects combine with AND/OR and with "
        "ordinary conditions (`owner = :sub OR project_id IN (SELECT …)`). Claims inside a "
        "sub-select are bound like any other (`user_id = ANY(:groups)` takes a list claim; "
        "a single value is a one-element list).\n\n"
        "Refused, each a config error at its file and line saying what to write instead: "
        "joins and several or derived tables (select from one table and nest a sub-select "
        "for the next level), aggregates, `GROUP BY`, `HAVING`, `DISTINCT`, `ORDER BY`, "
        "`LIMIT`/`OFFSET`, `UNION`, `WITH`, `VALUES`, `EXISTS`, `= ALL`, a comparison "
        "with a sub-select, an expression on either side of `IN` (one column each), more "
        "than 3 levels, correlated sub-selects (a sub-select names only its own table's "
        "columns: a column its table lacks is an error naming it), and a negated sub-select "
        "(`NOT IN (SELECT …)`, `NOT (… IN (SELECT …))`: write a condition that selects the "
        "rows that grant access, which may use NOT).\n\n"
        "A table a sub-select names is a **membership table**: it must exist, have a primary "
        "key or a replica identity (`ALTER TABLE … REPLICA IDENTITY USING INDEX …`) and "
        "grant SELECT to the sidecar's role, and the publication must include it "
        "(`sidecar check` names each problem with the SQL that fixes it; with "
        "`database.create_publication` the sidecar adds it). Its changes are captured (it is "
        "published, copied and streamed) to keep visibility exact, but its rows are served "
        "to nobody unless a collection maps the table. Pushes evaluate the rule, sub-selects "
        "included, inside PostgreSQL in the write statement: inserting a row, or moving one, "
        "where the caller has no membership is `rejected` (`forbidden`); a row outside the "
        "caller's memberships is missing to it (an update is a `not_found` conflict, a "
        "delete has nothing to do)."
    ),
    "collections.<collection>.write.where": (
        "Both the read rule and `write.where` must hold: a row the caller cannot read is never "
        "writable. A refused row is `rejected` with `forbidden`, as a row outside the read "
        "rule is. " + _WRITE_SUB_SELECTS
    ),
    "collections.<collection>.write.check": _WRITE_SUB_SELECTS,
    "limits.rate": (
        "A token bucket per subject, shared by all its devices (a `device_id` claim never "
        "gives a caller another bucket): bursts up to the count, refilled evenly; past "
        "it, `429 rate_limited` with `Retry-After`."
    ),
    "limits.push_lock_timeout": (
        "The whole batch is rolled back (its transaction holds every mutation): retrying the "
        "same mutations is safe. Set as PostgreSQL's `lock_timeout` in each push "
        "transaction, so it also bounds waits on other locks (an `ALTER TABLE` in progress)."
    ),
    "limits.push_statement_timeout": (
        "A database that stops answering (a frozen host, a network partition) is bounded by "
        "this too: the sidecar stops waiting, drops the connection and opens its circuit "
        "breaker (see docs/ops.md)."
    ),
    "limits.pull_wait": (
        "Also bounds how long `after_lsn=` waits for the store to catch up (the request's "
        "`timeout=`, at least 1 second, capped to this)."
    ),
}

# $defs that are value formats (described once, under "Value formats").
FORMAT_NAMES = (
    "identifier",
    "identifierList",
    "duration",
    "nonNegativeDuration",
    "size",
    "rate",
    "expression",
)

# Placeholders for the names of a mapping's free-form keys, by the mapping's own key.
PLACEHOLDERS = {"collections": "<collection>", "set": "<column>"}

TYPE_WORDS = {
    "object": "mapping",
    "array": "list",
    "string": "string",
    "integer": "integer",
    "number": "number",
    "boolean": "boolean",
    "null": "null",
}

INTRO = """\
# Configuration reference

<!-- Generated by `python -m tools.config_reference` from
     sidecar/config/sidecar.schema.json. Do not edit: change the schema (or the notes in
     tools/config_reference.py) and regenerate. tests/repo/test_docs.py checks it. -->

The sidecar reads one YAML file: `--config FILE` (`-c FILE`), else `$SIDECAR_CONFIG`,
else `sidecar.yaml` in the current directory. `sidecar check --config FILE` validates it
and checks the database against it (see [ops.md](ops.md)). Only `database`, `auth` and
`collections` are required; a minimal file:

```yaml
database:
  url: ${DATABASE_URL}
auth:
  jwt:
    secret: ${JWT_SECRET}
collections:
  todos:
    table: public.todo_items
    read: "owner_id = :sub"
```

[`config/example.yaml`](../config/example.yaml) lists every key with its default. The JSON
Schema this page is generated from is `sidecar/config/sidecar.schema.json` (also at
`config/sidecar.schema.json`); editors that read `# yaml-language-server: $schema=…`
complete and check the file with it.

## How the file is read

- **Unknown keys are errors**, at every depth, and so are duplicate keys. Every problem in
  the file is reported at once, each with the file, line and key path
  (`sidecar.yaml:12: collections.todos.read: …`), and the sidecar does not start.
- **Environment variables** are substituted inside values (never in keys): `${VAR}` is
  the value of `VAR` (an error when it is unset), `${VAR:-default}` is `default` when
  `VAR` is unset or empty, and `$${` is a literal `${`. Nesting is not supported. The
  environment is read when the file is loaded, not before.
- An **unquoted** value that is exactly one substitution takes its YAML type after
  substitution (`port: ${PORT:-8080}` is an integer); a quoted one stays a string
  (`port: "${PORT}"` is refused as not an integer).
- **Editors** check the file as written, before substitution: the JSON Schema accepts a
  `${…}` string wherever the sidecar substitutes (a whole `${VAR}` for numbers and
  booleans, text holding `${VAR}` for keys with a format or a list of values), and the
  sidecar checks what it becomes against the rules below.
- **Inside a YAML flow mapping or list** (`{…}`, `[…]`) a substitution must be quoted:
  `database: {url: "${DATABASE_URL}"}`. Unquoted, `{url: ${DATABASE_URL}}` is a YAML
  syntax error (the error message says to quote it).
- **`store.path`**: a relative path resolves against the directory of the config file,
  not the current directory; `~` is expanded.
- **`store.url`** keeps the store in PostgreSQL instead of the SQLite file:
  `store: {url: "${STORE_URL}", schema: sidecar_store}`.
- **Identifiers** (tables, columns) are exact and case-sensitive, never case-folded; the
  sidecar quotes them in every statement it runs.
- **Rules** (`read`, `write.check`, `write.where`, `auth.admin`) are SQL boolean
  expressions parsed with PostgreSQL's own grammar and accepted only from a safe subset;
  a refused token is reported with its line. Read and write rules may read other tables
  through `<column> IN (SELECT <column> FROM <table> WHERE <condition>)` (see
  [`read`](#collectionscollectionread)).

Formats used by several keys are described once, under [Value formats](#value-formats).
Notes marked **Status** say where the running code does not act on a key yet.
"""


@dataclass(frozen=True)
class Key:
    path: str  # dotted key path, e.g. "database.url"
    node: dict[str, Any]  # the key's schema with its $ref resolved (local keywords win)
    ref: str | None  # the $defs entry it refers to, if any
    required: bool
    parent_required: bool  # every enclosing mapping is required too


def load_schema(path: Path = SCHEMA_PATH) -> dict[str, Any]:
    """The schema the page describes: the file's, without its substitution alternatives."""
    return strict_schema(json.loads(path.read_text(encoding="utf-8")))


def _resolve(schema: dict[str, Any], node: dict[str, Any]) -> tuple[dict[str, Any], str | None]:
    ref = node.get("$ref")
    if ref is None:
        return node, None
    prefix = "#/$defs/"
    if not ref.startswith(prefix):
        raise ValueError(f"unsupported $ref {ref!r}")
    name = ref[len(prefix) :]
    base, _ = _resolve(schema, schema["$defs"][name])
    merged = {**base, **{k: v for k, v in node.items() if k != "$ref"}}
    return merged, name


def iter_keys(schema: dict[str, Any]) -> Iterator[Key]:
    """Every key of the schema, depth first, in the schema's order."""
    yield from _children(schema, schema, "", True)


def _children(
    schema: dict[str, Any], node: dict[str, Any], path: str, required_chain: bool
) -> Iterator[Key]:
    required = set(node.get("required", ()))
    for name, child in node.get("properties", {}).items():
        yield from _walk(schema, child, _join(path, name), name in required, required_chain)
    extra = node.get("additionalProperties")
    if isinstance(extra, dict):
        last = path.rsplit(".", 1)[-1]
        placeholder = PLACEHOLDERS.get(last, "<key>")
        yield from _walk(schema, extra, _join(path, placeholder), False, required_chain)


def _walk(
    schema: dict[str, Any], node: dict[str, Any], path: str, required: bool, chain: bool
) -> Iterator[Key]:
    resolved, ref = _resolve(schema, node)
    yield Key(path, resolved, ref, required, chain)
    yield from _children(schema, resolved, path, chain and required)


def _join(path: str, name: str) -> str:
    return f"{path}.{name}" if path else name


# -- rendering values ---------------------------------------------------------------------


def inline(value: Any) -> str:
    """A value as YAML flow text (what one would write in the config)."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return json.dumps(value)
    if isinstance(value, str):
        return value if _plain_ok(value) else json.dumps(value, ensure_ascii=False)
    if isinstance(value, list):
        return "[" + ", ".join(inline(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{k}: {inline(v)}" for k, v in value.items()) + "}"
    raise TypeError(f"cannot render {type(value).__name__}")


def _plain_ok(text: str) -> bool:
    """True when `text` reads back as the same string unquoted, even in a flow context."""
    if not text or text != text.strip():
        return False
    try:
        return yaml.safe_load(f"[{text}]") == [text]
    except yaml.YAMLError:
        return False


def code(text: str) -> str:
    return f"``{text}``" if "`" in text else f"`{text}`"


def type_text(node: dict[str, Any], schema: dict[str, Any], ref: str | None = None) -> str:
    """`string`, `integer or string`, `list of identifiers`, `duration (number or string)`."""
    if "oneOf" in node and "type" not in node:
        parts = [_alternative_type(alt, schema) for alt in node["oneOf"]]
        return " or ".join(dict.fromkeys(parts))
    if "enum" in node and "type" not in node:
        kinds = {type(v).__name__ for v in node["enum"]}
        text = "string" if kinds == {"str"} else "value"
    else:
        raw = node.get("type", "any")
        types = [raw] if isinstance(raw, str) else list(raw)
        text = " or ".join(TYPE_WORDS.get(t, t) for t in types)
        items = node.get("items")
        if types == ["array"] and isinstance(items, dict):
            resolved, item_ref = _resolve(schema, items)
            text = f"list of {item_ref or type_text(resolved, schema)}s"
    if ref is not None and ref in FORMAT_NAMES:
        text = f"{ref} ({text})"
    return text


def _alternative_type(alt: dict[str, Any], schema: dict[str, Any]) -> str:
    if "enum" in alt:
        return "string"
    if alt.get("type") == "object":
        return "mapping"
    return type_text(alt, schema)


def constraints(node: dict[str, Any], schema: dict[str, Any]) -> list[str]:
    """Allowed values, patterns and bounds, one phrase each."""
    out: list[str] = []
    if "enum" in node:
        out.append("Allowed values: " + ", ".join(code(inline(v)) for v in node["enum"]))
    items = node.get("items")
    if isinstance(items, dict):
        resolved, _ = _resolve(schema, items)
        if "enum" in resolved:
            values = ", ".join(code(inline(v)) for v in resolved["enum"])
            out.append("Allowed items: " + values)
        elif "pattern" in resolved:
            out.append("Each item matches " + _pattern(resolved))
        if "maxLength" in resolved:
            out.append(f"Each item at most {resolved['maxLength']} characters")
    if "oneOf" in node and "type" not in node:
        out.append("One of: " + "; ".join(_alternative(alt, schema) for alt in node["oneOf"]))
    for clause in node.get("allOf", ()):
        alternatives = clause.get("oneOf", ())
        names = [r["required"][0] for r in alternatives if len(r.get("required", ())) == 1]
        if names:
            out.append("Set exactly one of " + " or ".join(code(n) for n in names))
    if "pattern" in node:
        out.append("Strings match " + _pattern(node))
    if node.get("minLength") == 1:
        out.append("Not empty")
    elif "minLength" in node:
        out.append(f"At least {node['minLength']} characters")
    if "maxLength" in node:
        out.append(f"At most {node['maxLength']} characters")
    raw = node.get("type", ())
    types = {raw} if isinstance(raw, str) else set(raw)
    numbers = "" if types and types <= {"integer", "number"} else "Numbers "
    if "minimum" in node and "maximum" in node:
        out.append(f"{numbers}from {node['minimum']} to {node['maximum']}".capitalize())
    elif "minimum" in node:
        out.append(f"{numbers}at least {node['minimum']}".capitalize())
    elif "maximum" in node:
        out.append(f"{numbers}at most {node['maximum']}".capitalize())
    if "exclusiveMinimum" in node:
        out.append(f"{numbers}greater than {node['exclusiveMinimum']}".capitalize())
    if "minItems" in node:
        n = node["minItems"]
        out.append(f"At least {n} item{'s' if n != 1 else ''}")
    if node.get("uniqueItems"):
        out.append("No duplicates")
    if "minProperties" in node:
        n = node["minProperties"]
        out.append(f"At least {n} entr{'ies' if n != 1 else 'y'}")
    names = node.get("propertyNames")
    if isinstance(names, dict):
        resolved, ref = _resolve(schema, names)
        if ref is not None:
            out.append(f"Names are {ref}s: {_pattern(resolved)}")
        elif "pattern" in resolved:
            out.append("Names match " + _pattern(resolved))
    extra = node.get("additionalProperties")
    if isinstance(extra, dict) and "type" in extra:
        out.append("Values: " + type_text(extra, schema))
    return out


def _pattern(node: dict[str, Any]) -> str:
    text = code(node["pattern"])
    hint = node.get("patternErrorMessage")
    return f"{text} ({hint})" if hint else text


def _alternative(alt: dict[str, Any], schema: dict[str, Any]) -> str:
    if "enum" in alt:
        return ", ".join(code(inline(v)) for v in alt["enum"])
    if alt.get("type") == "object":
        fields = []
        for name, prop in alt.get("properties", {}).items():
            resolved, ref = _resolve(schema, prop)
            fields.append(f"{name}: <{ref or type_text(resolved, schema)}>")
        return "a mapping " + code("{" + ", ".join(fields) + "}")
    return type_text(alt, schema)


# -- the page -----------------------------------------------------------------------------


def _is_section(node: dict[str, Any]) -> bool:
    return node.get("type") == "object" and "properties" in node


def _required_text(key: Key) -> str:
    if not key.required:
        return "no"
    if key.parent_required:
        return "yes"
    parent = key.path.rsplit(".", 1)[0]
    return f"yes, when {code(parent)} is present"


def _default_text(node: dict[str, Any]) -> str:
    return code(inline(node["default"])) if "default" in node else "none"


def _summary(keys: Sequence[Key], schema: dict[str, Any]) -> list[str]:
    lines = [
        "## All keys",
        "",
        "| Key | Type | Default | Required |",
        "|---|---|---|---|",
    ]
    for key in keys:
        type_cell = type_text(key.node, schema, key.ref)
        if _is_section(key.node):
            type_cell = "mapping"
        default = _default_text(key.node) if "default" in key.node else ""
        required = "yes" if key.required and key.parent_required else ""
        if key.required and not key.parent_required:
            required = "in its mapping"
        anchor = _anchor(key.path)
        lines.append(f"| [{code(key.path)}](#{anchor}) | {type_cell} | {default} | {required} |")
    lines.append("")
    return lines


def _anchor(path: str) -> str:
    """GitHub's anchor for a heading that is `path` in backticks."""
    out = []
    for ch in path.lower():
        if ch.isalnum() or ch in "-_":
            out.append(ch)
        elif ch == " ":
            out.append("-")
    return "".join(out)


def _key_section(key: Key, schema: dict[str, Any]) -> list[str]:
    depth = key.path.count(".")
    level = "##" if depth == 0 else "###"
    lines = [f"{level} {code(key.path)}", ""]
    if "description" in key.node:
        lines += [key.node["description"], ""]
    facts: list[str] = []
    if _is_section(key.node):
        facts.append("Type: mapping")
        children = ", ".join(code(name) for name in key.node["properties"])
        facts.append(f"Keys: {children}")
    else:
        facts.append(f"Type: {type_text(key.node, schema, key.ref)}")
    facts.append(f"Required: {_required_text(key)}")
    if not _is_section(key.node) or "default" in key.node:
        facts.append(f"Default: {_default_text(key.node)}")
    facts += constraints(key.node, schema)
    examples = key.node.get("examples")
    if examples:
        facts.append("Examples: " + ", ".join(code(inline(e)) for e in examples))
    if key.ref in FORMAT_NAMES:
        facts.append(f"Format: see [{key.ref}](#{_anchor(key.ref)})")
    lines += [f"- {fact}" for fact in facts]
    note = STATUS_NOTES.get(key.path)
    if note:
        lines += ["", f"**Status:** {note}"]
    lines.append("")
    return lines


def _formats(schema: dict[str, Any]) -> list[str]:
    lines = ["## Value formats", ""]
    for name in FORMAT_NAMES:
        node = schema["$defs"][name]
        lines += [f"### {code(name)}", ""]
        if "description" in node:
            lines += [node["description"], ""]
        facts = [f"Type: {type_text(node, schema)}", *constraints(node, schema)]
        if node.get("examples"):
            facts.append("Examples: " + ", ".join(code(inline(e)) for e in node["examples"]))
        lines += [f"- {fact}" for fact in facts]
        lines.append("")
    return lines


def render(schema: dict[str, Any]) -> str:
    keys = list(iter_keys(schema))
    known = {k.path for k in keys}
    stale = sorted(set(STATUS_NOTES) - known)
    if stale:
        raise ValueError(f"STATUS_NOTES name keys the schema does not have: {', '.join(stale)}")
    lines = [INTRO]
    lines += _summary(keys, schema)
    for key in keys:
        lines += _key_section(key, schema)
    lines += _formats(schema)
    return "\n".join(lines).rstrip("\n") + "\n"


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m tools.config_reference",
        description="Generate docs/config.md from sidecar/config/sidecar.schema.json.",
    )
    parser.add_argument("--check", action="store_true", help="exit 1 if the file is stale")
    parser.add_argument("--schema", type=Path, default=SCHEMA_PATH, help=argparse.SUPPRESS)
    parser.add_argument("--output", type=Path, default=OUTPUT_PATH, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    text = render(load_schema(args.schema))
    if args.check:
        current = args.output.read_text(encoding="utf-8") if args.output.exists() else None
        if current != text:
            print(
                f"{args.output} is out of date: run `python -m tools.config_reference`",
                file=sys.stderr,
            )
            return 1
        print(f"{args.output} is up to date")
        return 0
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(text, encoding="utf-8")
    print(f"wrote {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
