"""The config loader: YAML → frozen model, every problem located and reported together."""

from __future__ import annotations

import dataclasses
import json
import textwrap
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pytest
import yaml
from jsonschema import Draft202012Validator

from sidecar.config import schema as config_schema
from sidecar.config.expressions import ExpressionError, parse_expression
from sidecar.config.loader import load_config, load_config_text, load_document
from sidecar.config.model import MIB, Config, StoreConfig, TableRef
from sidecar.config.schema import load_schema
from sidecar.errors import ConfigError, ConfigProblem

ROOT = Path(__file__).resolve().parents[3]
EXAMPLES = sorted((ROOT / "config").glob("*.yaml"))
FAKE_ENV = {"DATABASE_URL": "postgresql://app@localhost/app", "JWT_SECRET": "s3cret"}

MINIMAL = """\
database:
  url: postgresql://localhost/app
auth:
  jwt: {secret: abc}
collections:
  todos:
    table: todo_items
    read: "owner_id = :sub"
"""


def load(text: str, env: Mapping[str, str] | None = None) -> Config:
    return load_config_text(textwrap.dedent(text), "test.yaml", env=env or {})


def problems(text: str, env: Mapping[str, str] | None = None) -> list[ConfigProblem]:
    with pytest.raises(ConfigError) as caught:
        load(text, env)
    return caught.value.problems


def where(found: list[ConfigProblem]) -> list[tuple[int | None, str]]:
    return [(p.line, p.path) for p in found]


def only(found: list[ConfigProblem]) -> ConfigProblem:
    assert len(found) == 1, found
    return found[0]


# --------------------------------------------------------------------------- the examples


def test_there_are_examples() -> None:
    assert {p.name for p in EXAMPLES} >= {"demo.yaml", "example.yaml"}


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.name)
def test_example_loads_and_matches_the_schema(path: Path) -> None:
    config = load_config(path, env=FAKE_ENV)
    assert config.collections
    schema = json.loads((ROOT / "config" / "sidecar.schema.json").read_text())  # the symlink
    document = load_document(path.read_text(), str(path), env=FAKE_ENV)
    Draft202012Validator(schema).validate(document)


def test_schema_is_valid_draft_2020_12_and_the_symlink_points_at_it() -> None:
    schema = load_schema()
    Draft202012Validator.check_schema(schema)
    link = ROOT / "config" / "sidecar.schema.json"
    assert link.is_symlink() and not Path(link.readlink()).is_absolute()
    assert json.loads(link.read_text()) == schema


def test_demo_model() -> None:
    config = load_config(ROOT / "config" / "demo.yaml", env={"DATABASE_URL": "postgresql://x"})
    assert config.database.url == "postgresql://x"
    assert config.auth.jwt.secret == "demo-secret-change-me-0123456789abcdef"
    assert config.store.path == str(ROOT / "config" / "data" / "sidecar.db")
    assert list(config.collections) == ["todos", "projects"]
    todos = config.collections["todos"]
    assert todos.table == TableRef("public", "todo_items")
    assert todos.table.qualified == '"public"."todo_items"'
    assert todos.columns == ("id", "title", "done", "owner_id", "updated_at")
    assert todos.read.text == "owner_id = :sub"
    assert todos.write.ops == ("insert", "update", "delete")
    assert dict(todos.write.set) == {"owner_id": ":sub"}
    assert todos.write.immutable == ("id", "owner_id")
    assert todos.write.check is not None
    assert todos.conflict.kind == "merge"
    assert todos.line == 19
    projects = config.collections["projects"]
    assert projects.write.ops == () and projects.write.check is None
    assert projects.conflict.kind == "reject"


def test_defaults_come_from_the_model_and_match_the_schema() -> None:
    config = load(MINIMAL)
    assert config.server.port == 8080 and config.store.tombstone_retention == 30 * 86400
    assert config.limits.max_body == 5 * MIB and config.limits.rate is None
    assert config.auth.jwt.algorithms == ("HS256",) and config.auth.jwt.leeway == 30.0
    document = yaml.safe_load(MINIMAL)
    for section in ("database", "store", "server", "limits", "log"):
        document[section] = {**document.get(section, {}), **_schema_defaults(section)}
    document["auth"]["claims"] = _schema_defaults("claims")
    document["auth"]["jwt"]["leeway"] = load_schema()["$defs"]["jwt"]["properties"]["leeway"][
        "default"
    ]
    explicit = load(yaml.safe_dump(document))
    assert dataclasses.replace(explicit, collections=config.collections) == config


