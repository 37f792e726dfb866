"""Prometheus metrics: per-process request and delivery counters, and gauges read from the
database at scrape time (so every process reports the same bindings and outbox depth)."""

from collections.abc import Iterator

from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector
from sqlalchemy import Engine, func, select
from sqlalchemy.exc import SQLAlchemyError

from notify_server.bindings.repository import bindings
from notify_server.notifications.repository import PENDING, SENDING, deliveries
from notify_server.services.repository import services

_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)


class Metrics:
    def __init__(self, engine: Engine) -> None:
        self.registry = CollectorRegistry()
        self._requests = Counter(
            "notify_requests_total",
            "HTTP requests by operation, method and status",
            ("operation", "method", "status"),
            registry=self.registry,
        )
        self._latency = Histogram(
            "notify_request_duration_seconds",
            "HTTP request latency by operation, method and status",
            ("operation", "method", "status"),
            buckets=_BUCKETS,
            registry=self.registry,
        )
        self._deliveries = Counter(
            "notify_deliveries_total",
            "Delivery attempts by channel and outcome",
            ("channel", "outcome"),
            registry=self.registry,
        )
        self.registry.register(_DatabaseGauges(engine))
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


class _DatabaseGauges(Collector):
    def __init__(self, engine: Engine) -> None:
        self._engine = engine

    def collect(self) -> Iterator[GaugeMetricFamily]:
        try:
            with self._engine.connect() as conn:
                per_service = conn.execute(
                    select(services.c.sid, func.count(bindings.c.id))
                    .select_from(
                        services.outerjoin(bindings, bindings.c.service_id == services.c.id)
                    )
                    .group_by(services.c.sid)
                ).all()
                depth = dict.fromkeys((PENDING, SENDING), 0)
                depth.update(
                    conn.execute(
                        select(deliveries.c.status, func.count())
                        .where(deliveries.c.status.in_((PENDING, SENDING)))
                        .group_by(deliveries.c.status)
                    ).all()
                )
        except SQLAlchemyError:
            # The database is down: the per-process counters must still be readable.
            return
        bindings_gauge = GaugeMetricFamily(
            "notify_bindings", "Bindings per service", labels=("service_sid",)
        )
        for service_sid, count in per_service:
            bindings_gauge.add_metric((service_sid,), count)
        outbox = GaugeMetricFamily(
            "notify_outbox_depth", "Deliveries not yet final, by status", labels=("status",)
        )
        for status, count in depth.items():
            outbox.add_metric((status,), count)
        yield bindings_gauge
        yield outbox
