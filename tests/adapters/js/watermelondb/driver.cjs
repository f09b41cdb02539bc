// WatermelonDB clients driven by JSON lines: one command per line on stdin, one answer per
// line on stdout ({"ok": true, "result": …} or {"ok": false, "error": "…"}). WatermelonDB's
// own console output goes to stderr; its errors and warnings are also kept for `logs`.
//
// Plain Node, no Babel: the package is CommonJS (this file is .cjs, so `require` resolves
// `@nozbe/watermelondb/adapters/lokijs` as a directory), and models are plain classes with
// a static `table`; fields are read and written through `_raw` / `_setRaw`, which is what
// the @field decorators do.
//
// Commands (every one names a `client`):
//   open {token, url, tables: {name: [[column, type, optional?], …]}}
//   sync {pause?}: synchronize(); with `pause`, pushChanges first answers
//        {"event": "before_push", "changes": …} and waits for a `resume` line
//   create {table, fields} → id; update {table, id, fields}; remove {table, id}
//   dump {table} → raw records, with _status and _changed
//   put_synced {table, raw}: a record as if pulled (for the resync test)
//   last_pulled_at / set_last_pulled_at {value}
//   logs → WatermelonDB errors and warnings logged since the last `logs`
'use strict'

const readline = require('node:readline')
const { Database, Model, appSchema, tableSchema } = require('@nozbe/watermelondb')
const LokiJSAdapter = require('@nozbe/watermelondb/adapters/lokijs').default
const { synchronize } = require('@nozbe/watermelondb/sync')

const logged = []
for (const level of ['log', 'debug', 'info', 'warn', 'error']) {
  console[level] = (...args) => {
    const text = args.map((a) => (a instanceof Error ? a.message : String(a))).join(' ')
    if (level === 'warn' || level === 'error') logged.push(`${level}: ${text}`)
    process.stderr.write(`[${level}] ${text}\n`)
  }
}

// -- stdin as a queue of lines (a paused sync reads its `resume` from it) --------------
const lines = []
const waiting = []
readline.createInterface({ input: process.stdin }).on('line', (line) => {
  if (!line.trim()) return
  const waiter = waiting.shift()
  waiter ? waiter(line) : lines.push(line)
}).on('close', () => process.exit(0))
const nextLine = () =>
  lines.length ? Promise.resolve(lines.shift()) : new Promise((resolve) => waiting.push(resolve))
const send = (obj) => process.stdout.write(JSON.stringify(obj) + '\n')

// -- clients ---------------------------------------------------------------------------
const clients = new Map()
let opened = 0

function open({ client, token, url, tables }) {
  const schema = appSchema({
    version: 1,
    tables: Object.entries(tables).map(([name, columns]) =>
      tableSchema({
        name,
        columns: columns.map(([column, type, optional]) => ({
          name: column,
          type,
          isOptional: !!optional,
        })),
      }),
    ),
  })
  const modelClasses = Object.keys(tables).map(
    (name) =>
      class extends Model {
        static table = name
      },
  )
  const adapter = new LokiJSAdapter({
    schema,
    dbName: `client-${++opened}`,
    useWebWorker: false,
    useIncrementalIndexedDB: false,
    extraLokiOptions: { autosave: false },
  })
  clients.set(client, { database: new Database({ adapter, modelClasses }), token, url })
}

