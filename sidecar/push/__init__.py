"""Push: client mutations applied to the application's own tables, checked by the rules
(no HTTP here; `Service.push` is the one caller).

- `pusher.py`: the transaction — `Pusher`, `PushResult`: locks, duplicate ids, pipelined
  writes, savepoints, retries, WAL messages, logging;
- `plan.py`: the decisions that need no database — each mutation against its locked row,
  and a write's verdict from its RETURNING row;
- `conflicts.py`: the conflict strategies, one function each, by name.
"""

from sidecar.push.idempotency import CAPTURE_WAIT, CaptureProgress
from sidecar.push.pusher import Pusher, PushResult

__all__ = ["CAPTURE_WAIT", "CaptureProgress", "PushResult", "Pusher"]
