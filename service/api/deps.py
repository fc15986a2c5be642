"""What the routers get from the app: the store, the settings, write access.

The process-wide objects live on `app.state` (set by `create_app` and its lifespan) and are read
with plain typed accessors taking the request, not `Depends`: FastAPI solves a sub-dependency
afresh on every request (a recursive solve with cache keys and introspection), which on a GET
cost as much as a tenth of a bare FastAPI + Redis handler. Write access is checked by the edge
layer (`service.api.edge`) with the ApiKeyGuard below, before a request's body is read.
"""

from __future__ import annotations

import hmac

from fastapi import Request

from service.errors import Unauthorized
from service.lifecycle import Lifecycle
from service.settings import Settings
from service.store import TaskStore


def store_of(request: Request) -> TaskStore:
    """The process's store (one Redis pool), opened by the app's lifespan."""
    store: TaskStore = request.app.state.store
    return store


def settings_of(request: Request) -> Settings:
    settings: Settings = request.app.state.settings
    return settings


def lifecycle_of(request: Request) -> Lifecycle:
    lifecycle: Lifecycle = request.app.state.lifecycle
    return lifecycle


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
