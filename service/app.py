"""The FastAPI factory: assembles routers, middleware, error handlers and the store's lifespan."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager

from fastapi import FastAPI
from starlette.types import ASGIApp

from service.api import health, tasks
from service.api.deps import ApiKeyGuard
from service.api.edge import Edge
from service.api.problems import install_problem_handlers
from service.lifecycle import Lifecycle
from service.observability.metrics import Metrics
from service.observability.middleware import ObservabilityMiddleware
from service.settings import Settings
from service.store import TaskStore, open_store
from service.store.instrumented import InstrumentedStore

log = logging.getLogger("tasks")

# API requests served at once, per pooled Redis connection: enough to keep every connection
# busy while others parse and answer, few enough that each one's store call finishes in time.
IN_FLIGHT_PER_CONNECTION = 4


def create_app(settings: Settings, lifecycle: Lifecycle | None = None) -> FastAPI:
    metrics = Metrics(
        version=settings.version,
        git_revision=settings.git_revision,
        build_date=settings.build_date,
    )

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        # One store (one Redis pool) per process, opened here and closed after the drain.
        # Every store operation is bounded as a whole (see RedisTaskStore), so the client needs
        # no timeout of its own on each socket read and write.
        store: TaskStore = InstrumentedStore(open_store(settings, socket_timeouts=False), metrics)
        app.state.store = store  # read back, typed, by service.api.deps.store_of
        log.info("started", extra={"store": settings.store, "version": settings.version})
        try:
            yield
        finally:
            await store.close()
            log.info("store closed")

    app = _App(
        title="tasks",
        version=settings.version,
        summary="A small, fast, twelve-factor tasks API.",
        lifespan=lifespan,
        # Our telemetry is the Prometheus metrics and the JSON access line; FastAPI's native
        # OpenTelemetry would only check, on every request, for providers nobody configured.
        telemetry={"tracing": False, "metrics": False, "logs": False},
    )
    app.state.settings = settings
    app.state.metrics = metrics
    app.state.lifecycle = lifecycle = lifecycle or Lifecycle()
    # The routers' routes go on the app itself, one flat table. `include_router` would keep each
    # router as a nested branch that FastAPI matches twice per request (it selects the branch,
    # then the route in it); the routers carry their own prefix and tags, so nothing is lost.
    for router in (tasks.router, health.router):
        app.router.routes.extend(router.routes)
    install_problem_handlers(app)
    # Around FastAPI's whole stack (see _App): the observability middleware sees every answer
    # (the edge's refusals too) and sets the request id the edge's error log line carries.
    app.wrap = lambda stack: ObservabilityMiddleware(
        Edge(
            stack,
            max_body_bytes=settings.max_body_bytes,
            api_keys=ApiKeyGuard(settings.api_key_list),
            max_in_flight=IN_FLIGHT_PER_CONNECTION * settings.redis_max_connections,
            # a turn is waited for like a store call
            admission_timeout=settings.redis_timeout_seconds,
            lifecycle=lifecycle,
            fast_paths=tasks.FastPaths(app.router.routes),
        ),
        metrics=metrics,
    )
    return app


class _App(FastAPI):
    """FastAPI with our two layers (`wrap`) around its whole middleware stack, not inside
    Starlette's error, exception-telemetry and body-limit layers: the hottest request, one
    task's GET, which the edge serves itself, then passes through none of them (measured
    in-process: about a tenth of its CPU). An exception that no handler answers still gets
    problem+json (`install_problem_handlers` gives Starlette's error layer `internal_error`),
    and the edge logs it once."""

    wrap: Callable[[ASGIApp], ASGIApp]

    def build_middleware_stack(self) -> ASGIApp:
        return self.wrap(super().build_middleware_stack())
