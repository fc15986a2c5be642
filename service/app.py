"""The FastAPI factory: assembles routers, middleware, error handlers and the store's lifespan."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI

from service.api import health, tasks
from service.api.deps import ApiKeyGuard
from service.api.problems import install_problem_handlers
from service.lifecycle import Lifecycle
from service.observability.metrics import Metrics
from service.observability.middleware import ObservabilityMiddleware
from service.settings import Settings
from service.store import open_store
from service.store.instrumented import InstrumentedStore

log = logging.getLogger("tasks")


def create_app(settings: Settings, lifecycle: Lifecycle | None = None) -> FastAPI:
    metrics = Metrics(
        version=settings.version,
        git_revision=settings.git_revision,
        build_date=settings.build_date,
    )

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        # One store (one Redis pool) per process, opened here and closed after the drain.
        app.state.store = InstrumentedStore(open_store(settings), metrics)
        log.info("started", extra={"store": settings.store, "version": settings.version})
        try:
            yield
        finally:
            await app.state.store.close()
            log.info("store closed")

    app = FastAPI(
        title="tasks",
        version=settings.version,
        summary="A small, fast, twelve-factor tasks API.",
        lifespan=lifespan,
    )
    app.state.settings = settings
    app.state.metrics = metrics
    app.state.lifecycle = lifecycle or Lifecycle()
    app.state.api_key_guard = ApiKeyGuard(settings.api_key_list)
    app.include_router(tasks.router)
    app.include_router(health.router)
    install_problem_handlers(app)
    app.add_middleware(ObservabilityMiddleware, metrics=metrics)
    return app
