/**
 * Drives RxDB clients for tests/adapters/test_rxdb.py: one JSON command per stdin line, one
 * JSON answer per stdout line ({"ok": true, "result": ...} or {"ok": false, "error": "..."}).
 *
 * Commands: open {name, url, token} (a database with a `notes` collection replicated with
 * the sidecar, resolved once the initial sync is done), docs, wait {id, fields} (fields null:
 * until the document is gone), insert {doc}, patch {id, patch}, remove {id}, insync,
 * hold / release (pushes wait at the gate), report (conflicts, stream events, pulls, errors),
 * close.
 */
import { createInterface } from 'node:readline';
import { createRxDatabase, deepEqual } from 'rxdb';
import { getRxStorageMemory } from 'rxdb/plugins/storage-memory';
import { replicateSidecar } from './sidecar-replication.mjs';

const schema = {
  version: 0,
  primaryKey: 'id',
  type: 'object',
  properties: {
    id: { type: 'string', maxLength: 100 },
    title: { type: 'string' },
    done: { type: 'boolean' },
    owner_id: { type: 'integer' },
  },
  required: ['id', 'title'],
};

const strip = ({ _meta, _rev, _attachments, ...rest }) => rest;

/** Keeps the server's row and the client's title; a row gone on the server stays gone. */
function conflictHandlerFor(client) {
  return {
    isEqual: (a, b) => deepEqual(strip(a), strip(b)),
    resolve(input) {
      client.conflicts.push(input);
      if (input.realMasterState._deleted) return input.realMasterState;
      return { ...input.realMasterState, title: input.newDocumentState.title };
    },
  };
}

const clients = new Map();

function gatedFetch(client) {
  return async (input, init) => {
    const path = new URL(String(input)).pathname;
    if (path.endsWith('/push')) await client.gate;
    if (path.endsWith('/pull')) client.pulls += 1;
    return fetch(input, init);
  };
}

async function open({ name, url, token }) {
  const client = { conflicts: [], events: [], errors: [], pulls: 0, gate: Promise.resolve() };
  client.db = await createRxDatabase({
    name,
    storage: getRxStorageMemory(),
    multiInstance: false,
  });
  await client.db.addCollections({
    notes: { schema, conflictHandler: conflictHandlerFor(client) },
  });
  client.collection = client.db.notes;
  client.replication = replicateSidecar({
    collection: client.collection,
    url,
    getToken: () => token,
    batchSize: 2, // small pages: the initial sync takes several pulls
    fetch: gatedFetch(client),
    retryTime: 200,
    waitForLeadership: false,
  });
  client.replication.stream$.subscribe((event) => client.events.push(event));
  client.replication.error$.subscribe((error) => client.errors.push(String(error)));
  clients.set(name, client);
  await client.replication.awaitInitialReplication();
  return docs(client);
}

async function docs(client) {
  const found = await client.collection.find({ sort: [{ id: 'asc' }] }).exec();
  return found.map((d) => d.toJSON());
}

function matches(doc, fields) {
  if (fields === null) return doc === null;
  return doc !== null && Object.entries(fields).every(([k, v]) => deepEqual(doc[k], v));
}

async function wait(client, { id, fields, timeout = 10000 }) {
  const query = client.collection.findOne(id);
  return new Promise((resolve, reject) => {
    const timer = setTimeout(() => {
      sub.unsubscribe();
      reject(new Error(`timed out waiting for ${id} to match ${JSON.stringify(fields)}`));
    }, timeout);
    const sub = query.$.subscribe((doc) => {
      const data = doc ? doc.toJSON() : null;
      if (matches(data, fields)) {
        clearTimeout(timer);
        queueMicrotask(() => sub.unsubscribe());
        resolve(data);
      }
    });
  });
}

function hold(client) {
  client.gate = new Promise((resolve) => {
    client.release = resolve;
  });
}

const commands = {
  open,
  docs: (client) => docs(client),
  wait,
  insert: async (client, { doc }) => (await client.collection.insert(doc)).toJSON(),
  patch: async (client, { id, patch }) =>
    (await (await client.collection.findOne(id).exec()).incrementalPatch(patch)).toJSON(),
  remove: async (client, { id }) => {
    await (await client.collection.findOne(id).exec()).remove();
    return null;
  },
  insync: async (client) => client.replication.awaitInSync(),
  hold: async (client) => hold(client),
  release: async (client) => client.release(),
  report: async (client) => ({
    conflicts: client.conflicts,
    events: client.events,
    errors: client.errors,
    pulls: client.pulls,
  }),
};

async function run(line) {
  const { cmd, name, ...args } = JSON.parse(line);
  if (cmd === 'close') {
    for (const client of clients.values()) await client.db.close();
    return null;
  }
  if (cmd === 'open') return open({ name, ...args });
  return commands[cmd](clients.get(name), args);
}

const lines = createInterface({ input: process.stdin });
for await (const line of lines) {
  let answer;
  try {
    answer = { ok: true, result: (await run(line)) ?? null };
  } catch (error) {
    answer = { ok: false, error: String(error?.stack ?? error) };
  }
  process.stdout.write(`${JSON.stringify(answer)}\n`);
  if (JSON.parse(line).cmd === 'close') break;
}
process.exit(0);
