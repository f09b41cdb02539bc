"""sidecar/tracing.py without a database: the client's trace context, the ids a request
shows (log lines, `traceresponse`), the push → capture link, nothing recorded unless asked."""

from __future__ import annotations

import time

from opentelemetry import trace
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind

from sidecar.tracing import XIDS_KEPT, Tracing, traces_url

CLIENT_TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"
CLIENT_SPAN = "00f067aa0ba902b7"
SAMPLED = f"00-{CLIENT_TRACE}-{CLIENT_SPAN}-01"
UNSAMPLED = f"00-{CLIENT_TRACE}-{CLIENT_SPAN}-00"


def recording() -> tuple[Tracing, InMemorySpanExporter]:
    exporter = InMemorySpanExporter()
    return Tracing(processor=SimpleSpanProcessor(exporter)), exporter


def test_the_request_span_is_a_child_of_the_clients_span_and_carries_tracestate():
    tracing, exporter = recording()
    headers = {"traceparent": SAMPLED, "tracestate": "vendor=abc"}
    with tracing.server_span("POST /v1/push", headers, {"http.route": "/v1/push"}) as span:
        ids = tracing.log_ids(span)
        header = tracing.traceresponse(span)
        with tracing.span("PostgreSQL transaction"):
            pass
    server, child = sorted(exporter.get_finished_spans(), key=lambda s: s.kind != SpanKind.SERVER)
    assert server.kind == SpanKind.SERVER and server.name == "POST /v1/push"
    assert server.parent is not None and server.parent.is_remote
    assert trace.format_span_id(server.parent.span_id) == CLIENT_SPAN
    assert trace.format_trace_id(server.context.trace_id) == CLIENT_TRACE
    assert server.context.trace_state.get("vendor") == "abc"
    assert child.parent is not None and child.parent.span_id == server.context.span_id
    server_span = trace.format_span_id(server.context.span_id)
    assert ids == {"trace_id": CLIENT_TRACE, "span_id": server_span}
    assert header == f"00-{CLIENT_TRACE}-{server_span}-01"


def test_a_request_without_traceparent_starts_a_trace():
    tracing, exporter = recording()
    with tracing.server_span("GET /v1/pull", {}, {}) as span:
        ids = tracing.log_ids(span)
    (server,) = exporter.get_finished_spans()
    assert server.parent is None
    assert ids["trace_id"] == trace.format_trace_id(server.context.trace_id)


def test_a_malformed_traceparent_is_ignored():
    tracing, exporter = recording()
    with tracing.server_span("GET /v1/pull", {"traceparent": "00-zz-yy-01"}, {}) as span:
        ids = tracing.log_ids(span)
    (server,) = exporter.get_finished_spans()
    assert server.parent is None and ids["trace_id"] != CLIENT_TRACE


def test_without_an_exporter_nothing_is_recorded_but_the_clients_trace_id_is_shown():
    tracing = Tracing()
    assert not tracing.recording
    with tracing.server_span("GET /v1/pull", {"traceparent": SAMPLED}, {}) as span:
        assert not span.is_recording()
        ids = tracing.log_ids(span)
        header = tracing.traceresponse(span)
        tracing.note_xid(1234)  # nothing to link: nothing kept
    assert ids["trace_id"] == CLIENT_TRACE and ids["span_id"] != CLIENT_SPAN
    assert header is not None and header.endswith("-00")  # not sampled: not recorded
    assert not tracing._xids


def test_capture_records_a_span_for_a_pushed_transaction_as_its_child():
    tracing, exporter = recording()
    xid = (7 << 32) | 4242  # 64 bits, as pg_current_xact_id(); pgoutput carries 32
    with (
        tracing.server_span("POST /v1/push", {"traceparent": SAMPLED}, {}),
        tracing.span("PostgreSQL transaction") as txn,
    ):
        tracing.note_xid(xid)
    decoded = time.time_ns()
    tracing.captured([(999, 10, decoded), (4242, 0x16B3748, decoded)], decoded + 5, decoded + 9, 3)
    capture = [s for s in exporter.get_finished_spans() if s.name == "capture"]
    assert len(capture) == 1  # the other transaction was no traced push
    (span,) = capture
    assert span.parent is not None and span.parent.span_id == txn.get_span_context().span_id
    assert trace.format_trace_id(span.context.trace_id) == CLIENT_TRACE
    assert span.attributes is not None
    assert span.attributes["sidecar.xid"] == 4242
    assert span.attributes["sidecar.commit_lsn"] == "0/16B3748"
    assert span.attributes["sidecar.waiters_woken"] == 3
    assert span.start_time == decoded and span.end_time == decoded + 9
    assert [(e.name, e.timestamp) for e in span.events] == [
        ("stored", decoded + 5),
        ("waiters woken", decoded + 9),
    ]
    tracing.captured([(4242, 0x16B3748, decoded)], decoded, decoded, 0)  # once only
    assert len([s for s in exporter.get_finished_spans() if s.name == "capture"]) == 1


def test_an_unsampled_push_is_not_followed_into_capture():
    tracing, exporter = recording()
    with tracing.server_span("POST /v1/push", {"traceparent": UNSAMPLED}, {}):
        tracing.note_xid(5)
    tracing.captured([(5, 1, time.time_ns())], time.time_ns(), time.time_ns(), 0)
    assert exporter.get_finished_spans() == ()


def test_the_pushes_waiting_for_capture_are_bounded():
    tracing, _ = recording()
    with tracing.server_span("POST /v1/push", {"traceparent": SAMPLED}, {}):
        for xid in range(XIDS_KEPT + 50):
            tracing.note_xid(xid)
    assert len(tracing._xids) == XIDS_KEPT


def test_the_endpoint_is_the_collectors_base_url():
    assert traces_url("http://collector:4318") == "http://collector:4318/v1/traces"
    assert traces_url("http://collector:4318/") == "http://collector:4318/v1/traces"
    assert traces_url("https://x.example/otlp/v1/traces") == "https://x.example/otlp/v1/traces"
