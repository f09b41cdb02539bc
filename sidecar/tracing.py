"""Distributed tracing (OpenTelemetry): the W3C trace context of every request, spans for
pull, push and capture, exported by OTLP/HTTP when `observability.otlp_endpoint` is set.

One `Tracing` per service (its own tracer provider: no process-wide global, so several
services in one process export apart). Without an endpoint the spans record nothing: a
request still gets a trace id (the client's, from `traceparent`, or a new one) for its log
lines and its `traceresponse` header, at the cost of two random ids.

The link from a push to capture: when a push's transaction has its id (before COMMIT), the
id is remembered with the span context of the transaction's span (`note_xid`); when capture
stores that transaction (`captured`), it records a `capture` span as a child of it, from the
commit decoded to the waiters woken. The map is bounded and in this process only: a push
served by another replica than the one whose capture stored it has no capture span.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import threading
from collections.abc import Mapping, Sequence
from typing import Final

from cachetools import TTLCache
from opentelemetry import trace
from opentelemetry.context import Context
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import SpanProcessor, TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter
from opentelemetry.sdk.trace.id_generator import RandomIdGenerator
from opentelemetry.sdk.trace.sampling import ALWAYS_OFF
from opentelemetry.trace import (
    INVALID_SPAN,
    INVALID_SPAN_CONTEXT,
    NonRecordingSpan,
    Span,
    SpanContext,
    SpanKind,
    TraceFlags,
    Tracer,
)
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

from sidecar import __version__
from sidecar.lsn import lsn_to_str

TRACES_PATH: Final = "/v1/traces"
XIDS_KEPT = 10_000  # push transactions awaiting capture, at most (the oldest are forgotten)
XID_TTL = 600.0  # seconds a push transaction waits for capture's span, at most
CLOSE_WAIT = 5.0  # seconds `close` waits for the last spans to be exported

# A captured transaction: (xid, commit end LSN, when its commit was decoded in ns since
# the epoch), as `capture/ingest.py` collects them.
Committed = tuple[int, int, int]

_PROPAGATOR = TraceContextTextMapPropagator()
_IDS = RandomIdGenerator()


def traces_url(endpoint: str) -> str:
    """The OTLP/HTTP traces URL of `observability.otlp_endpoint`: the collector's base URL
    (as OTEL_EXPORTER_OTLP_ENDPOINT) with `/v1/traces` added, unless it ends so already."""
    base = endpoint.rstrip("/")
    return base if base.endswith(TRACES_PATH) else base + TRACES_PATH


def _resource() -> Resource:
    attributes = {"service.version": __version__}
    named = os.environ.get("OTEL_SERVICE_NAME") or "service.name=" in os.environ.get(
        "OTEL_RESOURCE_ATTRIBUTES", ""
    )
    if not named:  # the operator's name wins
        attributes["service.name"] = "sidecar"
    return Resource.create(attributes)


def _unrecorded(parent: Context | None) -> Span:
    """A span that records nothing: the client's trace id (else a new one), a new span id."""
    client = INVALID_SPAN_CONTEXT
    if parent is not None:
        client = trace.get_current_span(parent).get_span_context()
    trace_id = client.trace_id if client.is_valid else _IDS.generate_trace_id()
    return NonRecordingSpan(
        SpanContext(
            trace_id,
            _IDS.generate_span_id(),
            is_remote=False,
            trace_flags=TraceFlags(TraceFlags.DEFAULT),
            trace_state=client.trace_state,
        )
    )


