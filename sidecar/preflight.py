"""Safety preflight: is the database ready for the sidecar, and is the config true to it?

Every problem is collected (never just the first) with the statement that fixes it, so a
DBA can act on one report. Used at start-up and by `sidecar check`.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

import psycopg
from psycopg import sql

from sidecar.catalog import TableInfo, load_table
from sidecar.collection import Collection
from sidecar.config.expressions import Expression, ExpressionError, Subquery
from sidecar.config.model import CollectionConfig, Config, TableRef
from sidecar.hazards import config_warnings
from sidecar.membership import source_name
from sidecar.rules.scopes import ReadRule


@dataclass(frozen=True, slots=True)
class PreflightReport:
    problems: tuple[str, ...]
    warnings: tuple[str, ...]
    tables: dict[str, TableInfo]  # collection name → table (those found); membership
    # tables too, under `membership.source_name` (published and copied like the others)
    publication_exists: bool
    publication_adds: tuple[TableInfo, ...] = ()  # mapped tables to add to the publication
    sources: dict[str, TableInfo] = field(default_factory=dict)  # rule sub-selects' tables,
    # by name as written in the rules

    def collection(self, coll: CollectionConfig) -> Collection:
        """The collection compiled over its table (and membership tables) as found."""
        return Collection(coll, self.tables[coll.name], self.sources)

    @property
    def ok(self) -> bool:
        return not self.problems


def _q(ident: str) -> str:
    return sql.Identifier(ident).as_string(None)


def _server_checks(conn: psycopg.Connection, problems: list[str]) -> bool:
    """The server's settings; False when nothing else can be checked (SQL_ASCII: text
    comes back as bytes)."""
    # read from the connection's parameters: on SQL_ASCII, query results are bytes
    encoding = conn.pgconn.parameter_status(b"server_encoding")
    if encoding == b"SQL_ASCII":
        problems.append(
            "the database's encoding is SQL_ASCII: PostgreSQL stores its text as unchecked "
            "bytes, so the sidecar cannot read it as text reliably. It needs a database "
            "with a real encoding: create one (CREATE DATABASE … ENCODING 'UTF8' TEMPLATE "
            "template0) and move the data into it (pg_dump, then pg_restore)"
        )
        return False
    wal_level = conn.execute("SHOW wal_level").fetchone()[0]  # type: ignore[index]
    if wal_level != "logical":
        problems.append(
            f"wal_level is {wal_level!r}, logical replication needs 'logical': run "
            "ALTER SYSTEM SET wal_level = logical; then restart PostgreSQL"
        )
    version = int(conn.execute("SHOW server_version_num").fetchone()[0])  # type: ignore[index]
    if version < 140000:
        problems.append(f"PostgreSQL {version // 10000} is too old: the sidecar needs 14 or later")
    role, can_replicate, is_super = conn.execute(
        "SELECT rolname, rolreplication, rolsuper FROM pg_roles WHERE rolname = current_user"
    ).fetchone()  # type: ignore[misc]
    if not (can_replicate or is_super):
        problems.append(
            f"role {role!r} cannot start replication: run ALTER ROLE {_q(role)} REPLICATION;"
        )
    return True


def _identity_fix(conn: psycopg.Connection, info: TableInfo) -> str:
    row = conn.execute(
        """SELECT ic.relname FROM pg_index i JOIN pg_class ic ON ic.oid = i.indexrelid
           WHERE i.indrelid = %s AND i.indisunique AND i.indpred IS NULL
             AND i.indexprs IS NULL AND NOT EXISTS (
               SELECT 1 FROM pg_attribute a WHERE a.attrelid = i.indrelid
                 AND a.attnum = ANY(i.indkey) AND NOT a.attnotnull)
           ORDER BY ic.relname LIMIT 1""",
        (info.oid,),
    ).fetchone()
    if row:
        return f"ALTER TABLE {info.ref.qualified} REPLICA IDENTITY USING INDEX {_q(row[0])};"
    return f"ALTER TABLE {info.ref.qualified} ADD PRIMARY KEY (<key columns>);"


def _privilege_checks(
    conn: psycopg.Connection, coll: CollectionConfig, info: TableInfo, problems: list[str]
) -> None:
    """The table grants the collection needs: SELECT always, and each write op's own."""
    needed = ["SELECT", *(op.upper() for op in coll.write.ops)]
    if {"update", "delete"} & set(coll.write.ops):
        needed.append("UPDATE")  # SELECT … FOR UPDATE locks the rows first
    role = conn.execute("SELECT current_user").fetchone()[0]  # type: ignore[index]
    missing = [
        p
        for p in dict.fromkeys(needed)
        if not conn.execute("SELECT has_table_privilege(%s, %s)", (info.oid, p)).fetchone()[0]  # type: ignore[index]
    ]
    if missing:
        problems.append(
            f"collection {coll.name!r}: role {role!r} lacks {', '.join(missing)} on "
            f"{info.ref}: run GRANT {', '.join(missing)} ON {info.ref.qualified} TO {_q(role)};"
        )


