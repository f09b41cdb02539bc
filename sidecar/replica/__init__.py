"""Several replicas over one shared PostgreSQL store (`store.url`).

Every replica serves pull, stream, push, audit and the adapters from the shared store;
exactly one — the leader — captures:

- `leader.py`: `ReplicaCapture`, the capture runner of a replica: it follows (refreshes
  its view of the store, tries the leadership every second or so) until its store writer
  leads, then captures until it loses the leadership (fenced), and follows again.
- `listen.py`: `listen`, LISTEN on the store's channel: the leader's commits refresh the
  other replicas' state and wake their live pulls and streams.
- `registry.py`: `heartbeat`, each replica's row in the store's `replicas` table (what
  `sidecar status` lists) and its metrics.

With the SQLite store there is one process and none of this runs.
"""
