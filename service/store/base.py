"""The store protocol: what the API and the admin jobs need from wherever tasks live."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

from service.domain import Page, Status, Task

LAYOUT_VERSION = 1
"""Version of the data layout a store writes (Redis: `<prefix>meta:layout`); migrations bump it."""


@dataclass(frozen=True, slots=True)
class Idempotency:
    """Remember a create under `key` for `ttl_seconds`; `fingerprint` identifies its body."""

    key: str
    fingerprint: str
    ttl_seconds: int


@dataclass(frozen=True, slots=True)
class Created:
    """The result of a create: the task, and whether it is the replay of an earlier request."""

    task: Task
    replayed: bool = False


class TaskStore(Protocol):
    """Tasks by id, plus a newest-first listing by id (ids sort by creation time).

    Every method raises `StoreUnavailable` when the backing service cannot answer in time.
    """

    async def ping(self) -> None:
        """Return when the store answers (and its data layout is in place)."""

    async def close(self) -> None:
        """Release connections; the store is unusable afterwards."""

    async def create(self, task: Task, idempotency: Idempotency | None = None) -> Created:
        """Store a new task atomically. With `idempotency`, a repeat of the same key and body
        returns the task first created under that key and stores nothing; the same key with
        another body raises `IdempotencyKeyReused`."""

    async def get(self, task_id: str) -> Task:
        """The task, or `TaskNotFound`."""

    async def list(self, *, status: Status | None, limit: int, before: str | None) -> Page:
        """Up to `limit` tasks with ids below `before` (all when None), newest first.

        `next_cursor` of the page is the id to pass as `before` for the next page."""

    async def update(self, task_id: str, change: Callable[[Task], Task]) -> Task:
        """Replace the task with `change(current)` atomically (compare-and-set, retried on a
        concurrent write). `change` may raise to abort; returning the same task writes nothing.
        Raises `TaskNotFound` when absent."""

    async def delete(self, task_id: str) -> None:
        """Remove the task, or raise `TaskNotFound`."""