def _collection_checks(
    conn: psycopg.Connection, coll: CollectionConfig, info: TableInfo, problems: list[str]
) -> None:
    where = f"collection {coll.name!r} ({info.ref})"
    _privilege_checks(conn, coll, info, problems)
    names = set(info.column_names)
    for label, cols in (
        ("columns", coll.columns or ()),
        ("key", coll.key or ()),
        ("read rule", sorted(coll.read.columns)),
        ("write.immutable", coll.write.immutable),
        ("write.set", tuple(coll.write.set)),
        ("write.check", sorted(coll.write.check.columns) if coll.write.check else ()),
        ("write.where", sorted(coll.write.where.columns) if coll.write.where else ()),
    ):
        missing = [c for c in cols if c not in names]
        if missing:
            problems.append(
                f"{where}: {label} names column(s) {', '.join(missing)} that the table "
                f"does not have (it has: {', '.join(info.column_names)})"
            )
    if coll.conflict.column and coll.conflict.column not in names:
        problems.append(f"{where}: latest_wins column {coll.conflict.column!r} does not exist")
    key = coll.key or info.primary_key
    if not key:
        problems.append(
            f"{where}: the table has no primary key; add one or set `key:` to the columns "
            "of a unique index whose columns are NOT NULL"
        )
    elif (
        coll.key
        and tuple(coll.key) not in info.unique_keys
        and set(coll.key) != set(info.primary_key)
    ):
        problems.append(
            f"{where}: key ({', '.join(coll.key)}) is not a unique index over NOT NULL "
            "columns; create one, e.g. CREATE UNIQUE INDEX ON "
            f"{info.ref.qualified} ({', '.join(_q(c) for c in coll.key)});"
        )
    if info.updates_need_identity:
        problems.append(
            f"{where}: the table has no replica identity, so once it is published the "
            "application's own UPDATE and DELETE statements would fail. The sidecar refuses "
            f"to publish it. Fix: {_identity_fix(conn, info)}"
        )


def _publication_checks(
    conn: psycopg.Connection,
    config: Config,
    tables: dict[str, TableInfo],
    problems: list[str],
    warnings: list[str],
    adds: list[TableInfo],
) -> bool:
    pub = config.database.publication
    row = conn.execute(
        "SELECT puballtables, pubinsert, pubupdate, pubdelete, pubtruncate, pubviaroot "
        "FROM pg_publication WHERE pubname = %s",
        (pub,),
    ).fetchone()
    if row is None:
        create = (
            f"CREATE PUBLICATION {_q(pub)} FOR TABLE "
            + ", ".join(t.ref.qualified for t in distinct_tables(tables.values()))
            + " WITH (publish_via_partition_root = true)"
        )
        if not config.database.create_publication:
            problems.append(
                f"publication {pub!r} does not exist and database.create_publication is "
                f"false: have a DBA run {create};"
            )
        else:
            _can_create_publication(conn, tables, create, problems)
        return False
    published = {
        int(oid)
        for (oid,) in conn.execute(
            "SELECT format('%%I.%%I', schemaname, tablename)::regclass::oid "
            "FROM pg_publication_tables WHERE pubname = %s",
            (pub,),
        )
    }
    missing = [t for t in distinct_tables(tables.values()) if t.oid not in published]
    if missing and config.database.create_publication and not row[0]:
        alter = f"ALTER PUBLICATION {_q(pub)} ADD TABLE " + ", ".join(
            t.ref.qualified for t in missing
        )
        before = len(problems)
        _can_alter_publication(conn, pub, missing, alter, problems)
        if len(problems) == before:
            adds.extend(missing)
            missing = []
    if missing:
        problems.append(
            f"publication {pub!r} exists but does not publish "
            + ", ".join(str(t.ref) for t in missing)
            + f": run ALTER PUBLICATION {_q(pub)} ADD TABLE "
            + ", ".join(t.ref.qualified for t in missing)
            + ";"
        )
    partitioned = [str(t.ref) for t in tables.values() if t.partitioned]
    if partitioned and not row[5]:
        problems.append(
            f"publication {pub!r} must publish partitioned table(s) {', '.join(partitioned)} "
            f"under their own name: run ALTER PUBLICATION {_q(pub)} SET "
            "(publish_via_partition_root = true);"
        )
    if not all(row[1:4]):
        problems.append(
            f"publication {pub!r} must publish insert, update and delete: run ALTER "
            f"PUBLICATION {_q(pub)} SET (publish = 'insert, update, delete, truncate');"
        )
    if row[0]:
        warnings.append(
            f"publication {pub!r} is FOR ALL TABLES; the sidecar ignores tables it does not map"
        )
    return True


