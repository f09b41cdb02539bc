"""The SQLite store's layout and its batched statements, as text (`store/sqlite.py` runs
them; `tests/unit/test_store_plans.py` checks that none of them scans a table).

Tables:
- `rows`: the latest image of every synced row (compacted), keyed by (collection, ident);
  a row in exactly one scope (the usual case) names it in `scope`, and is itself that
  scope's entry for the row: indexed by (scope, version), it is what a pull reads;
- `entries`: the other entries, per scope: tombstones (a scope the row left: they keep
  the key and rev the row had) and the upsert entries of rows in several scopes (they
  hold no copy of the row: a pull reads it from `rows`, an upsert entry's version being
  always its row's). Keyed by (scope, version); a row's upsert entry is found by
  (scope, row version), a tombstone, to be replaced when the row comes back, by identity;
- `marks`: version → wall time, to find the tombstones older than the retention period;
- `mutations`: applied mutation ids and their first outcome, per subject: a mutation id is
  the client's, unique only among its subject's mutations (the same id from two subjects
  is two mutations);
- `grants`: what rows of membership tables grant through each lookup of the read rules
  (`membership.py`), with history: (lookup, row identity, scope, value) from version
  `added` until version `removed` (NULL: still granted). A caller's values at version x
  are those granted at x, so a pull can tell what a client's scopes were at its cursor;
- `meta`: epoch, last applied LSN, version counter, snapshot state, slot identity.
"""

from __future__ import annotations

# Bumped when the file layout or the stored JSON of a value changes; a store of another
# format is rebuilt, except a format `MIGRATIONS` knows how to bring up to this one.
# 4: mutation ids keyed by (subject, id); json/jsonb values stored as PostgreSQL's own
# text (exact numbers, any depth), which changes their rows' rev. 5: the grants table.
FORMAT = "5"

# Tables are plain rowid tables so that the initial copy appends; their indexes are built
# after it (a bulk load runs without them).
SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS rows (
    collection TEXT NOT NULL,
    ident TEXT NOT NULL,
    version INTEGER NOT NULL,
    rev TEXT NOT NULL,
    key BLOB NOT NULL,
    scopes TEXT NOT NULL,
    scope TEXT,
    row BLOB NOT NULL,
    hidden BLOB NOT NULL
);
CREATE TABLE IF NOT EXISTS entries (
    scope TEXT NOT NULL,
    version INTEGER NOT NULL,
    collection TEXT NOT NULL,
    ident TEXT NOT NULL,
    deleted INTEGER NOT NULL,
    key BLOB,
    rev TEXT
);
CREATE TABLE IF NOT EXISTS marks (version INTEGER PRIMARY KEY, at REAL NOT NULL);
CREATE TABLE IF NOT EXISTS mutations (
    subject TEXT NOT NULL,
    id TEXT NOT NULL,
    device TEXT,
    lsn INTEGER NOT NULL,
    outcome BLOB NOT NULL,
    at REAL NOT NULL,
    PRIMARY KEY (subject, id)
);
CREATE TABLE IF NOT EXISTS grants (
    lookup TEXT NOT NULL,
    ident TEXT NOT NULL,
    scope TEXT NOT NULL,
    value TEXT NOT NULL,
    added INTEGER NOT NULL,
    removed INTEGER
);
"""

# Formats brought up to `FORMAT` (statements run in one transaction). Format 3 keyed
# mutation ids alone; its rows already carry their subject, so that table is rewritten in
# place (a missing subject becomes ""). Its json/jsonb values are in the old form, so the
# synced rows are copied again: the migration marks the copy as not done, and the next
# start rebuilds the store — keeping the mutation ids, as any rebuild on the same
# database lineage does (clients resync once, with 410).
MIGRATIONS = {
    "3": """
ALTER TABLE mutations RENAME TO mutations_v3;
CREATE TABLE mutations (
    subject TEXT NOT NULL,
    id TEXT NOT NULL,
    device TEXT,
    lsn INTEGER NOT NULL,
    outcome BLOB NOT NULL,
    at REAL NOT NULL,
    PRIMARY KEY (subject, id)
);
INSERT OR IGNORE INTO mutations (subject, id, device, lsn, outcome, at)
    SELECT coalesce(subject, ''), id, device, lsn, outcome, at FROM mutations_v3;
DROP TABLE mutations_v3;
UPDATE meta SET value = '0' WHERE key = 'snapshot_done';
""",
    # 4 → 5: the grants table, which SCHEMA creates (a format-4 store has no membership
    # rule: a config that adds one changes the collections' shape and copies them again)
    "4": "",
}

INDEXES = """
CREATE UNIQUE INDEX IF NOT EXISTS rows_ident ON rows (collection, ident);
CREATE INDEX IF NOT EXISTS rows_scope ON rows (scope, version);
CREATE UNIQUE INDEX IF NOT EXISTS entries_scope ON entries (scope, version);
CREATE UNIQUE INDEX IF NOT EXISTS entries_tombstone ON entries (collection, ident, scope)
    WHERE deleted = 1;
