// A headless @electric-sql/client driven by the Python test over stdin/stdout, one JSON
// object per line each way.
//
// Commands (stdin):
//   {"cmd": "shape", "id": "a", "url": "...", "token": "...", "params": {...}, "liveSse": false}
//       a ShapeStream + Shape; reports "rows" whenever the Shape notifies (up to date, or a
//       change while up to date), "messages" for every batch the stream publishes, and
//       "error" (with the HTTP status) when the stream stops on an error.
//   {"cmd": "push", "id": "p", "url": "...", "token": "...", "mutations": [...]}
//       POST /v1/push with fetch (Electric has no write path of its own); reports "pushed".
//   {"cmd": "exit"}
import { createInterface } from 'node:readline'
import { Shape, ShapeStream } from '@electric-sql/client'

const send = (event) =>
  process.stdout.write(
    JSON.stringify(event, (_, v) => (typeof v === 'bigint' ? v.toString() : v)) + '\n'
  )

const streams = new Map()

function openShape({ id, url, token, params, liveSse = false }) {
  const aborter = new AbortController()
  const stream = new ShapeStream({
    url,
    params,
    liveSse,
    signal: aborter.signal,
    headers: { Authorization: `Bearer ${token}` },
    backoffOptions: { initialDelay: 50, maxDelay: 400, multiplier: 1.5 },
    onError: (error) => {
      send({ event: 'error', id, status: error.status ?? null, message: String(error.message) })
      // returning nothing stops the stream, as an application would on a 4xx
    },
  })
  stream.subscribe((messages) => {
    send({
      event: 'messages',
      id,
      handle: stream.shapeHandle,
      offset: stream.lastOffset,
      controls: messages.filter((m) => m.headers.control).map((m) => m.headers.control),
      operations: messages
        .filter((m) => m.headers.operation)
        .map((m) => [m.headers.operation, m.key]),
      // what an app's awaitTxId matches its optimistic writes against
      txids: messages.flatMap((m) => m.headers.txids ?? []),
    })
  })
  const shape = new Shape(stream)
  const report = () =>
    send({
      event: 'rows',
      id,
      upToDate: shape.isUpToDate,
      handle: stream.shapeHandle,
      rows: shape.currentRows,
    })
  shape.subscribe(report)
  streams.set(id, aborter)
}

async function push({ id, url, token, mutations }) {
  const response = await fetch(url, {
    method: 'POST',
    headers: { Authorization: `Bearer ${token}`, 'Content-Type': 'application/json' },
    body: JSON.stringify({ mutations }),
  })
  send({ event: 'pushed', id, status: response.status, body: await response.json() })
}

const lines = createInterface({ input: process.stdin })
lines.on('line', async (line) => {
  const command = JSON.parse(line)
  try {
    if (command.cmd === 'shape') openShape(command)
    else if (command.cmd === 'push') await push(command)
    else if (command.cmd === 'exit') process.exit(0)
  } catch (error) {
    send({ event: 'failed', id: command.id, message: String(error?.stack ?? error) })
  }
})
lines.on('close', () => {
  for (const aborter of streams.values()) aborter.abort()
  process.exit(0)
})
send({ event: 'ready' })
