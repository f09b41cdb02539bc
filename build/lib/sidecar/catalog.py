"""What the database says about the mapped tables: columns, types, keys, replica identity."""

from __future__ import annotations

from dataclasses import dataclass

import psycopg

from sidecar.config.model import TableRef


@dataclass(frozen=True, slots=True)
class ColumnInfo:
    name: str
    type_oid: int
    type_name: str  # as format_type() prints it, e.g. "timestamp with time zone"
    nullable: bool


@dataclass(frozen=True, slots=True)
class TableInfo:
    ref: TableRef
    oid: int
    columns: tuple[ColumnInfo, ...]
    primary_key: tuple[str, ...]
    replica_identity: str  # 'd' default (primary key), 'n' nothing, 'f' full, 'i' index
    identity_index: tuple[str, ...]  # columns of the replica identity index ('d' or 'i')
    unique_keys: tuple[tuple[str, ...], ...]  # unique indexes whose columns are all NOT NULL
    partitioned: bool = False

    def column(self, name: str) -> ColumnInfo | None:
        for c in self.columns:
            if c.name == name:
                return c
        return None

    @property
    def column_names(self) -> tuple[str, ...]:
        return tuple(c.name for c in self.columns)

    @property
    def updates_need_identity(self) -> bool:
        """True when UPDATE/DELETE would fail once the table is published (no identity)."""
        return self.replica_identity == "n" or (
            self.replica_identity == "d" and not self.primary_key
        )


_TABLE_SQL = """
SELECT c.oid, c.relreplident, c.relkind = 'p'
FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
WHERE n.nspname = %s AND c.relname = %s AND c.relkind IN ('r', 'p')
"""

_COLUMNS_SQL = """
SELECT a.attname, a.atttypid, format_type(a.atttypid, a.atttypmod), NOT a.attnotnull
FROM pg_attribute a
WHERE a.attrelid = %s AND a.attnum > 0 AND NOT a.attisdropped
ORDER BY a.attnum
"""

_INDEXES_SQL = """
SELECT i.indisprimary, i.indisreplident,
       array(SELECT a.attname FROM unnest(i.indkey) WITH ORDINALITY k(attnum, ord)
             JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = k.attnum
             ORDER BY k.ord) AS cols,
       bool_and(a2.attnotnull) AS all_not_null
FROM pg_index i
JOIN pg_attribute a2 ON a2.attrelid = i.indrelid AND a2.attnum = ANY(i.indkey)
WHERE i.indrelid = %s AND i.indisunique AND i.indpred IS NULL AND i.indexprs IS NULL
  AND i.indisvalid
GROUP BY i.indexrelid, i.indisprimary, i.indisreplident, i.indkey, i.indrelid
"""


def load_table(conn: psycopg.Connection, ref: TableRef) -> TableInfo | None:
    """The table's description, or None when it does not exist."""
    row = conn.execute(_TABLE_SQL, (ref.schema, ref.name)).fetchone()
    if row is None:
        return None
    oid, replident, partitioned = int(row[0]), str(row[1]), bool(row[2])
    columns = tuple(
        ColumnInfo(name, int(type_oid), type_name, bool(nullable))
        for name, type_oid, type_name, nullable in conn.execute(_COLUMNS_SQL, (oid,))
    )
    primary_key: tuple[str, ...] = ()
    identity_index: tuple[str, ...] = ()
    unique_keys: list[tuple[str, ...]] = []
    for is_primary, is_replident, cols, all_not_null in conn.execute(_INDEXES_SQL, (oid,)):
        cols_t = tuple(cols)
        if is_primary:
            primary_key = cols_t
        if is_replident:
            identity_index = cols_t
        if all_not_null:
            unique_keys.append(cols_t)
    if replident == "d":
        identity_index = primary_key
    return TableInfo(
        ref=ref,
        oid=oid,
        columns=columns,
        primary_key=primary_key,
        replica_identity=replident,
        identity_index=identity_index,
        unique_keys=tuple(sorted(unique_keys, key=lambda k: (k != primary_key, k))),
        partitioned=partitioned,
    )