CREATE INDEX IF NOT EXISTS entries_purge ON entries (version) WHERE deleted = 1;
CREATE INDEX IF NOT EXISTS grants_scope ON grants (lookup, scope, added);
CREATE INDEX IF NOT EXISTS grants_open ON grants (lookup, ident) WHERE removed IS NULL;
CREATE INDEX IF NOT EXISTS grants_removed ON grants (removed) WHERE removed IS NOT NULL;
CREATE INDEX IF NOT EXISTS mutations_row
    ON mutations (json_extract(outcome, '$.collection'), json_extract(outcome, '$.key'));
"""

TABLES = ("rows", "entries", "marks", "mutations", "grants", "meta")

# Batched statements take their rows as one JSON array parameter (json_each): a batch is
# then a single sqlite3_step, which runs without the GIL, instead of one step per row
# (executemany), each of which must win the GIL back from the threads routing rows.
# Blobs travel as JSON strings and are cast back. A row update without `row` (null) keeps
# the stored one: a change of hidden columns only.
LOOKUP = """
SELECT json_group_array(json_array(
    r.ident, r.rowid, r.version, r.rev, json(r.scopes), CAST(r.key AS TEXT),
    CAST(r.hidden AS TEXT){row}))
FROM json_each(?1) v CROSS JOIN rows r ON r.collection = ?2 AND r.ident = v.value
"""
ROWS_DELETE = "DELETE FROM rows WHERE rowid IN (SELECT value FROM json_each(?))"
ROWS_UPDATE = """
UPDATE rows SET version = v.value ->> 1, rev = v.value ->> 2,
    key = CAST(v.value ->> 3 AS BLOB), scopes = v.value -> 4, scope = v.value ->> 5,
    row = coalesce(CAST(v.value ->> 6 AS BLOB), row), hidden = CAST(v.value ->> 7 AS BLOB)
FROM json_each(?) v WHERE rows.rowid = v.value ->> 0
"""
ROWS_INSERT = """
INSERT INTO rows (collection, ident, version, rev, key, scopes, scope, row, hidden)
SELECT value ->> 0, value ->> 1, value ->> 2, value ->> 3, CAST(value ->> 4 AS BLOB),
    value -> 5, value ->> 6, CAST(value ->> 7 AS BLOB), CAST(value ->> 8 AS BLOB)
FROM json_each(?)
"""
ROWS_REWRITE = """
UPDATE rows SET version = v.value ->> 1, rev = v.value ->> 2,
    key = CAST(v.value ->> 3 AS BLOB), row = CAST(v.value ->> 4 AS BLOB),
    hidden = CAST(v.value ->> 5 AS BLOB)
FROM json_each(?) v WHERE rows.rowid = v.value ->> 0
"""
# The usual batch, tried first: rows changed once each, staying in their one scope. The
# statement finds them itself (no lookup); a row that is not such a change is left alone,
# which the count of rows changed tells. The collection comes with each row: a join term
# on a parameter alone would make the planner scan the collection's rows.
ROWS_REWRITE_IN_SCOPE = """
UPDATE rows SET version = ?2 + v.key, rev = v.value ->> 2, row = CAST(v.value ->> 4 AS BLOB),
    key = coalesce(CAST(v.value ->> 5 AS BLOB), rows.key),
    hidden = coalesce(CAST(v.value ->> 6 AS BLOB), X'7B7D')
FROM json_each(?1) v
WHERE rows.collection = v.value ->> 0 AND rows.ident = v.value ->> 1
    AND rows.scope = v.value ->> 3 AND rows.rev <> v.value ->> 2
"""
ENTRIES_RENUMBER = """
UPDATE entries SET version = v.value ->> 2 FROM json_each(?) v
WHERE entries.scope = v.value ->> 0 AND entries.version = v.value ->> 1
"""
ENTRIES_MOVE = """
UPDATE entries SET version = v.value ->> 2, deleted = v.value ->> 3,
    key = CAST(v.value ->> 4 AS BLOB), rev = v.value ->> 5
FROM json_each(?) v
WHERE entries.scope = v.value ->> 0 AND entries.version = v.value ->> 1
"""
ENTRIES_DELETE = """
DELETE FROM entries WHERE rowid IN (
    SELECT e.rowid FROM json_each(?) v CROSS JOIN entries e
    ON e.scope = v.value ->> 0 AND e.version = v.value ->> 1)
"""
TOMBSTONES_DELETE = """
DELETE FROM entries WHERE rowid IN (
    SELECT e.rowid FROM json_each(?) v CROSS JOIN entries e
    ON e.collection = v.value ->> 0 AND e.ident = v.value ->> 1 AND e.scope = v.value ->> 2
        AND e.deleted = 1)
"""
ENTRIES_INSERT = """
INSERT INTO entries (scope, version, collection, ident, deleted, key, rev)
SELECT value ->> 0, value ->> 1, value ->> 2, value ->> 3, value ->> 4,
    CAST(value ->> 5 AS BLOB), value ->> 6
