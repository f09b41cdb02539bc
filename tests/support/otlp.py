"""A real OTLP/HTTP trace receiver for tests: an aiohttp server on a free port that decodes
each `POST /v1/traces` (protobuf, as an OpenTelemetry collector does, with the
opentelemetry-proto package) and keeps the spans.

    async with OtlpReceiver() as otlp:   # otlp.endpoint: the base URL to configure
        ...
        spans = await otlp.wait_for(lambda spans: ..., timeout=20)
"""

from __future__ import annotations

import asyncio
import gzip
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)
from opentelemetry.proto.trace.v1.trace_pb2 import Span as SpanProto

from sidecar.embedded import free_port


@dataclass(frozen=True)
class ReceivedSpan:
    name: str
    trace_id: str  # hex, as in traceparent
    span_id: str
    parent_span_id: str  # "" for a root span
    kind: int
    start_ns: int
    end_ns: int
    attributes: dict[str, Any]
    events: list[tuple[str, int]]
    service: str | None = None
    links: list[tuple[str, str]] = field(default_factory=list)


def _value(any_value: Any) -> Any:
    which = any_value.WhichOneof("value")
    return getattr(any_value, which) if which else None


def _span(proto: SpanProto, service: str | None) -> ReceivedSpan:
    return ReceivedSpan(
        name=proto.name,
        trace_id=proto.trace_id.hex(),
        span_id=proto.span_id.hex(),
        parent_span_id=proto.parent_span_id.hex(),
        kind=proto.kind,
        start_ns=proto.start_time_unix_nano,
        end_ns=proto.end_time_unix_nano,
        attributes={a.key: _value(a.value) for a in proto.attributes},
        events=[(e.name, e.time_unix_nano) for e in proto.events],
        service=service,
        links=[(link.trace_id.hex(), link.span_id.hex()) for link in proto.links],
    )


class OtlpReceiver:
    def __init__(self) -> None:
        self.port = free_port()
        self.endpoint = f"http://127.0.0.1:{self.port}"
        self.spans: list[ReceivedSpan] = []
        self.requests = 0
        self._runner: web.AppRunner | None = None

    async def _traces(self, request: web.Request) -> web.Response:
        body = await request.read()
        if request.headers.get("Content-Encoding") == "gzip":
            body = gzip.decompress(body)
        if request.content_type != "application/x-protobuf":
            return web.Response(status=415)
        export = ExportTraceServiceRequest()
        export.ParseFromString(body)
        self.requests += 1
        for resource_spans in export.resource_spans:
            attrs = {a.key: _value(a.value) for a in resource_spans.resource.attributes}
            for scope_spans in resource_spans.scope_spans:
                self.spans.extend(_span(s, attrs.get("service.name")) for s in scope_spans.spans)
        return web.Response(
            body=ExportTraceServiceResponse().SerializeToString(),
            content_type="application/x-protobuf",
        )

    async def __aenter__(self) -> OtlpReceiver:
        app = web.Application()
        app.router.add_post("/v1/traces", self._traces)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        await web.TCPSite(self._runner, "127.0.0.1", self.port).start()
        return self

    async def __aexit__(self, *_: object) -> None:
        if self._runner is not None:
            await self._runner.cleanup()

    async def wait_for(
        self, found: Callable[[list[ReceivedSpan]], bool], timeout: float = 30.0
    ) -> list[ReceivedSpan]:
        """The spans received, once `found(spans)` holds (AssertionError after `timeout`)."""
        deadline = time.monotonic() + timeout
        while not found(self.spans):
            if time.monotonic() > deadline:
                names = sorted({s.name for s in self.spans})
                raise AssertionError(f"spans not received within {timeout}s; got {names}")
            await asyncio.sleep(0.05)
        return list(self.spans)
