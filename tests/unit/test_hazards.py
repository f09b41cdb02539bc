"""hazards.py: the warnings of a valid but risky config (no database)."""

from __future__ import annotations

from sidecar.config.loader import load_config_text
from sidecar.hazards import config_warnings
from sidecar.rules.scopes import compile_read_rule

TYPES = {"id": "integer", "owner_id": "text", "is_public": "boolean", "org": "text"}


def warnings(collections: str, secret: str = "0123456789abcdef0123456789abcdef") -> list[str]:
    config = load_config_text(
        f'database: {{url: x}}\nauth: {{jwt: {{secret: "{secret}"}}}}\ncollections:\n{collections}',
        env={},
    )
    rules = {n: compile_read_rule(c.read, TYPES) for n, c in config.collections.items()}
    return config_warnings(config, rules)


def test_open_branches_name_no_claim():
    rule = compile_read_rule(
        load_config_text(
            "database: {url: x}\nauth: {jwt: {secret: s}}\ncollections:\n"
            "  t: {table: t, read: \"owner_id = :sub OR (is_public AND NOT org = 'x') OR "
            '(org = :org AND is_public)"}\n',
            env={},
        )
        .collections["t"]
        .read,
        TYPES,
    )
    assert rule.open_branches() == ("(is_public AND NOT org = 'x')",)
    assert not rule.admits_every_row


def test_writes_under_an_open_branch_warn_unless_write_where():
    base = '  t:\n    table: t\n    columns: [id]\n    read: "owner_id = :sub OR is_public"\n'
    [found] = warnings(base + "    write: {ops: [update]}\n")
    assert "is_public" in found and "write.where" in found
    assert warnings(base + '    write: {ops: [update], where: "owner_id = :sub"}\n') == []
    assert warnings(base) == []  # read-only: nothing to warn about
    admin = base.replace("OR is_public", "OR :role = 'admin'")
    assert warnings(admin + "    write: {ops: [update]}\n") == []


def test_read_true_over_every_column():
    [found] = warnings('  t: {table: t, read: "true"}\n')
    assert "every column" in found
    assert warnings('  t: {table: t, read: "true", columns: [id]}\n') == []


def test_client_wins_with_immutable():
    text = (
        '  t:\n    table: t\n    read: "owner_id = :sub"\n'
        "    write: {ops: [insert, update], immutable: [org]}\n    conflict: client_wins\n"
    )
    [found] = warnings(text)
    assert "client_wins" in found and "org" in found


def test_weak_secrets_are_never_printed():
    rules = '  t: {table: t, read: "owner_id = :sub"}\n'
    [short] = warnings(rules, secret="tiny")
    assert "4 bytes" in short and "tiny" not in short
    demo = "demo-secret-change-me-0123456789abcdef"
    [known] = warnings(rules, secret=demo)
    assert "published" in known and demo not in known


def _tables(name: str) -> tuple[str, dict[str, str]]:
    types = {
        "members": {"project_id": "integer", "user_id": "text"},
        "projects": {"id": "integer", "public": "boolean", "owner": "text", "org": "integer"},
        "orgs": {"id": "integer", "member": "text"},
    }
    return f"public.{name}", types[name]


def _rule(text: str):
    config = load_config_text(
        "database: {url: x}\nauth: {jwt: {secret: s}}\ncollections:\n"
        f'  t: {{table: t, read: "{text}"}}\n',
        env={},
    )
    types = {**TYPES, "project_id": "integer"}
    return compile_read_rule(config.collections["t"].read, types, _tables)


def test_a_sub_select_ties_rows_to_the_caller_only_through_a_claim():
    mine = "project_id IN (SELECT project_id FROM members WHERE user_id = :sub)"
    assert _rule(mine).open_branches() == ()
    public = "project_id IN (SELECT id FROM projects WHERE public)"
    assert _rule(public).open_branches() == (public,)
    every = "project_id IN (SELECT id FROM projects)"
    assert _rule(every).open_branches() == (every,)
    # one open branch in the condition opens the lookup to every caller
    either = "project_id IN (SELECT id FROM projects WHERE owner = :sub OR public)"
    assert _rule(either).open_branches() == (
        "project_id IN (SELECT id FROM projects WHERE owner = $1 OR public) [$1 = :sub]",
    )
    # two levels: tied through the inner one
    chain = (
        "project_id IN (SELECT id FROM projects WHERE org IN "
        "(SELECT id FROM orgs WHERE member = :sub))"
    )
    assert _rule(chain).open_branches() == ()
    assert _rule(f"{mine} OR is_public").open_branches() == ("is_public",)
    assert _rule(f"{public} AND org = :org").open_branches() == ()


def test_writes_under_a_sub_select_that_names_no_claim_warn():
    types = {**TYPES, "project_id": "integer"}
    config = load_config_text(
        'database: {url: x}\nauth: {jwt: {secret: "0123456789abcdef0123456789abcdef"}}\n'
        "collections:\n  t:\n    table: t\n    columns: [id]\n"
        '    read: "project_id IN (SELECT id FROM projects WHERE public)"\n'
        "    write: {ops: [update]}\n",
        env={},
    )
    rules = {"t": compile_read_rule(config.collections["t"].read, types, _tables)}
    [found] = config_warnings(config, rules)
    assert "SELECT id FROM projects WHERE public" in found and "write.where" in found


def test_database_urls_that_do_not_verify_a_remote_server_warn():
    """Issue 17, item 1: sslmode missing or below verify-full, on a host that is not this
    one; the password is never shown."""
    from sidecar.hazards import _sslmode_warning

    remote = "postgresql://app:hunter2@db.example.com:5432/app"
    for url, mode in (
        (remote, "no sslmode"),
        (remote + "?sslmode=require", "sslmode=require"),
        (remote + "?sslmode=verify-ca", "sslmode=verify-ca"),
        ("host=10.0.0.5 dbname=app sslmode=prefer", "sslmode=prefer"),
    ):
        [found] = _sslmode_warning("database.url", url, {})
        assert mode in found and "verify-full" in found and "hunter2" not in found
    assert _sslmode_warning("database.url", remote + "?sslmode=verify-full", {}) == []
    assert _sslmode_warning("store.url", remote, {"PGSSLMODE": "verify-full"}) == []
    for local in (
        "postgresql://app:pw@localhost/app",
        "postgresql://app@127.0.0.1:5433/app",
        "postgresql://app@[::1]/app",
        "postgresql:///app?host=/var/run/postgresql",
        "postgresql:///app",
        "dbname=app",
    ):
        assert _sslmode_warning("database.url", local, {}) == [], local
    # the host libpq takes from the environment counts too
    [found] = _sslmode_warning("database.url", "dbname=app", {"PGHOST": "db.internal"})
    assert "db.internal" in found
    # through config_warnings, for the store's URL as well
    config = load_config_text(
        "database: {url: 'postgresql://db.example.com/app?sslmode=verify-full'}\n"
        "store: {url: 'postgresql://store.example.com/s'}\n"
        'auth: {jwt: {secret: "0123456789abcdef0123456789abcdef"}}\n'
        "collections:\n  t: {table: t, columns: [id], read: 'owner_id = :sub'}\n",
        env={},
    )
    found = config_warnings(config, {})
    assert len(found) == 1 and found[0].startswith("store.url connects to store.example.com")