def _schema_defaults(section: str) -> dict[str, Any]:
    schema = load_schema()
    properties = schema["$defs"][section]["properties"]
    return {key: value["default"] for key, value in properties.items() if "default" in value}


def test_the_model_is_frozen_and_read_only() -> None:
    config = load(MINIMAL)
    with pytest.raises(dataclasses.FrozenInstanceError):
        config.server.port = 1  # type: ignore[misc]
    with pytest.raises(TypeError):
        config.collections["x"] = config.collections["todos"]  # type: ignore[index]
    assert hash(config) == hash(load(MINIMAL))


def test_table_defaults_to_public_and_is_quoted_safely() -> None:
    config = load(MINIMAL)
    assert config.collections["todos"].table == TableRef("public", "todo_items")
    odd = TableRef("Legacy", 'we"ird')
    assert odd.qualified == '"Legacy"."we""ird"' and str(odd) == 'Legacy.we"ird'


# ------------------------------------------------------------------- env substitution


def test_env_default_missing_and_empty() -> None:
    text = MINIMAL.replace("postgresql://localhost/app", "${DB:-postgresql://fallback/db}")
    assert load(text).database.url == "postgresql://fallback/db"
    assert load(text, {"DB": ""}).database.url == "postgresql://fallback/db"
    assert load(text, {"DB": "postgresql://set/db"}).database.url == "postgresql://set/db"


def test_missing_variable_is_located_and_named() -> None:
    found = only(problems(MINIMAL.replace("abc", '"${JWT_SECRET}"')))
    assert (found.line, found.path) == (4, "auth.jwt.secret")
    assert "JWT_SECRET" in found.message and "not set" in found.message


def test_substituted_values_keep_hash_and_colon_space() -> None:
    url = "postgresql://u:p#1@h/db?options=-c search_path: x"
    text = MINIMAL.replace("postgresql://localhost/app", "${DATABASE_URL}")
    assert load(text, {"DATABASE_URL": url}).database.url == url


def test_dollar_dollar_escapes_a_literal_substitution() -> None:
    text = MINIMAL.replace("abc", "'a$${NOT_A_VAR}b'")
    assert load(text).auth.jwt.secret == "a${NOT_A_VAR}b"


def test_plain_whole_substitution_is_retyped_but_quoted_stays_a_string() -> None:
    assert load(MINIMAL + "server:\n  port: ${PORT:-9000}\n").server.port == 9000
    assert load(MINIMAL + "server:\n  port: ${PORT}\n", {"PORT": "81"}).server.port == 81
    config = load(MINIMAL + "server:\n  host: ${HOST:-localhost}\nlog:\n  level: ${LEVEL:-debug}\n")
    assert (config.server.host, config.log.level) == ("localhost", "debug")
    found = only(problems(MINIMAL + 'server: {port: "${PORT:-9000}"}\n'))
    assert (found.line, found.path) == (9, "server.port")
    assert "expected an integer, got string '9000'" in found.message
    partial = MINIMAL.replace("abc", "'${N:-1}${N:-2}'")
    assert load(partial).auth.jwt.secret == "12"


def test_plain_substitution_retypes_booleans_and_nulls() -> None:
    text = MINIMAL.replace("url: postgresql://localhost/app", "url: x\n  create_publication: ${C}")
    assert load(text, {"C": "false"}).database.create_publication is False
    found = only(problems(text, {"C": ""}))
    assert found.path == "database.create_publication" and "got null" in found.message


def test_unquoted_substitution_in_a_flow_mapping_gets_a_hint() -> None:
    found = only(problems(MINIMAL.replace("abc", "${JWT_SECRET}")))
    assert found.line == 4 and "quote a value using ${...}" in found.message


