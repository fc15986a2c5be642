"""Dependencies injected into the routers: the store, the settings, write access."""

from __future__ import annotations

import hmac
from typing import Annotated

from fastapi import Depends, Request

from service.errors import Unauthorized
from service.lifecycle import Lifecycle
from service.observability.metrics import Metrics
from service.settings import Settings
from service.store import TaskStore


async def get_store(request: Request) -> TaskStore:
    store: TaskStore = request.app.state.store
    return store


async def get_settings(request: Request) -> Settings:
    settings: Settings = request.app.state.settings
    return settings


async def get_lifecycle(request: Request) -> Lifecycle:
    lifecycle: Lifecycle = request.app.state.lifecycle
    return lifecycle


async def get_metrics(request: Request) -> Metrics:
    metrics: Metrics = request.app.state.metrics
    return metrics


StoreDep = Annotated[TaskStore, Depends(get_store)]
SettingsDep = Annotated[Settings, Depends(get_settings)]
LifecycleDep = Annotated[Lifecycle, Depends(get_lifecycle)]
MetricsDep = Annotated[Metrics, Depends(get_metrics)]


class ApiKeyGuard:
    """Bearer-key check for writes; with no keys configured, writes are open."""

    def __init__(self, keys: tuple[str, ...]) -> None:
        self._keys = tuple(k.encode() for k in keys)

    def check(self, authorization: str | None) -> None:
        if not self._keys:
            return
        scheme, _, token = (authorization or "").partition(" ")
        presented = token.strip().encode()
        matched = False
        for key in self._keys:  # every key compared, in constant time each
            matched |= hmac.compare_digest(presented, key)
        if scheme.lower() != "bearer" or not matched:
            raise Unauthorized("writes need `Authorization: Bearer <key>`")


async def require_write_access(request: Request) -> None:
    guard: ApiKeyGuard = request.app.state.api_key_guard
    guard.check(request.headers.get("authorization"))
