"""The embedded store: tasks in this process's memory (the default for `make run`; not shared)."""

from __future__ import annotations

import time
from bisect import bisect_left, insort
from collections.abc import Callable

from service.domain import Page, Status, Task
from service.errors import IdempotencyKeyReused, TaskNotFound
from service.store.base import Created, Idempotency

Ids = list[str]  # sorted task ids


class MemoryTaskStore:
    """Single event loop, no awaits inside an operation: every operation is atomic."""

    def __init__(self) -> None:
        self._tasks: dict[str, Task] = {}
        # Sorted ids, for all tasks (key None) and per status.
        self._index: dict[Status | None, Ids] = {None: [], **{s: [] for s in Status}}
        self._idempotency: dict[str, tuple[float, str, Task]] = {}

    async def ping(self) -> None:
        return None

    async def close(self) -> None:
        return None

    async def create(self, task: Task, idempotency: Idempotency | None = None) -> Created:
        if idempotency is not None:
            now = time.monotonic()
            self._forget_expired(now)
            remembered = self._idempotency.get(idempotency.key)
            if remembered is not None:
                _, fingerprint, first = remembered
                if fingerprint != idempotency.fingerprint:
                    raise IdempotencyKeyReused("this Idempotency-Key was used with another body")
                return Created(first, replayed=True)
            expires = now + idempotency.ttl_seconds
            self._idempotency[idempotency.key] = (expires, idempotency.fingerprint, task)
        self._tasks[task.id] = task
        insort(self._index[None], task.id)
        insort(self._index[task.status], task.id)
        return Created(task)

    async def get(self, task_id: str) -> Task:
        try:
            return self._tasks[task_id]
        except KeyError:
            raise TaskNotFound() from None

    async def list(self, *, status: Status | None, limit: int, before: str | None) -> Page:
        ids = self._index[status]
        end = bisect_left(ids, before) if before is not None else len(ids)
        chosen = ids[max(0, end - limit - 1) : end][::-1]
        has_more = len(chosen) > limit
        chosen = chosen[:limit]
        return Page(
            items=[self._tasks[i] for i in chosen],
            next_cursor=chosen[-1] if has_more else None,
        )

    async def update(self, task_id: str, change: Callable[[Task], Task]) -> Task:
        current = await self.get(task_id)
        new = change(current)
        if new is current:
            return current
        self._tasks[task_id] = new
        if new.status is not current.status:
            self._remove(self._index[current.status], task_id)
            insort(self._index[new.status], task_id)
        return new

    async def delete(self, task_id: str) -> None:
        task = self._tasks.pop(task_id, None)
        if task is None:
            raise TaskNotFound()
        self._remove(self._index[None], task_id)
        self._remove(self._index[task.status], task_id)

    def _forget_expired(self, now: float) -> None:
        # Insertion order is (nearly) expiry order: drop expired keys from the front.
        for key, (expires, _, _) in list(self._idempotency.items()):
            if expires > now:
                break
            del self._idempotency[key]

    @staticmethod
    def _remove(ids: Ids, task_id: str) -> None:
        position = bisect_left(ids, task_id)
        if position < len(ids) and ids[position] == task_id:
            del ids[position]
