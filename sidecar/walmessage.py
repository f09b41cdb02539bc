"""The ``sidecar`` WAL message: what push writes beside its row changes, what capture reads.

Push emits one per applied mutation, in the same transaction as the mutation's writes
(``pg_logical_emit_message(true, 'sidecar', …)``, see ``write_sql.emit_messages``);
capture decodes it (``capture/ingest.py``) into the store's record of the mutation: the
idempotency record (a replayed id is a ``duplicate``), the audit trail and the echo tag.
A mutation id is unique per subject only: ``sub`` travels with ``id`` and the store
records the pair.

The content is a JSON object, exactly as every sidecar version has written it::

    {"id": …, "sub": …, "dev": …,
     "outcome": {"status": "applied", "rev": …, "collection": …, "op": …, "key": …,
                 "client_time": …}}

WAL and stores already hold such messages, so :meth:`MutationMessage.encode` keeps these
bytes and :meth:`MutationMessage.decode` keeps accepting them. This module imports
nothing of the sidecar.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Final

import orjson

__all__ = ["PREFIX", "MalformedMessage", "MutationMessage"]

PREFIX: Final = "sidecar"
"""The logical message prefix of the sidecar's messages (others are not ours)."""


class MalformedMessage(ValueError):
    """A ``sidecar`` message whose content is not a mutation record."""


@dataclass(frozen=True, slots=True)
class MutationMessage:
    """One applied mutation as its WAL message carries it.

    ``key`` is the row's client key as JSON values; ``rev`` the row's revision after the
    write (None for a delete); ``client_time`` the client's own time of the change.
    """

    mutation_id: str
    subject: str | None
    device: str | None
    collection: str | None
    op: str | None
    key: Mapping[str, Any] | None
    rev: str | None
    client_time: str | None
    status: str | None = "applied"

    def outcome(self) -> dict[str, Any]:
        """The outcome object of the message (its keys in the order they are written)."""
        return {
            "status": self.status,
            "rev": self.rev,
            "collection": self.collection,
            "op": self.op,
            "key": self.key,
            "client_time": self.client_time,
        }

    def encode(self) -> bytes:
        """The message's content (JSON) as push emits it."""
        return orjson.dumps(
            {
                "id": self.mutation_id,
                "sub": self.subject,
                "dev": self.device,
                "outcome": self.outcome(),
            }
        )

    def outcome_json(self, xid: int) -> bytes:
        """The outcome as the store records it: with the id of the transaction that wrote
        it (clients match their writes by it)."""
        return orjson.dumps({**self.outcome(), "xid": xid})

    @staticmethod
    def record_of(
        content: bytes | bytearray | memoryview, xid: int
    ) -> tuple[str, str | None, str | None, bytes]:
        """What the store records of a message (capture's per-mutation path): its id,
        subject, device and `outcome_json(xid)` — the same as `decode(content)` gives,
        without building the message. Raises :class:`MalformedMessage` as `decode` does."""
        try:
            body = orjson.loads(content)
            mutation_id = str(body["id"])
            o = body.get("outcome", {})
            if not isinstance(o, dict):
                raise TypeError("outcome is not an object")
            outcome = {
                "status": o.get("status"),
                "rev": o.get("rev"),
                "collection": o.get("collection"),
                "op": o.get("op"),
                "key": o.get("key"),
                "client_time": o.get("client_time"),
                "xid": xid,
            }
            return mutation_id, body.get("sub"), body.get("dev"), orjson.dumps(outcome)
        except (orjson.JSONDecodeError, KeyError, TypeError) as exc:
            raise MalformedMessage(f"not a sidecar mutation record: {exc}") from None

    @classmethod
    def decode(cls, content: bytes | bytearray | memoryview) -> MutationMessage:
        """Read a message's content; raise :class:`MalformedMessage` if it is not one of ours.

        Only ``id`` is required (a body that is no JSON object fails there); a missing
        subject, device or outcome field reads as None.
        """
        try:
            body = orjson.loads(content)
            mutation_id = str(body["id"])
            outcome = body.get("outcome", {})
            if not isinstance(outcome, dict):
                raise TypeError("outcome is not an object")
            return cls(
                mutation_id=mutation_id,
                subject=body.get("sub"),
                device=body.get("dev"),
                collection=outcome.get("collection"),
                op=outcome.get("op"),
                key=outcome.get("key"),
                rev=outcome.get("rev"),
                client_time=outcome.get("client_time"),
                status=outcome.get("status"),
            )
        except (orjson.JSONDecodeError, KeyError, TypeError) as exc:
            raise MalformedMessage(f"not a sidecar mutation record: {exc}") from None