def _can_alter_publication(
    conn: psycopg.Connection, pub: str, tables: list[TableInfo], alter: str, problems: list[str]
) -> None:
    """ALTER PUBLICATION … ADD TABLE needs ownership of the publication and the tables."""
    owner = conn.execute(
        "SELECT rolsuper OR pg_has_role(p.pubowner, 'USAGE') FROM pg_roles r, pg_publication p "
        "WHERE r.rolname = current_user AND p.pubname = %s",
        (pub,),
    ).fetchone()
    not_owned = [
        str(t.ref)
        for t in tables
        if not conn.execute(
            "SELECT pg_has_role(relowner, 'USAGE') OR (SELECT rolsuper FROM pg_roles "
            "WHERE rolname = current_user) FROM pg_class WHERE oid = %s",
            (t.oid,),
        ).fetchone()[0]  # type: ignore[index]
    ]
    if not (owner and owner[0]) or not_owned:
        problems.append(
            f"publication {pub!r} does not publish {', '.join(str(t.ref) for t in tables)} "
            f"and the sidecar's role cannot add them: have a DBA run {alter};"
        )


def _can_create_publication(
    conn: psycopg.Connection, tables: dict[str, TableInfo], create: str, problems: list[str]
) -> None:
    """CREATE PUBLICATION needs CREATE on the database and ownership of every table."""
    is_super, can_create = conn.execute(
        "SELECT rolsuper, has_database_privilege(current_database(), 'CREATE') "
        "FROM pg_roles WHERE rolname = current_user"
    ).fetchone()  # type: ignore[misc]
    if is_super:
        return
    not_owned = [
        str(t.ref)
        for t in tables.values()
        if not conn.execute(
            "SELECT pg_has_role(relowner, 'USAGE') FROM pg_class WHERE oid = %s", (t.oid,)
        ).fetchone()[0]  # type: ignore[index]
    ]
    if not can_create or not_owned:
        why = []
        if not can_create:
            why.append("CREATE on the database")
        if not_owned:
            why.append("ownership of " + ", ".join(not_owned))
        problems.append(
            f"the publication is missing and the sidecar's role cannot create it (needs "
            f"{' and '.join(why)}): have a DBA run {create}; "
            "or set database.create_publication: false once it exists"
        )


def _subquery_tables(expr: Expression) -> list[str]:
    """The tables a rule's sub-selects name (nested ones too), as written."""
    return [sub.table_name for sub in _subqueries(expr)]


def _table_ref(name: str) -> TableRef:
    schema, _, table = name.rpartition(".")
    return TableRef(schema or "public", table)


def _membership_checks(
    conn: psycopg.Connection,
    config: Config,
    tables: dict[str, TableInfo],
    sources: dict[str, TableInfo],
    problems: list[str],
) -> None:
    """The tables the read rules' sub-selects name: captured like mapped tables, so they
    must exist, be readable and have a replica identity; each joins `tables` (to be
    published and copied) and `sources` (by name as written)."""
    role = None
    for coll in config.collections.values():
        for name in _subquery_tables(coll.read):
            if name in sources:
                continue
            info = load_table(conn, _table_ref(name))
            where = f"collection {coll.name!r}: the read rule's sub-select table {name}"
            if info is None:
                problems.append(f"{where} does not exist (or the sidecar's role cannot see it)")
                continue
            sources[name] = info
            tables.setdefault(source_name(info), info)
            if role is None:
                role = conn.execute("SELECT current_user").fetchone()[0]  # type: ignore[index]
            ok = conn.execute("SELECT has_table_privilege(%s, 'SELECT')", (info.oid,)).fetchone()
            if not (ok and ok[0]):
                problems.append(
                    f"{where}: role {role!r} lacks SELECT on {info.ref}: run GRANT SELECT ON "
                    f"{info.ref.qualified} TO {_q(role)};"
                )
            if info.updates_need_identity or not (info.identity_index or info.primary_key):
                problems.append(
                    f"{where} has no replica identity (no primary key): its deletes could not "
                    "be captured, and once it is published the application's own UPDATE and "
                    f"DELETE statements would fail. Fix: {_identity_fix(conn, info)}"
                )


