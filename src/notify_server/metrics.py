"""Prometheus metrics: per-process request and delivery counters, and gauges read from the
database by a background thread (a scrape reads only the cached values: it never waits on the
database, nor runs SQL on the event loop).

With PROMETHEUS_MULTIPROC_DIR set (`serve --workers N` sets it), every process writes its
counters to files there and any process answers a scrape with the sum over all of them."""

import hmac
import logging
import os
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Histogram
from prometheus_client import generate_latest as _generate_latest
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.multiprocess import MultiProcessCollector
from prometheus_client.registry import Collector
from sqlalchemy import Connection, Engine, func, select, text

from notify_server.bindings.repository import bindings
from notify_server.config import Settings
from notify_server.errors import TwilioError
from notify_server.notifications.models import FRESH, LEASED, RETRY
from notify_server.notifications.repository import PENDING, SENDING, deliveries
from notify_server.services.repository import services

__all__ = ["CONTENT_TYPE_LATEST", "Metrics", "MetricsUnauthorized", "check_bearer"]

log = logging.getLogger("notify_server.metrics")

_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)
MULTIPROCESS_DIR = "PROMETHEUS_MULTIPROC_DIR"


class MetricsUnauthorized(TwilioError):
    """/metrics without the configured bearer token."""

    status, code = 401, 20003

    def __init__(self) -> None:
        super().__init__("Authenticate")

    def body(self) -> dict:
        return {**super().body(), "detail": "A valid Bearer token is required for /metrics."}

    def headers(self) -> dict[str, str]:
        return {"WWW-Authenticate": "Bearer"}


def check_bearer(authorization: str | None, token: str) -> None:
    """Raises MetricsUnauthorized unless `authorization` is `Bearer <token>`."""
    scheme, _, presented = (authorization or "").partition(" ")
    # compare_digest: the time taken says nothing about how much of the token matched.
    if scheme.lower() != "bearer" or not hmac.compare_digest(
        presented.strip().encode(), token.encode()
    ):
        raise MetricsUnauthorized()


class Metrics:
    def __init__(self, engine: Engine, settings: Settings) -> None:
        self.registry = CollectorRegistry()
        self.token = settings.metrics_token or None
        multiprocess_dir = os.environ.get(MULTIPROCESS_DIR)
        self.shared_across_processes = bool(multiprocess_dir)
        if multiprocess_dir:
            # The counters live in files; the collector sums every process's (these objects
            # must then stay out of the registry, or this process would be counted twice).
            MultiProcessCollector(self.registry, path=multiprocess_dir)
        own = None if multiprocess_dir else self.registry
        self._requests = Counter(
            "notify_requests_total",
            "HTTP requests by operation, method and status",
            ("operation", "method", "status"),
            registry=own,
        )
        self._latency = Histogram(
            "notify_request_duration_seconds",
            "HTTP request latency by operation, method and status",
            ("operation", "method", "status"),
            buckets=_BUCKETS,
            registry=own,
        )
        self._deliveries = Counter(
            "notify_deliveries_total",
            "Delivery attempts by channel and outcome",
            ("channel", "outcome"),
            registry=own,
        )
        self.database = DatabaseGauges(
            engine,
            per_service=settings.metrics_per_service,
            interval=settings.metrics_refresh_seconds,
            statement_timeout=settings.metrics_statement_timeout_seconds,
        )
        self.registry.register(self.database)
        # Label children looked up once: .labels() is the costly part of an observation.
        self._children: dict[tuple[str, str, int], tuple[Counter, Histogram]] = {}

    def observe_request(self, operation: str, method: str, status: int, seconds: float) -> None:
        key = (operation, method, status)
        children = self._children.get(key)
        if children is None:
            children = (
                self._requests.labels(operation, method, str(status)),
                self._latency.labels(operation, method, str(status)),
            )
            self._children[key] = children
        children[0].inc()
        children[1].observe(seconds)

    def count_delivery(self, channel: str, outcome: str) -> None:
        self._deliveries.labels(channel, outcome).inc()

    def render(self) -> bytes:
        """The Prometheus text of everything: in-memory reads only."""
        return _generate_latest(self.registry)


@dataclass(frozen=True)
class _Snapshot:
    bindings: int
    # (service_sid, bindings) of every service; read only when labels per service are wanted.
    per_service: list[tuple[str, int]]
    outbox: dict[str, int]
    read_at: float


