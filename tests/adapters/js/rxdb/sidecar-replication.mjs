/**
 * RxDB replication against a sidecar's /rxdb endpoints: the client of docs/adapters/rxdb.md.
 *
 * Pull: the pull handler pages from the checkpoint; once it has caught up (a short batch) it
 * opens the pull stream from that checkpoint, so the stream goes on exactly where the pull
 * stopped. Push: the rows go as they are; the answer is the master documents in conflict.
 * The token goes in the Authorization header (the `eventsource` package accepts a custom
 * fetch for that; a browser's own EventSource cannot send headers).
 */
import { EventSource } from 'eventsource';
import { replicateRxCollection } from 'rxdb/plugins/replication';
import { Subject } from 'rxjs';

export function replicateSidecar({
  collection, // the RxCollection; its name is the sidecar collection's name
  url, // the sidecar's base URL, e.g. 'https://sync.example.com'
  getToken, // () => the current JWT (or a promise of it)
  batchSize = 100,
  fetch = globalThis.fetch,
  ...options // any other replicateRxCollection option (replicationIdentifier, retryTime, ...)
}) {
  const base = `${url.replace(/\/$/, '')}/rxdb/${collection.name}`;
  const authFetch = async (input, init = {}) =>
    fetch(input, {
      ...init,
      headers: { ...init.headers, Authorization: `Bearer ${await getToken()}` },
    });

  async function call(input, init) {
    const response = await authFetch(input, init);
    if (!response.ok) {
      const problem = await response.json().catch(() => ({}));
      const error = new Error(`${response.status} ${problem.code}: ${problem.detail}`);
      // `code` survives into replicationState.error$ (e.g. 'cursor_expired': start afresh)
      throw Object.assign(error, { code: problem.code, status: response.status, problem });
    }
    return response.json();
  }

  const withCheckpoint = (path, checkpoint) => {
    const target = new URL(`${base}/${path}`);
    if (checkpoint) {
      target.searchParams.set('id', checkpoint.id);
      target.searchParams.set('lwt', String(checkpoint.lwt));
    }
    return target;
  };

  const stream$ = new Subject();
  let source = null;
  function openStream(checkpoint) {
    if (source) return;
    source = new EventSource(withCheckpoint('pullStream', checkpoint), { fetch: authFetch });
    // {documents, checkpoint}, or "RESYNC": pull from the last checkpoint
    source.onmessage = (event) => stream$.next(JSON.parse(event.data));
    source.onerror = () => {
      if (source.readyState === EventSource.CLOSED) source = null; // reopened after a pull
      stream$.next('RESYNC'); // events may have been missed while disconnected
    };
  }

  const replicationState = replicateRxCollection({
    collection,
    replicationIdentifier: `sidecar-${collection.name}-${url}`,
    live: true,
    ...options,
    pull: {
      batchSize,
      stream$: stream$.asObservable(),
      async handler(checkpoint, limit) {
        const target = withCheckpoint('pull', checkpoint);
        target.searchParams.set('limit', String(limit));
        const page = await call(target);
        if (page.documents.length < limit) openStream(page.checkpoint); // caught up: go live
        return page;
      },
    },
    push: {
      batchSize,
      handler: (rows) =>
        call(`${base}/push`, {
          method: 'POST',
          headers: { 'Content-Type': 'application/json' },
          body: JSON.stringify(rows),
        }),
    },
  });
  replicationState.onCancel.push(() => source?.close());
  replicationState.stream$ = stream$; // (for observers: the tests count stream events)
  return replicationState;
}
