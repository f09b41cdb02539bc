"""Logging (structlog: JSON, or console on a TTY) and Prometheus metrics."""

from __future__ import annotations

import logging
import re
import sys
from collections.abc import Callable, Iterable, Iterator, Mapping, MutableMapping
from typing import Any, TextIO

import orjson
import structlog
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector


def configure_logging(
    level: str = "info",
    fmt: str = "auto",
    stream: TextIO | None = None,
    secrets: Iterable[str] = (),
) -> None:
    """Set up logging once for the process; `fmt` is auto | json | console.

    structlog's lines and the standard library's (aiohttp, asyncio, psycopg, warnings)
    go through the same processors to the same stream: one JSON object a line when not on
    a terminal, tracebacks included. Every line is redacted first (`Redactor`): bearer
    tokens, JWTs, DSN passwords and the `secrets` given (the JWT secret, the database
    password) never reach the output."""
    stream = stream or sys.stderr
    console = fmt == "console" or (fmt == "auto" and stream.isatty())
    renderer: structlog.types.Processor = (
        structlog.dev.ConsoleRenderer()
        if console
        else structlog.processors.JSONRenderer(serializer=_json_line)
    )
    redact = Redactor(secrets)
    shared: list[structlog.types.Processor] = [
        structlog.contextvars.merge_contextvars,
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
    ]
    structlog.configure(
        processors=[*shared, structlog.processors.format_exc_info, redact, renderer],
        wrapper_class=structlog.make_filtering_bound_logger(
            logging.getLevelNamesMapping()[level.upper()]
        ),
        logger_factory=structlog.PrintLoggerFactory(stream),
        cache_logger_on_first_use=False,
    )
    handler = logging.StreamHandler(stream)
    handler.setFormatter(
        structlog.stdlib.ProcessorFormatter(
            foreign_pre_chain=[*shared, structlog.stdlib.add_logger_name],
            processors=[
                structlog.stdlib.ProcessorFormatter.remove_processors_meta,
                structlog.processors.format_exc_info,
                redact,
                renderer,
            ],
        )
    )
    root = logging.getLogger()
    for old in root.handlers[:]:
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(logging.getLevelNamesMapping()[level.upper()])
    logging.captureWarnings(True)


# What a log line must never show. Bearer tokens and JWTs (three base64url parts, the first
# a JSON header: "eyJ"), passwords in libpq URLs and key=value DSNs, and named secrets.
_REDACTIONS = (
    (re.compile(r"(?i)(bearer\s+)[^\s'\",;]+"), r"\1[redacted]"),
    (re.compile(r"eyJ[A-Za-z0-9_-]*\.[A-Za-z0-9_-]+\.[A-Za-z0-9_-]*"), "[redacted-jwt]"),
    (re.compile(r"(?i)(postgres(?:ql)?://[^:/@\s'\"]*:)[^@\s'\"]*@"), r"\1[redacted]@"),
    (re.compile(r"(?i)(password\s*=\s*)('(?:[^'\\]|\\.)*'|[^\s'\",;&]+)"), r"\1[redacted]"),
    (
        re.compile(r"(?i)((?:authorization|cookie|x-api-key)['\"]?\s*[:=,]\s*['\"]?)[^'\"\r\n]+"),
        r"\1[redacted]",
    ),
)
REDACTED = "[redacted]"
# Every pattern above needs one of these words (case aside): text without any is left as
# it is after one search instead of a substitution per pattern (a log line has a dozen
# strings; the push path writes a line per mutation).
_PLAIN = frozenset({int, float, bool, type(None)})  # nothing to redact in these
_TRIGGERS = re.compile(r"(?i)bearer|eyJ|postgres|password|authorization|cookie|x-api-key")


class Redactor:
    """A structlog processor: every string in the event (keys' values, nested lists and
    mappings, the rendered traceback) without tokens, passwords or the given secrets."""

    def __init__(self, secrets: Iterable[str] = ()) -> None:
        self.secrets = sorted({s for s in secrets if s and len(s) >= 4}, key=len, reverse=True)

    def __call__(self, _logger: Any, _name: str, event: MutableMapping[str, Any]) -> Any:
        for key, value in event.items():  # values replaced, no key added: allowed
            if value is not None and type(value) not in _PLAIN:
                event[key] = self.clean(value)
        return event

    def clean(self, value: Any, depth: int = 0) -> Any:
        if type(value) in _PLAIN:
            return value
        if isinstance(value, str):
            return self.text(value)
        if isinstance(value, bytes):
            return self.text(value.decode("utf-8", "replace"))
        if depth > 8 or value is None or isinstance(value, (bool, int, float)):
            return value
        if isinstance(value, Mapping):
            return {k: self.clean(v, depth + 1) for k, v in value.items()}
        if isinstance(value, (list, tuple, set, frozenset)):
            return [self.clean(v, depth + 1) for v in value]
        return self.text(str(value))  # rendered anyway (orjson default=str): redact it

    def text(self, text: str) -> str:
        for secret in self.secrets:
            if secret in text:
                text = text.replace(secret, REDACTED)
        if _TRIGGERS.search(text) is None:
            return text
        for pattern, replacement in _REDACTIONS:
            text = pattern.sub(replacement, text)
        return text