_COUNT_BINDINGS = select(func.count()).select_from(bindings)
_COUNT_PER_SERVICE = (
    select(services.c.sid, func.count(bindings.c.id))
    .select_from(services.outerjoin(bindings, bindings.c.service_id == services.c.id))
    .group_by(services.c.sid)
)
# One count per partial index of the outbox (notifications/models.py): each reads only its
# own rows, where a count by status would read the whole table.
_COUNT_OUTBOX = {
    part: select(func.count()).select_from(deliveries).where(where)
    for part, where in (("fresh", FRESH), ("retry", RETRY), ("leased", LEASED))
}


def _read(conn: Connection, per_service: bool) -> _Snapshot:
    counted: list[tuple[str, int]] = []
    if per_service:
        counted = [(sid, int(count)) for sid, count in conn.execute(_COUNT_PER_SERVICE)]
        total = sum(count for _, count in counted)
    else:
        total = int(conn.execute(_COUNT_BINDINGS).scalar_one())
    counts = {part: int(conn.execute(q).scalar_one()) for part, q in _COUNT_OUTBOX.items()}
    depth = {PENDING: counts["fresh"] + counts["retry"], SENDING: counts["leased"]}
    return _Snapshot(total, counted, depth, time.monotonic())


class DatabaseGauges(Collector):
    """Bindings and outbox depth, refreshed by a thread; collect() only reads the cache."""

    def __init__(
        self, engine: Engine, *, per_service: bool, interval: float, statement_timeout: float
    ) -> None:
        self._engine = engine
        self._per_service = per_service
        self._interval = interval
        self._statement_timeout_ms = max(1, round(statement_timeout * 1000))
        self._snapshot: _Snapshot | None = None
        self._started_at = time.monotonic()
        self._failing = False
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        if self._thread is not None:
            return
        self._started_at = time.monotonic()
        self._stopping.clear()
        self._thread = threading.Thread(target=self._run, name="metrics-refresh", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        if self._thread is None:
            return
        self._stopping.set()
        # A query still running is bounded by its statement timeout; do not wait longer.
        self._thread.join(timeout=self._statement_timeout_ms / 1000 + 1)
        self._thread = None

    def _run(self) -> None:
        while True:
            self.refresh()
            if self._stopping.wait(self._interval):
                return

    def refresh(self) -> None:
        try:
            with self._engine.connect() as conn, conn.begin():
                if conn.dialect.name == "postgresql":
                    # Bounded: a locked table or a slow database delays only the next values.
                    conn.execute(
                        text(f"SET LOCAL statement_timeout = {self._statement_timeout_ms}")
                    )
                # (SQLite in WAL mode: a read never waits for a writer's lock.)
                snapshot = _read(conn, self._per_service)
        except Exception as error:
            # Keep the last values (their age shows they are stale); say so once per streak.
            if not self._failing:
                self._failing = True
                log.warning("database gauges: reading failed, keeping the last values: %s", error)
            return
        if self._failing:
            self._failing = False
            log.info("database gauges: reading works again")
        self._snapshot = snapshot

    def collect(self) -> Iterator[GaugeMetricFamily]:
        snapshot = self._snapshot  # one reference read: the thread replaces it whole
        age = GaugeMetricFamily(
            "notify_database_gauges_age_seconds",
            "Seconds since the database gauges were read (since start while never read)",
        )
        read_at = snapshot.read_at if snapshot is not None else self._started_at
        age.add_metric((), max(0.0, time.monotonic() - read_at))
        yield age
        if snapshot is None:
            return
        if self._per_service:
            bindings_gauge = GaugeMetricFamily(
                "notify_bindings", "Bindings per service", labels=("service_sid",)
            )
            for service_sid, count in snapshot.per_service:
                bindings_gauge.add_metric((service_sid,), count)
        else:
            bindings_gauge = GaugeMetricFamily("notify_bindings", "Bindings of every service")
            bindings_gauge.add_metric((), snapshot.bindings)
        outbox = GaugeMetricFamily(
            "notify_outbox_depth", "Deliveries not yet final, by status", labels=("status",)
        )
        for status, count in snapshot.outbox.items():
            outbox.add_metric((status,), count)
        yield bindings_gauge
        yield outbox
