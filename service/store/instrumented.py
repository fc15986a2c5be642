"""A TaskStore wrapper that times every operation and counts the ones that found the store down."""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from typing import TypeVar

from service.domain import Page, Status, Task
from service.errors import StoreUnavailable
from service.observability.metrics import Metrics
from service.store.base import Created, Idempotency, TaskStore

T = TypeVar("T")


class InstrumentedStore:
    def __init__(self, inner: TaskStore, metrics: Metrics) -> None:
        self.inner = inner
        self._metrics = metrics
        self._durations = {
            op: metrics.store_duration.labels(op)
            for op in ("ping", "create", "get", "list", "update", "delete")
        }

    async def _timed(self, operation: str, call: Awaitable[T]) -> T:
        started = time.perf_counter()
        try:
            return await call
        except StoreUnavailable:
            self._metrics.store_errors.labels(operation).inc()
            raise
        finally:
            self._durations[operation].observe(time.perf_counter() - started)

    async def ping(self) -> None:
        await self._timed("ping", self.inner.ping())

    async def close(self) -> None:
        await self.inner.close()

    async def create(self, task: Task, idempotency: Idempotency | None = None) -> Created:
        return await self._timed("create", self.inner.create(task, idempotency))

    async def get(self, task_id: str) -> Task:
        return await self._timed("get", self.inner.get(task_id))

    async def list(self, *, status: Status | None, limit: int, before: str | None) -> Page:
        return await self._timed("list", self.inner.list(status=status, limit=limit, before=before))

    async def update(self, task_id: str, change: Callable[[Task], Task]) -> Task:
        return await self._timed("update", self.inner.update(task_id, change))

    async def delete(self, task_id: str) -> None:
        await self._timed("delete", self.inner.delete(task_id))
