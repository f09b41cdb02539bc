"""Unit tests of the `sidecar` WAL message: the bytes push writes, what capture reads."""

from __future__ import annotations

import pytest

from sidecar.walmessage import PREFIX, MalformedMessage, MutationMessage

# What push has emitted since the write path exists (stores and WAL hold such bytes).
TODAY = (
    b'{"id":"m-1","sub":"user-7","dev":"phone","outcome":{"status":"applied",'
    b'"rev":"9f86d081884c7d65","collection":"todos","op":"update","key":{"id":42},'
    b'"client_time":"2024-05-01T12:00:00Z"}}'
)

MESSAGE = MutationMessage(
    mutation_id="m-1",
    subject="user-7",
    device="phone",
    collection="todos",
    op="update",
    key={"id": 42},
    rev="9f86d081884c7d65",
    client_time="2024-05-01T12:00:00Z",
)


def test_prefix() -> None:
    assert PREFIX == "sidecar"


def test_encode_is_byte_identical_to_what_push_writes() -> None:
    assert MESSAGE.encode() == TODAY


def test_round_trip() -> None:
    assert MutationMessage.decode(TODAY) == MESSAGE
    assert MutationMessage.decode(memoryview(TODAY)) == MESSAGE
    assert MutationMessage.decode(MESSAGE.encode()).encode() == TODAY


def test_delete_without_rev_device_or_client_time() -> None:
    m = MutationMessage("d-1", "u", None, "todos", "delete", {"id": "x"}, None, None)
    raw = m.encode()
    assert raw == (
        b'{"id":"d-1","sub":"u","dev":null,"outcome":{"status":"applied","rev":null,'
        b'"collection":"todos","op":"delete","key":{"id":"x"},"client_time":null}}'
    )
    assert MutationMessage.decode(raw) == m


def test_outcome_as_the_store_records_it() -> None:
    assert MutationMessage.decode(TODAY).outcome_json(731) == (
        b'{"status":"applied","rev":"9f86d081884c7d65","collection":"todos","op":"update",'
        b'"key":{"id":42},"client_time":"2024-05-01T12:00:00Z","xid":731}'
    )


def test_only_the_id_is_required() -> None:
    # what the integration tests emit by hand for a sidecar killed after COMMIT
    m = MutationMessage.decode(
        b'{"id":"lost-1","sub":"1","dev":null,"outcome":{"status":"applied","rev":"abc"}}'
    )
    assert (m.mutation_id, m.subject, m.device, m.status, m.rev) == (
        "lost-1",
        "1",
        None,
        "applied",
        "abc",
    )
    assert m.collection is None and m.key is None
    bare = MutationMessage.decode(b'{"id": 17}')
    assert bare.mutation_id == "17"  # ids are text
    assert (bare.subject, bare.device, bare.status) == (None, None, None)


@pytest.mark.parametrize(
    "content",
    [b"hello", b"", b"{}", b'{"sub":"u"}', b"[1, 2]", b'"id"', b"42", b'{"id":"x","outcome":[1]}',
     b'{"id":"x","outcome":null}', b"{\"id\":\"x\"", b"\xff"],
)  # fmt: skip
def test_malformed_content_is_refused(content: bytes) -> None:
    with pytest.raises(MalformedMessage):
        MutationMessage.decode(content)
    with pytest.raises(MalformedMessage):
        MutationMessage.record_of(content, 5)
    assert issubclass(MalformedMessage, ValueError)


@pytest.mark.parametrize(
    "content",
    [TODAY, b'{"id": 17}', b'{"id":"d","sub":"u","outcome":{"op":"delete","key":{"a":[1,2]}}}',
     b'{"id":"x","sub":"u","dev":"p","outcome":{"status":"applied","extra":1,"rev":"r"}}'],
)  # fmt: skip
def test_capture_records_what_decode_would_give(content: bytes) -> None:
    """Capture's path (`record_of`, no message built) records the same bytes."""
    m = MutationMessage.decode(content)
    expected = (m.mutation_id, m.subject, m.device, m.outcome_json(77))
    assert MutationMessage.record_of(content, 77) == expected
    assert MutationMessage.record_of(memoryview(content), 77) == expected