// The client code of docs/adapters/watermelondb.md, with a pause hook before the push.
async function sync({ client, pause }) {
  const { database, token, url } = clients.get(client)
  const headers = { Authorization: `Bearer ${token}`, 'Content-Type': 'application/json' }
  const endpoint = new URL('watermelondb/sync', url).href
  await synchronize({
    database,
    sendCreatedAsUpdated: true,
    pullChanges: async ({ lastPulledAt, schemaVersion, migration }) => {
      // Answers are bounded in size (limits.max_page_bytes): pull until has_more is false,
      // each time from the last answer's timestamp, and hand WatermelonDB the merged set.
      let since = lastPulledAt
      let result = null
      for (;;) {
        const query = new URLSearchParams({
          last_pulled_at: String(since ?? ''),
          schema_version: String(schemaVersion),
          migration: JSON.stringify(result ? null : migration),
        })
        const response = await fetch(`${endpoint}?${query}`, { headers })
        if (!response.ok) throw new Error(`pull ${response.status}: ${await response.text()}`)
        const page = await response.json() // { changes, timestamp, has_more[, experimentalStrategy] }
        result = mergePulls(result, page)
        if (!page.has_more) return result
        since = page.timestamp
      }
    },
    pushChanges: async ({ changes, lastPulledAt }) => {
      if (pause) {
        send({ event: 'before_push', changes, lastPulledAt })
        await nextLine() // `resume`
      }
      const response = await fetch(`${endpoint}?last_pulled_at=${lastPulledAt}`, {
        method: 'POST',
        headers,
        body: JSON.stringify(changes),
      })
      if (!response.ok) throw new Error(`push ${response.status}: ${await response.text()}`)
    },
  })
  return await lastPulledAt({ client })
}

// One pull answer after another as a single one: a later record replaces an earlier one
// with its id, a later delete removes it; the last timestamp, the first answer's strategy.
function mergePulls(merged, page) {
  if (merged === null) return { ...page, has_more: false }
  for (const [table, { updated = [], deleted = [] }] of Object.entries(page.changes)) {
    const into = (merged.changes[table] ??= { created: [], updated: [], deleted: [] })
    const gone = new Set(deleted)
    const fresh = new Set(updated.map((r) => r.id))
    into.updated = into.updated.filter((r) => !gone.has(r.id) && !fresh.has(r.id)).concat(updated)
    into.deleted = into.deleted.filter((id) => !fresh.has(id) && !gone.has(id)).concat(deleted)
  }
  merged.timestamp = page.timestamp
  return merged
}

const collection = (client, table) => clients.get(client).database.get(table)

function assign(record, fields) {
  for (const [column, value] of Object.entries(fields)) record._setRaw(column, value)
}

async function create({ client, table, fields }) {
  const { database } = clients.get(client)
  const record = await database.write(() =>
    collection(client, table).create((r) => assign(r, fields)),
  )
  return record.id
}

async function update({ client, table, id, fields }) {
  const { database } = clients.get(client)
  const record = await collection(client, table).find(id)
  await database.write(() => record.update((r) => assign(r, fields)))
}

async function remove({ client, table, id }) {
  const { database } = clients.get(client)
  const record = await collection(client, table).find(id)
  await database.write(() => record.markAsDeleted())
}

async function dump({ client, table }) {
  const records = await collection(client, table).query().fetch()
  return records.map((r) => ({ ...r._raw })).sort((a, b) => (a.id < b.id ? -1 : 1))
}

async function putSynced({ client, table, raw }) {
  const { database } = clients.get(client)
  const record = collection(client, table).prepareCreateFromDirtyRaw({
    ...raw,
    _status: 'synced',
    _changed: '',
  })
  await database.write(() => database.batch(record))
}

async function lastPulledAt({ client }) {
  const value = await clients.get(client).database.adapter.getLocal('__watermelon_last_pulled_at')
  return value === null ? null : Number(value)
}

async function setLastPulledAt({ client, value }) {
  await clients.get(client).database.adapter.setLocal('__watermelon_last_pulled_at', `${value}`)
}

const commands = {
  open,
  sync,
  create,
  update,
  remove,
  dump,
  put_synced: putSynced,
  last_pulled_at: lastPulledAt,
  set_last_pulled_at: setLastPulledAt,
  logs: () => logged.splice(0),
}

async function main() {
  for (;;) {
    const command = JSON.parse(await nextLine())
    try {
      const result = await commands[command.cmd](command)
      send({ ok: true, result: result ?? null })
    } catch (error) {
      send({ ok: false, error: String(error && error.message ? error.message : error) })
    }
  }
}

main()
