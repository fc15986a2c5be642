"""Prometheus metrics on a registry of the app's own (no global state, no import-time effects),
and the ASGI app that serves them on the metrics port (TASKS_METRICS_PORT), apart from the API.

Request metrics are labelled by route *template* (`/v1/tasks/{task_id}`), never by path, so the
number of series does not grow with the number of tasks.
"""

from __future__ import annotations

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
    make_asgi_app,
)
from prometheus_client.gc_collector import GCCollector
from prometheus_client.platform_collector import PlatformCollector
from prometheus_client.process_collector import ProcessCollector
from starlette.types import ASGIApp, Receive, Scope, Send

_LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)


class Metrics:
    def __init__(self, *, version: str, git_revision: str, build_date: str) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        ProcessCollector(registry=self.registry)
        PlatformCollector(registry=self.registry)
        GCCollector(registry=self.registry)
        self.requests = Counter(
            "tasks_http_requests",
            "HTTP requests answered, by method, route template and status.",
            ["method", "route", "status"],
            registry=self.registry,
        )
        self.request_duration = Histogram(
            "tasks_http_request_duration_seconds",
            "Time to answer an HTTP request, by method and route template.",
            ["method", "route"],
            buckets=_LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.in_flight = Gauge(
            "tasks_http_requests_in_flight",
            "HTTP requests being answered now.",
            registry=self.registry,
        )
        self.store_duration = Histogram(
            "tasks_store_operation_duration_seconds",
            "Time a store operation took, by operation.",
            ["operation"],
            buckets=_LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.store_errors = Counter(
            "tasks_store_errors",
            "Store operations that failed because the store was unavailable, by operation and "
            "reason (timeout, connection, readonly, masterdown, loading, busy, oom, misconf, "
            "tryagain, clusterdown, error).",
            ["operation", "reason"],
            registry=self.registry,
        )
        build_info = Gauge(
            "tasks_build_info",
            "Always 1; the labels say what is running.",
            ["version", "git_revision", "build_date"],
            registry=self.registry,
        )
        build_info.labels(version, git_revision, build_date).set(1)

        # Labelled children, cached: the label sets are few (methods x route templates x statuses).
        self._request_children: dict[tuple[str, str, int], tuple[Counter, Histogram]] = {}

    def observe_request(self, method: str, route: str, status: int, seconds: float) -> None:
        children = self._request_children.get((method, route, status))
        if children is None:
            children = (
                self.requests.labels(method, route, str(status)),
                self.request_duration.labels(method, route),
            )
            self._request_children[(method, route, status)] = children
        children[0].inc()
        children[1].observe(seconds)

    def render(self) -> bytes:
        return generate_latest(self.registry)


METRICS_PATH = "/metrics"


def metrics_app(metrics: Metrics) -> ASGIApp:
    """The metrics listener's app: `GET /metrics` (prometheus-client's exposition, with its
    OpenMetrics and gzip negotiation); any other path is 404."""
    exposition = make_asgi_app(metrics.registry)

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":  # the metrics listener runs without a lifespan
            return
        if scope["path"] == METRICS_PATH:
            await exposition(scope, receive, send)
            return
        await send(
            {
                "type": "http.response.start",
                "status": 404,
                "headers": [(b"content-type", b"text/plain; charset=utf-8")],
            }
        )
        await send({"type": "http.response.body", "body": b"only /metrics is served here\n"})

    return app
