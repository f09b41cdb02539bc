"""The PostgreSQL store's layout and its statements, as text (`store/pg.py` runs them).

The tables are those of the SQLite store (`store/sqlite_sql.py` describes each), in a
schema of their own (`store.schema`) that every store connection puts first on its
`search_path`; JSON values (keys, rows, hidden columns, outcomes) are kept as text, a
row's scopes as `text[]`. `rows.rid` and `entries.eid` play SQLite's rowid.

Batched statements take their rows as parallel arrays (`unnest`), in binary: a batch is
one statement whatever its size, and the writer sends a batch's statements in one round
trip (pipeline mode). A row's scopes travel as JSON text.
The pending mutation ids (`store/pg_pending.py`) are the tables `pending` and
`pending_meta` of the same schema.
"""

from __future__ import annotations

# Bumped when the layout or the stored JSON of a value changes (a store of another format
# is rebuilt).
FORMAT = "1"

# Taken (for its transaction) by whoever creates the tables: two processes opening the
# same new store do not race on CREATE … IF NOT EXISTS.
DDL_LOCK = "SELECT pg_advisory_xact_lock(hashtext('sidecar store ddl'), hashtext(%s))"

SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key text PRIMARY KEY, value text NOT NULL);
CREATE TABLE IF NOT EXISTS replicas (
    id text PRIMARY KEY,
    host text NOT NULL,
    pid integer NOT NULL,
    role text NOT NULL,
    term bigint,
    started_at timestamptz NOT NULL,
    heartbeat_at timestamptz NOT NULL,
    lsn bigint NOT NULL,
    lag_seconds double precision NOT NULL
);
CREATE TABLE IF NOT EXISTS rows (
    rid bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    collection text NOT NULL,
    ident text COLLATE "C" NOT NULL,  -- in byte order, as SQLite's
    version bigint NOT NULL,
    rev text NOT NULL,
    key text NOT NULL,
    scopes text[] NOT NULL,
    scope text,
    data text NOT NULL,
    hidden text NOT NULL
);
CREATE UNIQUE INDEX IF NOT EXISTS rows_ident ON rows (collection, ident);
CREATE INDEX IF NOT EXISTS rows_scope ON rows (scope, version);
CREATE TABLE IF NOT EXISTS entries (
    eid bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    scope text NOT NULL,
    version bigint NOT NULL,
    collection text NOT NULL,
    ident text NOT NULL,
    deleted smallint NOT NULL,
    key text,
    rev text
);
CREATE UNIQUE INDEX IF NOT EXISTS entries_scope ON entries (scope, version);
CREATE UNIQUE INDEX IF NOT EXISTS entries_tombstone ON entries (collection, ident, scope)
    WHERE deleted = 1;
CREATE INDEX IF NOT EXISTS entries_row ON entries (collection, ident);
CREATE INDEX IF NOT EXISTS entries_purge ON entries (version) WHERE deleted = 1;
CREATE TABLE IF NOT EXISTS marks (version bigint PRIMARY KEY, at double precision NOT NULL);
CREATE TABLE IF NOT EXISTS mutations (
    subject text NOT NULL,
    id text NOT NULL,
    device text,
    lsn bigint NOT NULL,
    outcome text NOT NULL,
    at double precision NOT NULL,
    PRIMARY KEY (subject, id)
);
CREATE INDEX IF NOT EXISTS mutations_row
    ON mutations ((outcome::jsonb ->> 'collection'), (outcome::jsonb -> 'key'));
