"""The embedded store: tasks in this process's memory (the default for `make run`; not shared)."""

from __future__ import annotations

import secrets
import time
from bisect import bisect_left, bisect_right, insort
from collections.abc import Sequence
from datetime import datetime
from typing import TypeVar

from service.domain import (
    PageJson,
    Status,
    Task,
    TaskFields,
    TaskJson,
    TaskPatch,
    apply_patch,
    etag,
    fields_json,
    from_fields,
    task_fields,
    task_json,
    tasks_json,
)
from service.errors import IdempotencyKeyReused, PreconditionFailed, TaskNotFound
from service.store.base import (
    LAYOUT_VERSION,
    Completion,
    CompletionList,
    Created,
    Idempotency,
    IdList,
    LayoutWindow,
    Swept,
    TaskList,
)

Ids = list[str]  # sorted task ids
T = TypeVar("T", str, Completion)  # what an index holds


class MemoryTaskStore:
    """Single event loop, no awaits inside an operation: every operation is atomic."""

    def __init__(self) -> None:
        self._tasks: dict[str, Task] = {}
        # Sorted ids, for all tasks (key None) and per status.
        self._index: dict[Status | None, Ids] = {None: [], **{s: [] for s in Status}}
        self._completed: CompletionList = []  # done tasks, sorted by (completed_at, id)
        self._idempotency: dict[str, tuple[float, str, Created]] = {}
        self._layout = LayoutWindow(LAYOUT_VERSION, LAYOUT_VERSION)  # no other build shares it
        self._locks: dict[str, tuple[float, str]] = {}  # name -> (expires, token)

    async def ping(self) -> None:
        return None

    async def close(self) -> None:
        return None

    async def create(self, task: TaskFields, idempotency: Idempotency | None = None) -> Created:
        if idempotency is not None:
            now = time.monotonic()
            self._forget_expired(now)
            remembered = self._idempotency.get(idempotency.key)
            if remembered is not None:
                _, fingerprint, first = remembered
                if fingerprint != idempotency.fingerprint:
                    raise IdempotencyKeyReused("this Idempotency-Key was used with another body")
                return Created(first.id, first.json, replayed=True)
        stored = from_fields(task)
        created = Created(task.id, fields_json(task))
        if idempotency is not None:
            expires = now + idempotency.ttl_seconds
            self._idempotency[idempotency.key] = (expires, idempotency.fingerprint, created)
        self._put(stored)
        return created

    def _put(self, task: Task) -> None:
        self._tasks[task.id] = task
        insort(self._index[None], task.id)
        insort(self._index[task.status], task.id)
        if (entry := _completion(task)) is not None:
            insort(self._completed, entry)

    async def get(self, task_id: str) -> Task:
        try:
            return self._tasks[task_id]
        except KeyError:
            raise TaskNotFound() from None

    async def get_json(self, task_id: str) -> TaskJson:
        return task_json(await self.get(task_id))

    async def list(self, *, status: Status | None, limit: int, before: str | None) -> PageJson:
        ids = self._index[status]
        end = bisect_left(ids, before) if before is not None else len(ids)
        chosen = ids[max(0, end - limit - 1) : end][::-1]
        has_more = len(chosen) > limit
        chosen = chosen[:limit]
        return PageJson(
            items=tasks_json([self._tasks[i] for i in chosen]),
            next_cursor=chosen[-1] if has_more else None,
        )

    async def patch(
        self,
        task_id: str,
        patch: TaskPatch,
        if_match: frozenset[str] | None = None,
        now: datetime | None = None,
    ) -> Task:
        current = await self.get(task_id)
        _check(if_match, current)
        new = apply_patch(current, patch, now)
        if new is current:
            return current
        self._tasks[task_id] = new
        if new.status is not current.status:
            _remove(self._index[current.status], task_id)
            insort(self._index[new.status], task_id)
        if (entry := _completion(current)) != _completion(new):
            _remove(self._completed, entry)
            if (added := _completion(new)) is not None:
                insort(self._completed, added)
        return new

    async def delete(self, task_id: str, if_match: frozenset[str] | None = None) -> None:
        task = await self.get(task_id)
        _check(if_match, task)
        del self._tasks[task_id]
        _remove(self._index[None], task_id)
        _remove(self._index[task.status], task_id)
        _remove(self._completed, _completion(task))

    # --- for the admin jobs (parity with Redis; the jobs themselves refuse this store) -------

    async def scan_ids(self, *, status: Status | None, after: str | None, limit: int) -> IdList:
        ids = self._index[status]
        start = bisect_right(ids, after) if after is not None else 0
        return ids[start : start + limit]

    async def scan_completed(
        self, *, before: datetime, after: Completion | None, limit: int
    ) -> CompletionList:
        done = self._completed
        start = bisect_right(done, after) if after is not None else 0
        end = bisect_left(done, (before, ""))
        return done[start : min(end, start + limit)]

    async def delete_completed(self, *, before: datetime, limit: int) -> Swept:
        expired = self._completed[: min(bisect_left(self._completed, (before, "")), limit)]
        for _, task_id in expired:  # the index holds done tasks only: each is deleted
            await self.delete(task_id)
        return Swept(len(expired), len(expired))

    async def get_many(self, task_ids: Sequence[str]) -> TaskList:
        return [self._tasks[i] for i in task_ids if i in self._tasks]

    async def delete_unchanged(self, tasks: Sequence[Task]) -> IdList:
        deleted = []
        for task in tasks:
            current = self._tasks.get(task.id)
            if current is not None and _version(current) == _version(task):
                await self.delete(task.id)
                deleted.append(task.id)
        return deleted

    async def put_many(self, tasks: Sequence[Task]) -> None:
        for task in tasks:
            if task.id in self._tasks:
                await self.delete(task.id)
            self._put(task)

    async def layout(self) -> LayoutWindow | None:
        return self._layout

    async def set_layout(self, window: LayoutWindow) -> None:
        self._layout = window

    async def acquire_lock(self, name: str, ttl_seconds: float) -> str | None:
        now = time.monotonic()
        held = self._locks.get(name)
        if held is not None and held[0] > now:
            return None
        token = secrets.token_hex(16)
        self._locks[name] = (now + ttl_seconds, token)
        return token

    async def renew_lock(self, name: str, token: str, ttl_seconds: float) -> bool:
        now = time.monotonic()
        held = self._locks.get(name)
        if held is None or held[0] <= now or held[1] != token:
            return False
        self._locks[name] = (now + ttl_seconds, token)
        return True

    async def release_lock(self, name: str, token: str) -> bool:
        held = self._locks.get(name)
        if held is None or held[0] <= time.monotonic() or held[1] != token:
            return False
        del self._locks[name]
        return True

    def _forget_expired(self, now: float) -> None:
        # Insertion order is (nearly) expiry order: drop expired keys from the front.
        for key, (expires, _, _) in list(self._idempotency.items()):
            if expires > now:
                break
            del self._idempotency[key]


def _remove(entries: list[T], entry: T | None) -> None:
    """Remove `entry` from a sorted index, if it is there."""
    position = bisect_left(entries, entry) if entry is not None else len(entries)
    if position < len(entries) and entries[position] == entry:
        del entries[position]


def _completion(task: Task) -> Completion | None:
    """The task's entry in the completion-time index (done tasks only)."""
    return None if task.completed_at is None else (task.completed_at, task.id)


def _version(task: Task) -> tuple[object, ...]:
    """What `delete_unchanged` compares: every change moves updated_at."""
    return (task.status, task.updated_at, task.completed_at)


def _check(if_match: frozenset[str] | None, task: Task) -> None:
    """Raise `PreconditionFailed` unless If-Match's tags (None: any) name the task's ETag."""
    if if_match is not None and etag(task_fields(task)) not in if_match:
        raise PreconditionFailed()