def test_malformed_substitution() -> None:
    found = problems(MINIMAL.replace("abc", "'${1BAD}'") + "server:\n  host: x${UNCLOSED\n")
    assert where(found) == [(4, "auth.jwt.secret"), (10, "server.host")]
    assert "invalid substitution ${1BAD}" in found[0].message
    assert "${ without a closing }" in found[1].message


def test_env_is_read_at_call_time(monkeypatch: pytest.MonkeyPatch) -> None:
    text = MINIMAL.replace("abc", "'${SIDECAR_TEST_SECRET}'")
    monkeypatch.setenv("SIDECAR_TEST_SECRET", "from-environ")
    assert load_config_text(text).auth.jwt.secret == "from-environ"


def test_keys_are_not_substituted() -> None:
    found = only(problems(MINIMAL + "${EXTRA}: 1\n", {"EXTRA": "log"}))
    assert found.path == "${EXTRA}" and "unknown key" in found.message


# ------------------------------------------------------------------- structural problems


def test_unknown_key_at_depth() -> None:
    text = MINIMAL + "    write:\n      ops: [insert]\n      opz: [update]\n"
    found = only(problems(text))
    assert (found.line, found.path) == (11, "collections.todos.write.opz")
    assert "unknown key 'opz'" in found.message and "did you mean 'ops'" in found.message
    assert "allowed: ops, set, immutable, check" in found.message


def test_unknown_top_level_key() -> None:
    found = only(problems("colections: {}\n" + MINIMAL))
    assert (found.line, found.path) == (1, "colections")
    assert "database, store, server, auth, limits, log, observability, collections" in found.message


def test_several_problems_are_all_reported_sorted_by_line() -> None:
    text = """\
    database:
      url: postgresql://localhost/app
      slots: x
    store:
      tombstone_retention: 10x
    auth:
      jwt: {secret: abc, jwks: ./keys.json}
    limits:
      max_body: 0MB
      rate: 0/s
    collections:
      todos:
        table: todo_items
        columns: [id, title, id]
        key: [uid]
        write:
          ops: [insert, upsert]
        conflict: newest
      bad-name:
        table: x
        read: "true"
    """
    found = problems(text)
    assert where(found) == [
        (3, "database.slots"),
        (5, "store.tombstone_retention"),
        (7, "auth.jwt"),
        (9, "limits.max_body"),
        (10, "limits.rate"),
        (12, "collections.todos.read"),
        (14, "collections.todos.columns[2]"),
        (15, "collections.todos.key[0]"),
        (17, "collections.todos.write.ops[1]"),
        (18, "collections.todos.conflict"),
        (19, "collections.bad-name"),
    ]
    by_path = {p.path: p.message for p in found}
    assert "exactly one of secret" in by_path["auth.jwt"]
    assert "'id' is listed twice" in by_path["collections.todos.columns[2]"]
    assert "'uid' is not among columns" in by_path["collections.todos.key[0]"]
    assert (
        "'upsert' is not one of: insert, update, delete"
        in by_path["collections.todos.write.ops[1]"]
    )
    assert "latest_wins" in by_path["collections.todos.conflict"]
    assert "collection name" in by_path["collections.bad-name"]
    assert str(found[0]) == "test.yaml:3: database.slots: " + found[0].message


def test_read_is_required_and_the_message_says_how_to_expose_everything() -> None:
    found = only(problems(MINIMAL.replace('    read: "owner_id = :sub"\n', "")))
    assert (found.line, found.path) == (6, "collections.todos.read")
    assert 'use read: "true" to expose every row to every authenticated caller' in found.message


def test_unquoted_boolean_read_suggests_quoting() -> None:
    found = only(problems(MINIMAL.replace('"owner_id = :sub"', "true")))
    assert found.path == "collections.todos.read"
    assert 'expected a string, got boolean true (quote it to make it a string: "true")' in (
        found.message
    )


def test_required_top_level_sections() -> None:
    found = problems("log: {level: info}\n")
    assert [p.path for p in found] == ["database", "auth", "collections"]
    assert all(p.line is None for p in found)