CREATE TABLE IF NOT EXISTS grants (
    gid bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    lookup text NOT NULL,
    ident text NOT NULL,
    scope text NOT NULL,
    value text NOT NULL,
    added bigint NOT NULL,
    removed bigint
);
CREATE INDEX IF NOT EXISTS grants_scope ON grants (lookup, scope, added);
CREATE INDEX IF NOT EXISTS grants_open ON grants (lookup, ident) WHERE removed IS NULL;
CREATE INDEX IF NOT EXISTS grants_removed ON grants (removed) WHERE removed IS NOT NULL;
"""

PENDING_SCHEMA = """
CREATE TABLE IF NOT EXISTS pending (
    subject text NOT NULL,
    id text NOT NULL,
    xid bigint NOT NULL,
    rev text,
    origin text NOT NULL,
    at double precision NOT NULL,
    PRIMARY KEY (subject, id)
);
CREATE TABLE IF NOT EXISTS pending_meta (key text PRIMARY KEY, value text NOT NULL);
"""

TABLES = ("rows", "entries", "marks", "mutations", "grants", "meta")

SET_META = (
    "INSERT INTO meta (key, value) VALUES (%s, %s) "
    "ON CONFLICT (key) DO UPDATE SET value = excluded.value"
)

# -- row changes ------------------------------------------------------------------------
# The writer's batch statements take their parameters in binary (`%b`: no quoting or
# escaping of JSON on either side) and join a batch's identities to the stored rows,
# which is one index probe per identity: `KEYED_PLANS` (run in each batch's transaction)
# keeps the planner to nested loops for the rest of the transaction, where a hash or merge
# join would read the whole table for every batch (the planner misjudges how few rows a
# batch names, most of all after a bulk load, before the table has statistics). Every
# statement of the writer's transactions is such a keyed one, or one that reads no join.
KEYED_PLANS = (
    "SELECT set_config('enable_hashjoin', 'off', true), set_config('enable_mergejoin', 'off', true)"
)
# Stored rows by identity, as the netting wants them: [ident, rid, version, rev, scopes,
# key, hidden(, data)]. The collection comes with each identity (a constant would let
# the planner read the collection's rows once, whole, and join them in memory).
LOOKUP = """
SELECT r.ident, r.rid, r.version, r.rev, r.scopes, r.key, r.hidden{row}
FROM unnest(%b::text[], %b::text[]) AS v(collection, ident)
JOIN rows r ON r.collection = v.collection AND r.ident = v.ident
"""
# The usual batch of a bulk UPDATE in one statement, without a lookup: stored rows, each
# changed once, staying in their one scope (`rows.scope`) with another rev; versions
# from the parameter on, in the batch's order (`n`). Parameters: collection, ident, rev,
# scope, data, key (null: the identity), hidden (null: {}), as arrays, then the version
# before the batch and the batch's length. All or nothing: when not every row of the
# batch is such a row, nothing is written (0 rows) and the batch takes the general way.
ROWS_REWRITE_IN_SCOPE = """
WITH v AS MATERIALIZED (
    SELECT r.ctid AS tid, v.n, v.ident, v.rev, v.data, v.key, v.hidden
    FROM unnest(%b::text[], %b::text[], %b::text[], %b::text[], %b::text[], %b::text[],
        %b::text[]) WITH ORDINALITY AS v(collection, ident, rev, scope, data, key, hidden, n)
    JOIN rows r ON r.collection = v.collection AND r.ident = v.ident AND r.scope = v.scope
        AND r.rev <> v.rev)
UPDATE rows SET version = %b::bigint + v.n, rev = v.rev, key = coalesce(v.key, v.ident),
    data = v.data, hidden = coalesce(v.hidden, '{}')
FROM v WHERE rows.ctid = v.tid AND (SELECT count(*) FROM v) = %b::bigint
"""
ROWS_DELETE = "DELETE FROM rows USING unnest(%b::bigint[]) AS v(rid) WHERE rows.rid = v.rid"
ROWS_UPDATE = """
UPDATE rows SET version = v.version, rev = v.rev, key = v.key,
    scopes = ARRAY(SELECT jsonb_array_elements_text(v.scopes::jsonb)), scope = v.scope,
    data = coalesce(v.data, rows.data), hidden = v.hidden
FROM unnest(%b::bigint[], %b::bigint[], %b::text[], %b::text[], %b::text[], %b::text[],
    %b::text[], %b::text[]) AS v(rid, version, rev, key, scopes, scope, data, hidden)
WHERE rows.rid = v.rid
"""
ROWS_INSERT = """
INSERT INTO rows (collection, ident, version, rev, key, scopes, scope, data, hidden)
SELECT v.collection, v.ident, v.version, v.rev, v.key,
    ARRAY(SELECT jsonb_array_elements_text(v.scopes::jsonb)), v.scope, v.data, v.hidden
FROM unnest(%b::text[], %b::text[], %b::bigint[], %b::text[], %b::text[], %b::text[],
    %b::text[], %b::text[], %b::text[])
    AS v(collection, ident, version, rev, key, scopes, scope, data, hidden)
"""
ROWS_REWRITE = """
UPDATE rows SET version = v.version, rev = v.rev, key = v.key, data = v.data,
    hidden = v.hidden