class Tracing:
    """A service's tracer. `endpoint`: export there by OTLP/HTTP (protobuf); `processor`:
    export through it instead (tests: an in-memory exporter); neither: record nothing."""

    def __init__(
        self, endpoint: str | None = None, *, processor: SpanProcessor | None = None
    ) -> None:
        if processor is None and endpoint is not None:
            from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

            exporter: SpanExporter = OTLPSpanExporter(endpoint=traces_url(endpoint))
            processor = BatchSpanProcessor(exporter)
        self.recording = processor is not None
        self._provider = TracerProvider(
            # the SDK's sampler (OTEL_TRACES_SAMPLER, parent-based always-on by default:
            # a client's unsampled trace stays so); not recording, the SDK is not used
            sampler=None if self.recording else ALWAYS_OFF,
            resource=_resource(),
            shutdown_on_exit=False,
        )
        if processor is not None:
            self._provider.add_span_processor(processor)
        self.tracer: Tracer = self._provider.get_tracer("sidecar", __version__)
        # xid (32 bits, as pgoutput's Begin carries it) → the push transaction's span
        self._xids: TTLCache[int, SpanContext] = TTLCache(maxsize=XIDS_KEPT, ttl=XID_TTL)

    # -- requests ------------------------------------------------------------------------

    def server_span(
        self, name: str, headers: Mapping[str, str], attributes: Mapping[str, str]
    ) -> contextlib.AbstractContextManager[Span]:
        """The span of one HTTP request, a child of the client's span when `headers` carry
        a valid `traceparent` (and `tracestate`), current while the block runs. Not
        recording: a span of ids only, the client's trace id kept (no SDK span: the
        cheapest way to the ids of the log lines and `traceresponse`)."""
        parent = _PROPAGATOR.extract(headers) if "traceparent" in headers else None
        if not self.recording:
            return contextlib.nullcontext(_unrecorded(parent))
        return self.tracer.start_as_current_span(
            name,
            context=parent,
            kind=SpanKind.SERVER,
            attributes=attributes,
            record_exception=False,  # the middleware answers every error itself
            set_status_on_exception=False,
        )

    def span(
        self, name: str, **attributes: str | int | bool
    ) -> contextlib.AbstractContextManager[Span]:
        """A child of the current span (pull's store read, push's transaction); nothing
        when not recording."""
        if not self.recording:
            return contextlib.nullcontext(INVALID_SPAN)
        return self.tracer.start_as_current_span(name, attributes=attributes)

    # -- push → capture ------------------------------------------------------------------

    def note_xid(self, xid: int) -> None:
        """The current span (a push's transaction, before COMMIT) is the parent of the
        capture span of the transaction `xid` (64 or 32 bits)."""
        if not self.recording:
            return
        context = trace.get_current_span().get_span_context()
        if context.is_valid and context.trace_flags.sampled:
            self._xids[xid & 0xFFFFFFFF] = context

    def captured(
        self, committed: Sequence[Committed], stored_ns: int, woken_ns: int, woken: int
    ) -> None:
        """Capture stored `committed` at `stored_ns` and woke `woken` live waiters by
        `woken_ns`: a `capture` span for each transaction a push is waiting for."""
        if not self._xids:
            return
        for xid, lsn, decoded_ns in committed:
            parent = self._xids.pop(xid, None)
            if parent is None:
                continue
            span = self.tracer.start_span(
                "capture",
                context=trace.set_span_in_context(NonRecordingSpan(parent), Context()),
                kind=SpanKind.CONSUMER,
                start_time=decoded_ns,
                attributes={
                    "sidecar.xid": xid,
                    "sidecar.commit_lsn": lsn_to_str(lsn),
                    "sidecar.waiters_woken": woken,
                },
            )
            span.add_event("stored", timestamp=max(decoded_ns, stored_ns))
            span.add_event("waiters woken", timestamp=max(decoded_ns, woken_ns))
            span.end(end_time=max(decoded_ns, woken_ns))

    # -- what a request shows ------------------------------------------------------------

    @staticmethod
    def log_ids(span: Span) -> dict[str, str]:
        """`trace_id` and `span_id` of `span` for log lines (nothing for an invalid one)."""
        context = span.get_span_context()
        if not context.is_valid:
            return {}
        return {
            "trace_id": trace.format_trace_id(context.trace_id),
            "span_id": trace.format_span_id(context.span_id),
        }

    @staticmethod
    def traceresponse(span: Span) -> str | None:
        """The `traceresponse` header (W3C Trace Context Level 2) of `span`: version,
        trace id, the server's span id and whether it was sampled (recorded)."""
        context = span.get_span_context()
        if not context.is_valid:
            return None
        return (
            f"00-{trace.format_trace_id(context.trace_id)}-"
            f"{trace.format_span_id(context.span_id)}-{int(context.trace_flags):02x}"
        )

    # -- end -----------------------------------------------------------------------------

    async def close(self) -> None:
        """Export what is left, waiting CLOSE_WAIT at most (a collector gone silent does
        not hold the process's exit)."""
        if not self.recording:
            return
        done = threading.Event()

        def shut() -> None:
            try:
                self._provider.shutdown()
            finally:
                done.set()

        threading.Thread(target=shut, name="sidecar-traces", daemon=True).start()
        await asyncio.to_thread(done.wait, CLOSE_WAIT)