def test_empty_file_and_non_mapping_root() -> None:
    assert "empty" in only(problems("# nothing\n")).message
    found = only(problems("- a\n- b\n"))
    assert found.path == "" and "expected a mapping, got a list" in found.message


def test_latest_wins_column_must_be_exposed() -> None:
    text = MINIMAL + "    columns: [id, owner_id]\n    conflict: {latest_wins: updated_at}\n"
    found = only(problems(text))
    assert (found.line, found.path) == (10, "collections.todos.conflict.latest_wins")
    config = load(text.replace("[id, owner_id]", "[id, owner_id, updated_at]"))
    assert config.collections["todos"].conflict.column == "updated_at"


def test_write_set_literals_and_claims() -> None:
    text = MINIMAL + "    write:\n      ops: [insert]\n      set: {owner_id: ':sub', n: 3}\n"
    assert dict(load(text).collections["todos"].write.set) == {"owner_id": ":sub", "n": 3}
    found = only(problems(text.replace("':sub'", "':'")))
    assert (found.line, found.path) == (11, "collections.todos.write.set.owner_id")


def test_write_needs_ops() -> None:
    found = only(problems(MINIMAL + "    write: {immutable: [id]}\n"))
    assert found.path == "collections.todos.write.ops" and "insert, update, delete" in (
        found.message
    )


def test_jwks_algorithms() -> None:
    jwks = MINIMAL.replace("{secret: abc}", "{jwks: ./jwks.json}")
    assert load(jwks).auth.jwt.algorithms == ("RS256", "ES256")
    found = only(problems(jwks.replace("./jwks.json}", "./jwks.json, algorithms: [RS256, HS256]}")))
    assert found.path == "auth.jwt.algorithms[1]" and "HMAC" in found.message
    found = only(problems(MINIMAL.replace("abc}", "abc, algorithms: [RS256]}")))
    assert found.path == "auth.jwt.algorithms[0]"


def test_empty_database_url() -> None:
    found = only(problems(MINIMAL.replace("postgresql://localhost/app", "${DB:-}")))
    assert (found.line, found.path) == (2, "database.url")
    found = only(problems(MINIMAL.replace("postgresql://localhost/app", "'  '")))
    assert found.message == "must not be empty"


def test_anchors_and_merge_keys() -> None:
    text = MINIMAL + (
        "    write: &owned\n"
        "      ops: [insert, update]\n"
        '      set: {owner_id: ":sub"}\n'
        "  mine:\n"
        "    table: notes\n"
        '    read: "owner_id = :sub"\n'
        "    write:\n"
        "      <<: *owned\n"
        "      ops: [update]\n"
    )
    config = load(text)
    assert config.collections["todos"].write.ops == ("insert", "update")
    assert config.collections["mine"].write.ops == ("update",)
    assert dict(config.collections["mine"].write.set) == {"owner_id": ":sub"}


# ------------------------------------------------------------------- durations, sizes, rates


@pytest.mark.parametrize(
    ("value", "fragment"),
    [
        ("10x", "expected a duration"),
        ("-5s", "expected a duration"),
        ("0s", "must be greater than zero"),
        ("-5", "must be greater than 0"),
        ("0", "must be greater than 0"),
        ("yes", "expected a number or a string, got boolean true"),
        ("[1]", "expected a number or a string, got a list"),
    ],
)
def test_bad_duration_is_located(value: str, fragment: str) -> None:
    found = only(problems(MINIMAL + f"limits:\n  pull_wait: {value}\n"))
    assert (found.line, found.path) == (10, "limits.pull_wait")
    assert fragment in found.message and "quote it" not in found.message


def test_leeway_may_be_zero() -> None:
    assert load(MINIMAL.replace("abc}", "abc, leeway: 0s}")).auth.jwt.leeway == 0.0


# ------------------------------------------------------------------- YAML-level problems


def test_duplicate_key_is_located_at_the_second_one() -> None:
    found = only(problems(MINIMAL + "    table: other\n"))
    assert (found.line, found.path) == (9, "collections.todos.table")
    assert "duplicate key 'table' (first on line 7)" in found.message