FROM json_each(?)
"""
# The initial copy's bulk insert: [ident, rev, scope, row, key, scopes, hidden] per row,
# key null when equal to the identity, scopes null when the row is in exactly `scope`,
# hidden null when "{}"; versions follow the batch order from ?3. Entries (rows in
# several scopes): [scope, position in the batch, ident].
LOAD_ROWS = """
INSERT INTO rows (collection, ident, version, rev, key, scopes, scope, row, hidden)
SELECT ?2, value ->> 0, ?3 + key, value ->> 1, CAST(coalesce(value ->> 4, value ->> 0) AS BLOB),
    coalesce(value ->> 5, json_array(value ->> 2)), value ->> 2, CAST(value ->> 3 AS BLOB),
    coalesce(CAST(value ->> 6 AS BLOB), X'7B7D')
FROM json_each(?1)
"""
LOAD_ENTRIES = """
INSERT INTO entries (scope, version, collection, ident, deleted)
SELECT value ->> 0, ?3 + (value ->> 1), ?2, value ->> 2, 0 FROM json_each(?1)
"""
# A scope's changes after a version: its one-scope rows merged with its other entries.
PULL = """
SELECT version, 0, collection, key, rev, row FROM rows WHERE scope = ?1 AND version > ?2
UNION ALL
SELECT e.version, e.deleted, e.collection, coalesce(e.key, r.key), coalesce(e.rev, r.rev), r.row
FROM entries e LEFT JOIN rows r
    ON e.deleted = 0 AND r.collection = e.collection AND r.ident = e.ident
WHERE e.scope = ?1 AND e.version > ?2
ORDER BY 1 LIMIT ?3
"""

# -- grants (membership tables) ------------------------------------------------------------
# The open grants of some rows: [lookup, ident] pairs in, [lookup, ident, scope, value] out.
GRANTS_OPEN = """
SELECT json_group_array(json_array(g.lookup, g.ident, g.scope, g.value))
FROM json_each(?1) v CROSS JOIN grants g
    ON g.lookup = v.value ->> 0 AND g.ident = v.value ->> 1 AND g.removed IS NULL
"""
# [lookup, ident, scope, value] granted no more from version ?2
GRANTS_CLOSE = """
UPDATE grants SET removed = ?2 WHERE rowid IN (
    SELECT g.rowid FROM json_each(?1) v CROSS JOIN grants g
    ON g.lookup = v.value ->> 0 AND g.ident = v.value ->> 1 AND g.removed IS NULL
        AND g.scope = v.value ->> 2 AND g.value = v.value ->> 3)
"""
GRANTS_ADD = """
INSERT INTO grants (lookup, ident, scope, value, added)
SELECT value ->> 0, value ->> 1, value ->> 2, value ->> 3, ?2 FROM json_each(?1)
"""
# The values granted to some scopes of a lookup at a version.
GRANTS_AT = """
SELECT DISTINCT g.value FROM json_each(?2) s CROSS JOIN grants g
    ON g.lookup = ?1 AND g.scope = s.value AND g.added <= ?3
WHERE g.removed IS NULL OR g.removed > ?3
"""
# Whether any of some [lookup, scope] pairs gained or lost a grant in (?2, ?3].
GRANTS_CHANGED = """
SELECT 1 FROM json_each(?1) k CROSS JOIN grants g
    ON g.lookup = k.value ->> 0 AND g.scope = k.value ->> 1
WHERE (g.added > ?2 AND g.added <= ?3) OR (g.removed > ?2 AND g.removed <= ?3)
LIMIT 1
"""
# The scopes among ?1 with a change after version ?2 (a pull over many scopes reads
# only those).
ACTIVE_SCOPES = """
SELECT s.value FROM json_each(?1) s
WHERE EXISTS (SELECT 1 FROM rows WHERE scope = s.value AND version > ?2)
    OR EXISTS (SELECT 1 FROM entries WHERE scope = s.value AND version > ?2)
"""
# A scope's live rows in (?2, ?4]: a move-in (rows a client gains with a scope).
PULL_LIVE = """
SELECT version, 0, collection, key, rev, row FROM rows
WHERE scope = ?1 AND version > ?2 AND version <= ?4
UNION ALL
SELECT e.version, 0, e.collection, r.key, r.rev, r.row
FROM entries e JOIN rows r ON r.collection = e.collection AND r.ident = e.ident
WHERE e.scope = ?1 AND e.version > ?2 AND e.version <= ?4 AND e.deleted = 0
ORDER BY 1 LIMIT ?3
"""
# What a client may hold of a scope it lost: its rows now, and those that left it after
# version ?2; each with the scopes the row is in now (NULL: deleted).
SCOPE_HELD = """
SELECT version, collection, ident, key, rev, scopes FROM rows WHERE scope = ?1
UNION ALL
SELECT e.version, e.collection, e.ident, coalesce(e.key, r.key), coalesce(e.rev, r.rev),
    r.scopes
FROM entries e LEFT JOIN rows r ON r.collection = e.collection AND r.ident = e.ident
WHERE e.scope = ?1 AND (e.deleted = 0 OR e.version > ?2)
"""
