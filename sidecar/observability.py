"""Logging (structlog: JSON, or console on a TTY) and Prometheus metrics."""

from __future__ import annotations

import logging
import sys
from collections.abc import Callable, Iterator, Mapping
from typing import Any, TextIO

import orjson
import structlog
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector


def configure_logging(level: str = "info", fmt: str = "auto", stream: TextIO | None = None) -> None:
    """Set up structlog once for the process; `fmt` is auto | json | console."""
    stream = stream or sys.stderr
    console = fmt == "console" or (fmt == "auto" and stream.isatty())
    renderer: structlog.types.Processor = (
        structlog.dev.ConsoleRenderer()
        if console
        else structlog.processors.JSONRenderer(serializer=_json_line)
    )
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.processors.format_exc_info,
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(
            logging.getLevelNamesMapping()[level.upper()]
        ),
        logger_factory=structlog.PrintLoggerFactory(stream),
        cache_logger_on_first_use=False,
    )


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