def test_yaml_syntax_error_is_located() -> None:
    found = only(problems(MINIMAL.replace("  jwt: {secret: abc}", "  jwt: {secret: abc")))
    assert found.line is not None and 4 <= found.line <= 6
    assert found.path == "" and found.message.startswith("invalid YAML")


def test_bad_indentation_is_located() -> None:
    found = only(problems("database:\n  url: x\n   slot: y\n"))
    assert found.line == 3 and "invalid YAML" in found.message


def test_unknown_tag_is_a_problem_not_a_crash() -> None:
    found = only(problems(MINIMAL.replace("abc", "!python/name:os.system x")))
    assert found.path == "auth.jwt.secret" and found.line == 4


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as caught:
        load_config(tmp_path / "nope.yaml")
    found = only(caught.value.problems)
    assert found.file == str(tmp_path / "nope.yaml") and found.line is None
    assert "cannot read the file" in found.message and "No such file" in found.message


def test_unreadable_file_and_directory(tmp_path: Path) -> None:
    (tmp_path / "latin1.yaml").write_bytes(b"database: {url: caf\xe9}\n")
    with pytest.raises(ConfigError, match="cannot read the file"):
        load_config(tmp_path / "latin1.yaml")
    with pytest.raises(ConfigError, match="cannot read the file"):
        load_config(tmp_path)


def test_store_path_is_relative_to_the_config_file(tmp_path: Path) -> None:
    (tmp_path / "conf").mkdir()
    file = tmp_path / "conf" / "sidecar.yaml"
    file.write_text(MINIMAL + "store: {path: ../state/s.db}\n")
    assert load_config(file, env={}).store.path == str(tmp_path / "state" / "s.db")
    file.write_text(MINIMAL + "store: {path: ':memory:'}\n")
    with pytest.raises(ConfigError, match=r"store\.path: must be a file"):
        load_config(file, env={})
    assert load(MINIMAL).store.path == str(Path("test.yaml").resolve().parent / "data/sidecar.db")
    assert load_config_text(MINIMAL, env={}).store.path == StoreConfig().path


def test_store_url_chooses_a_postgresql_store() -> None:
    env = {"STORE_URL": "postgresql://sc@store-db:5432/state", "STORE_SCHEMA": "sync"}
    st = load(MINIMAL + 'store: {url: "${STORE_URL}", schema: "${STORE_SCHEMA}"}\n', env).store
    assert (st.url, st.schema) == ("postgresql://sc@store-db:5432/state", "sync")
    st = load(MINIMAL + "store: {url: postgresql://localhost/app}\n").store
    assert (st.url, st.schema) == ("postgresql://localhost/app", "sidecar_store")  # own schema
    assert load(MINIMAL).store.url is None


@pytest.mark.parametrize(
    ("store", "message"),
    [
        # the application's own database and schema (as database.url names it)
        ("{url: 'postgresql://localhost/app', schema: public}", "application's own schema"),
        ("{url: 'postgresql://localhost:5432/app', schema: public}", "application's own schema"),
        ("{url: 'postgresql://localhost/app', path: x.db}", "keep one"),
        ("{url: 'postgresql://localhost/app', schema: 'Bad-Name'}", "store.schema"),
    ],
)
def test_a_store_in_the_applications_schema_is_refused(store: str, message: str) -> None:
    assert message in str(only(problems(MINIMAL + f"store: {store}\n")))


def test_a_large_alias_expansion_is_refused() -> None:
    bomb = "a: &a [x, x, x, x, x, x, x, x, x, x]\n" + "".join(
        f"{c}: &{c} [{', '.join(['*' + p] * 10)}]\n"
        for p, c in zip("abcdef", "bcdefg", strict=True)
    )
    found = problems(bomb)
    assert any("too large" in p.message for p in found), found


# ------------------------------------------------------------------- rule expressions