def _write_rule_checks(
    conn: psycopg.Connection, coll: CollectionConfig, problems: list[str]
) -> None:
    """The tables `write.where` and `write.check` sub-selects name: PostgreSQL reads them
    in the write statement (nothing captures them), so they must exist, be readable and
    have the columns named."""
    role = None
    for label, rule in (("write.where", coll.write.where), ("write.check", coll.write.check)):
        for sub in _subqueries(rule):
            where = f"collection {coll.name!r}: {label}'s sub-select table {sub.table_name}"
            info = load_table(conn, _table_ref(sub.table_name))
            if info is None:
                problems.append(f"{where} does not exist (or the sidecar's role cannot see it)")
                continue
            if role is None:
                role = conn.execute("SELECT current_user").fetchone()[0]  # type: ignore[index]
            ok = conn.execute("SELECT has_table_privilege(%s, 'SELECT')", (info.oid,)).fetchone()
            if not (ok and ok[0]):
                problems.append(
                    f"{where}: role {role!r} lacks SELECT on {info.ref}: run GRANT SELECT ON "
                    f"{info.ref.qualified} TO {_q(role)};"
                )
            missing = [c for c in (sub.value, *sorted(sub.where.columns)) if info.column(c) is None]
            if missing:
                problems.append(
                    f"{where} has no column(s) {', '.join(missing)} (a sub-select names only "
                    "its own table's columns: correlated sub-selects are not supported)"
                )


def _subqueries(expr: Expression | None) -> list[Subquery]:
    """A rule's sub-selects, nested ones too."""
    out: list[Subquery] = []
    for sub in expr.subqueries if expr is not None else ():
        out.append(sub)
        out.extend(_subqueries(sub.where))
    return out


def _read_rule(
    config: Config,
    coll: CollectionConfig,
    info: TableInfo,
    sources: dict[str, TableInfo],
    problems: list[str],
) -> ReadRule | None:
    """The collection compiled over its table as `sidecar run` compiles it (so `check`
    reports what would stop `run`); a read rule it cannot turn into scopes is a problem."""
    try:
        return Collection(coll, info, sources).read
    except ExpressionError as error:
        near = f" (near {error.token!r})" if error.token else ""
        number = coll.read_line if coll.read_line is not None else coll.line
        line = f":{number}" if number is not None else ""
        problems.append(f"{config.file}{line}: collections.{coll.name}.read: {error.message}{near}")
        return None


def run_preflight(conn: psycopg.Connection, config: Config) -> PreflightReport:
    """Check the server, every mapped table and the publication; collect every problem."""
    problems: list[str] = []
    warnings: list[str] = []
    tables: dict[str, TableInfo] = {}
    if not _server_checks(conn, problems):
        return PreflightReport(tuple(problems), (), tables, False)
    rules: dict[str, ReadRule] = {}
    sources: dict[str, TableInfo] = {}
    _membership_checks(conn, config, tables, sources, problems)
    for coll in config.collections.values():
        info = load_table(conn, coll.table)
        if info is None:
            problems.append(
                f"collection {coll.name!r}: table {coll.table} does not exist "
                "(or the sidecar's role cannot see it)"
            )
            continue
        tables[coll.name] = info
        before = len(problems)
        _collection_checks(conn, coll, info, problems)
        # a sub-select table that is missing was named already (membership checks)
        found = all(name in sources for name in _subquery_tables(coll.read))
        if len(problems) == before and found:
            rule = _read_rule(config, coll, info, sources, problems)
            if rule is not None:
                rules[coll.name] = rule
        _write_rule_checks(conn, coll, problems)
    adds: list[TableInfo] = []
    exists = _publication_checks(conn, config, tables, problems, warnings, adds)
    warnings.extend(config_warnings(config, rules))
    return PreflightReport(tuple(problems), tuple(warnings), tables, exists, tuple(adds), sources)


def publication_statement(
    config: Config, tables: Sequence[TableInfo], *, create: bool
) -> sql.Composed:
    """CREATE PUBLICATION … FOR TABLE (create) or ALTER PUBLICATION … ADD TABLE."""
    head = (
        # partitioned tables' changes then come under the table's own name
        "CREATE PUBLICATION {} FOR TABLE {} WITH (publish_via_partition_root = true)"
        if create
        else "ALTER PUBLICATION {} ADD TABLE {}"
    )
    return sql.SQL(head).format(
        sql.Identifier(config.database.publication),
        sql.SQL(", ").join(
            sql.Identifier(t.ref.schema, t.ref.name) for t in distinct_tables(tables)
        ),
    )


def distinct_tables(tables: Iterable[TableInfo]) -> list[TableInfo]:
    """Each table once (several collections may map one table), in order."""
    return list({t.oid: t for t in tables}.values())


def create_publication(conn: psycopg.Connection, config: Config, tables: list[TableInfo]) -> str:
    """CREATE PUBLICATION for exactly the mapped tables; returns the statement run."""
    stmt = publication_statement(config, tables, create=True)
    conn.execute(stmt)
    return stmt.as_string(conn)


def add_to_publication(conn: psycopg.Connection, config: Config, tables: list[TableInfo]) -> str:
    """ALTER PUBLICATION … ADD TABLE for mapped tables it lacks; returns the statement."""
    stmt = publication_statement(config, tables, create=False)
    conn.execute(stmt)
    return stmt.as_string(conn)