FROM unnest(%b::bigint[], %b::bigint[], %b::text[], %b::text[], %b::text[], %b::text[])
    AS v(rid, version, rev, key, data, hidden)
WHERE rows.rid = v.rid
"""
ENTRIES_RENUMBER = """
UPDATE entries SET version = v.version
FROM unnest(%b::text[], %b::bigint[], %b::bigint[]) AS v(scope, old, version)
WHERE entries.scope = v.scope AND entries.version = v.old
"""
ENTRIES_MOVE = """
UPDATE entries SET version = v.version, deleted = v.deleted, key = v.key, rev = v.rev
FROM unnest(%b::text[], %b::bigint[], %b::bigint[], %b::smallint[], %b::text[], %b::text[])
    AS v(scope, old, version, deleted, key, rev)
WHERE entries.scope = v.scope AND entries.version = v.old
"""
ENTRIES_DELETE = """
DELETE FROM entries e USING unnest(%b::text[], %b::bigint[]) AS v(scope, version)
WHERE e.scope = v.scope AND e.version = v.version
"""
TOMBSTONES_DELETE = """
DELETE FROM entries e
USING unnest(%b::text[], %b::text[], %b::text[]) AS v(collection, ident, scope)
WHERE e.collection = v.collection AND e.ident = v.ident AND e.scope = v.scope AND e.deleted = 1
"""
ENTRIES_INSERT = """
INSERT INTO entries (scope, version, collection, ident, deleted, key, rev)
SELECT * FROM unnest(%b::text[], %b::bigint[], %b::text[], %b::text[], %b::smallint[],
    %b::text[], %b::text[])
"""
# The initial copy (COPY … FROM STDIN, rows written by the writer with their versions).
COPY_ROWS = (
    "COPY rows (collection, ident, version, rev, key, scopes, scope, data, hidden) FROM STDIN"
)
COPY_ENTRIES = "COPY entries (scope, version, collection, ident, deleted) FROM STDIN"

# -- reads -----------------------------------------------------------------------------------
# Changes after a version in any of some scopes, each version once (a row in several
# scopes has an entry of the same version in each; its upsert sorts before a tombstone).
PULL = """
SELECT DISTINCT ON (version) version, deleted, collection, key, rev, data FROM (
    SELECT version, 0 AS deleted, collection, key, rev, data FROM rows
    WHERE scope = ANY(%(scopes)s::text[]) AND version > %(after)s
    UNION ALL
    SELECT e.version, e.deleted, e.collection, coalesce(e.key, r.key), coalesce(e.rev, r.rev),
        r.data
    FROM entries e LEFT JOIN rows r
        ON e.deleted = 0 AND r.collection = e.collection AND r.ident = e.ident
    WHERE e.scope = ANY(%(scopes)s::text[]) AND e.version > %(after)s) c
ORDER BY version, deleted LIMIT %(limit)s
"""
# The live rows of some scopes with a version in (after, upto].
PULL_LIVE = """
SELECT DISTINCT ON (version) version, 0, collection, key, rev, data FROM (
    SELECT version, collection, key, rev, data FROM rows
    WHERE scope = ANY(%(scopes)s::text[]) AND version > %(after)s AND version <= %(upto)s
    UNION ALL
    SELECT e.version, e.collection, r.key, r.rev, r.data
    FROM entries e JOIN rows r ON r.collection = e.collection AND r.ident = e.ident
    WHERE e.scope = ANY(%(scopes)s::text[]) AND e.version > %(after)s
        AND e.version <= %(upto)s AND e.deleted = 0) c
ORDER BY version LIMIT %(limit)s
"""
# What a client may hold of a scope it lost: its rows now, and those that left it after
# a version; each with the scopes the row is in now (JSON; NULL: deleted).
SCOPE_HELD = """
SELECT version, collection, ident, key, rev, array_to_json(scopes)::text FROM rows
WHERE scope = %(scope)s
UNION ALL
SELECT e.version, e.collection, e.ident, coalesce(e.key, r.key), coalesce(e.rev, r.rev),
    array_to_json(r.scopes)::text