def _json_line(event: Any, **_: Any) -> str:
    """One log line as JSON (orjson: several times faster than the json module)."""
    return orjson.dumps(event, default=str).decode()


class Metrics:
    """The process's Prometheus metrics, in a registry of their own (one per service)."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter(
            "sidecar_http_requests", "HTTP requests", ["endpoint", "status"], registry=r
        )
        self.latency = Histogram(
            "sidecar_http_request_seconds",
            "HTTP request latency",
            ["endpoint", "status"],
            registry=r,
            buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 10, 30, 60),
        )
        self.response_bytes = Counter(
            "sidecar_http_response_bytes", "Response payload bytes", ["endpoint"], registry=r
        )
        self.rows_applied = Gauge(
            "sidecar_capture_rows_applied", "Row changes applied to the store", registry=r
        )
        self.commits_applied = Gauge(
            "sidecar_capture_commits_applied", "Transactions applied to the store", registry=r
        )
        self.values_as_text = Gauge(
            "sidecar_capture_values_as_text",
            "Values kept as PostgreSQL's text because they could not be loaded or encoded",
            ["collection"],
            registry=r,
        )
        self.flushed_lsn = Gauge(
            "sidecar_capture_flushed_lsn", "LSN acknowledged to PostgreSQL", registry=r
        )
        self.lag_bytes = Gauge(
            "sidecar_capture_lag_bytes",
            "Bytes between the server's last reported position and the store",
            registry=r,
        )
        self.lag_seconds = Gauge(
            "sidecar_capture_lag_seconds",
            "How long the store has been behind the server's reported position (0: caught up)",
            registry=r,
        )
        self.retained_wal = Gauge(
            "sidecar_slot_retained_wal_bytes",
            "WAL the slot keeps on the database server (current LSN minus restart_lsn)",
            registry=r,
        )
        self.push_outcomes = Counter(
            "sidecar_push_mutations",
            "Pushed mutations by collection, conflict strategy and outcome",
            ["collection", "strategy", "status"],
            registry=r,
        )
        self.store_rows = Gauge("sidecar_store_rows", "Rows in the store", registry=r)
        self.store_bytes = Gauge("sidecar_store_bytes", "Store file size", registry=r)
        self.live_waiters = Gauge(
            "sidecar_live_waiters", "Live pulls and streams waiting for a change", registry=r
        )
        self.live_requests = Gauge(
            "sidecar_live_requests", "Live pulls and streams open (limits.live_*)", registry=r
        )
        self.page_cache_hits = Counter(
            "sidecar_page_cache_hits",
            "Pull pages served from the page cache or a read already under way",
            registry=r,
        )
        self.page_cache_misses = Counter(
            "sidecar_page_cache_misses", "Pull pages read from the store", registry=r
        )
        self.leader = Gauge(
            "sidecar_leader",
            "1 while this replica leads the shared store (captures), 0 while it follows",
            registry=r,
        )
        self.replica_info = Gauge(
            "sidecar_replica_info",
            "This replica's id in the store's replicas table (always 1)",
            ["replica"],
            registry=r,
        )


STORE_TROUBLE_KINDS = ("locked", "disk_full", "io")


class StoreWeather(Collector):
    """`sidecar_capture_store_errors_total{kind}` and `sidecar_capture_paused{reason}`, read
    at scrape time from `read()`: (failed store writes by kind, the kind of trouble capture
    is paused by or None). The counts belong to the running capture runner: a new runner
    (after a table changed shape) starts them again, which Prometheus reads as a reset."""

    def __init__(self, read: Callable[[], tuple[Mapping[str, int], str | None]]) -> None:
        self._read = read

    def collect(self) -> Iterator[CounterMetricFamily | GaugeMetricFamily]:
        errors, paused = self._read()
        counter = CounterMetricFamily(
            "sidecar_capture_store_errors",
            "Store writes of capture that failed for a reason that may pass, by kind",
            labels=["kind"],
        )
        for kind in sorted({*STORE_TROUBLE_KINDS, *errors}):
            counter.add_metric([kind], errors.get(kind, 0))
        yield counter
        gauge = GaugeMetricFamily(
            "sidecar_capture_paused",
            "1 while capture waits for the store to take writes again (reason: the kind)",
            labels=["reason"],
        )
        for kind in sorted({*STORE_TROUBLE_KINDS, *errors}):
            gauge.add_metric([kind], 1 if paused == kind else 0)
        yield gauge