@pytest.mark.parametrize(
    "rule",
    [
        "owner_id = :sub; DROP TABLE x",
        "pg_sleep(1) IS NULL",
        "id IN (SELECT id FROM secrets LIMIT 1)",
        "id IN (SELECT a.id FROM secrets a JOIN other b USING (id))",
        "NOT EXISTS (SELECT 1 FROM secrets)",
        "owner_id = $1",
        "owner_id =",
    ],
)
def test_bad_read_expression_is_located(rule: str) -> None:
    with pytest.raises(ExpressionError) as refused:
        parse_expression(rule)
    found = only(problems(MINIMAL.replace('"owner_id = :sub"', json.dumps(rule))))
    assert (found.line, found.path) == (8, "collections.todos.read")
    assert found.message.startswith(f"invalid expression: {refused.value.message}")
    if refused.value.token:
        assert found.message.endswith(f"(near {refused.value.token!r})")


def test_any_refused_expression_is_a_located_problem() -> None:
    for rule in ("'unterminated", "(" * 5000, '"unterminated', "a = :", "/*"):
        found = only(problems(MINIMAL.replace('"owner_id = :sub"', json.dumps(rule))))
        assert (found.line, found.path) == (8, "collections.todos.read")


@pytest.mark.parametrize("style", ["|", ">", "|-"])
def test_bad_token_in_a_multi_line_check_points_at_its_line(style: str) -> None:
    text = MINIMAL + (
        "    write:\n"
        "      ops: [insert]\n"
        f"      check: {style}\n"
        "        length(title) BETWEEN 1 AND 200\n"
        "        AND done IS NOT NULL\n"
        "        AND pg_sleep(10) IS NULL\n"
    )
    found = only(problems(text))
    assert (found.line, found.path) == (14, "collections.todos.write.check")
    assert "pg_sleep" in found.message


def test_bad_token_in_a_multi_line_plain_scalar() -> None:
    text = MINIMAL.replace(
        '"owner_id = :sub"',
        "owner_id = :sub\n      OR lower(name) = 'x'\n      OR pg_sleep(1) IS NULL",
    )
    found = only(problems(text))
    assert (found.line, found.path) == (10, "collections.todos.read")


def test_the_same_token_twice_points_at_the_right_line() -> None:
    text = MINIMAL.replace(
        '"owner_id = :sub"',
        "|\n      pg_catalog.lower(a) = 'x'\n      OR pg_catalog.pg_sleep(1) IS NULL",
    )
    found = only(problems(text))
    assert found.line == 10, found


def test_admin_rule_may_only_use_claims() -> None:
    assert load(MINIMAL.replace("abc}", "abc}\n  admin: \":role = 'admin'\"")).auth.admin
    found = only(problems(MINIMAL.replace("abc}", 'abc}\n  admin: "owner_id = :sub"')))
    assert found.path == "auth.admin" and "owner_id" in found.message


def test_loader_uses_the_packaged_schema() -> None:
    assert config_schema.SCHEMA_RESOURCE == "sidecar.schema.json"
    assert load_schema()["$id"].endswith("sidecar.schema.json")


def test_max_page_bytes_is_a_size_with_a_1mb_default() -> None:
    assert load(MINIMAL).limits.max_page_bytes == MIB
    assert load(MINIMAL + "limits: {max_page_bytes: 256KB}\n").limits.max_page_bytes == 256 * 1024
    text = MINIMAL + "limits: {max_page_bytes: '${PAGE:-2}MB'}\n"
    assert load(text).limits.max_page_bytes == 2 * MIB
    assert load(text, env={"PAGE": "3"}).limits.max_page_bytes == 3 * MIB
    found = problems(MINIMAL + "limits: {max_page_bytes: 0MB}\n")
    assert [p.path for p in found] == ["limits.max_page_bytes"]


def test_memory_is_a_size_of_at_least_16mib_with_a_256mib_default() -> None:
    assert load(MINIMAL).limits.memory == 256 * MIB
    assert load(MINIMAL + "limits: {memory: 64MiB}\n").limits.memory == 64 * MIB
    assert load(MINIMAL + "limits: {memory: 1GiB}\n").limits.memory == 1024 * MIB
    for small in ("8MiB", "0MB", "many"):
        found = problems(MINIMAL + f"limits: {{memory: {small}}}\n")
        assert [p.path for p in found] == ["limits.memory"], found