FROM entries e LEFT JOIN rows r ON r.collection = e.collection AND r.ident = e.ident
WHERE e.scope = %(scope)s AND (e.deleted = 0 OR e.version > %(after)s)
"""
MUTATION = "SELECT id, subject, device, lsn, outcome FROM mutations WHERE subject = %s AND id = %s"
MUTATIONS = (
    "SELECT id, subject, device, lsn, outcome FROM mutations WHERE subject = %s AND id = ANY(%s)"
)
AUDIT = """
SELECT id, subject, device, lsn, outcome FROM mutations
WHERE outcome::jsonb ->> 'collection' = %s AND outcome::jsonb -> 'key' = %s::jsonb
ORDER BY lsn DESC LIMIT %s
"""
ROW_XIDS = """
SELECT k.key, m.outcome::jsonb ->> 'xid'
FROM unnest(%s::text[]) AS k(key) JOIN mutations m
    ON m.outcome::jsonb ->> 'collection' = %s AND m.outcome::jsonb -> 'key' = k.key::jsonb
WHERE m.subject = %s
ORDER BY m.lsn
"""
RECORD_MUTATION = (
    "INSERT INTO mutations (subject, id, device, lsn, outcome, at) "
    "VALUES (%s, %s, %s, %s, %s, %s) ON CONFLICT (subject, id) DO NOTHING"
)
COUNTS = """
SELECT (SELECT count(*) FROM rows), (SELECT count(*) FROM entries WHERE deleted = 1),
    (SELECT count(*) FROM mutations),
    (SELECT coalesce(sum(pg_total_relation_size(c.oid)), 0)::bigint FROM pg_class c
     WHERE c.relkind = 'r'
        AND c.relnamespace = (SELECT oid FROM pg_namespace WHERE nspname = current_schema()))
"""

# -- grants (membership tables) ------------------------------------------------------------
GRANTS_OPEN = """
SELECT g.lookup, g.ident, g.scope, g.value
FROM unnest(%s::text[], %s::text[]) AS v(lookup, ident) JOIN grants g
    ON g.lookup = v.lookup AND g.ident = v.ident AND g.removed IS NULL
"""
GRANTS_CLOSE = """
UPDATE grants g SET removed = %s
FROM unnest(%s::text[], %s::text[], %s::text[], %s::text[]) AS v(lookup, ident, scope, value)
WHERE g.lookup = v.lookup AND g.ident = v.ident AND g.removed IS NULL
    AND g.scope = v.scope AND g.value = v.value
"""
GRANTS_ADD = """
INSERT INTO grants (lookup, ident, scope, value, added)
SELECT v.lookup, v.ident, v.scope, v.value, %s
FROM unnest(%s::text[], %s::text[], %s::text[], %s::text[]) AS v(lookup, ident, scope, value)
"""
GRANTS_END = """
UPDATE grants SET removed = %s WHERE removed IS NULL AND lookup = ANY(%s::text[])
RETURNING lookup, scope
"""
GRANTS_AT = """
SELECT DISTINCT value FROM grants
WHERE lookup = %s AND scope = ANY(%s::text[]) AND added <= %s
    AND (removed IS NULL OR removed > %s)
"""
GRANTS_CHANGED = """
SELECT 1 FROM unnest(%s::text[], %s::text[]) AS k(lookup, scope) JOIN grants g
    ON g.lookup = k.lookup AND g.scope = k.scope
WHERE (g.added > %s AND g.added <= %s) OR (g.removed > %s AND g.removed <= %s)
LIMIT 1
"""

# -- reconciling -------------------------------------------------------------------------------
SEEN = """
CREATE TEMP TABLE IF NOT EXISTS seen (collection text NOT NULL, ident text NOT NULL,
    PRIMARY KEY (collection, ident))
"""
MARK = (
    "INSERT INTO seen SELECT %s, i FROM unnest(%s::text[]) AS i "
    "ON CONFLICT (collection, ident) DO NOTHING"
)
UNSEEN_ROWS = """
SELECT r.ident FROM rows r WHERE r.collection = %(c)s
    AND NOT EXISTS (SELECT 1 FROM seen s WHERE s.collection = %(c)s AND s.ident = r.ident)
ORDER BY r.ident
"""
UNSEEN_GRANTS = """
SELECT DISTINCT g.lookup, g.ident FROM grants g WHERE g.lookup = %(l)s AND g.removed IS NULL
    AND NOT EXISTS (SELECT 1 FROM seen s WHERE s.collection = %(c)s AND s.ident = g.ident)
ORDER BY g.lookup, g.ident
"""
