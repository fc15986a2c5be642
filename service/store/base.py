"""The store protocol: what the API and the admin jobs need from wherever tasks live."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Protocol

from service.domain import Page, Status, Task
from service.errors import TasksError

# Batch return types, named at module level (inside the protocol, `list` is a method).
IdList = list[str]
TaskList = list[Task]

LAYOUT_VERSION = 1
"""Version of the data layout a store writes (Redis: `<prefix>meta:layout`); migrations bump it."""


class LayoutMismatch(TasksError):
    """The stored data layout is not the one this build reads and writes: the store refuses
    writes and readiness fails until `python -m jobs migrate` (older) or a newer build (newer)."""

    def __init__(self, stored: int) -> None:
        if stored > LAYOUT_VERSION:
            why = f"data layout {stored} is newer than this build understands ({LAYOUT_VERSION})"
        else:
            why = (
                f"data layout {stored} is older than this build ({LAYOUT_VERSION}): "
                "run `python -m jobs migrate`"
            )
        super().__init__(why)
        self.stored = stored


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

    Every method raises `StoreUnavailable` (with its reason) when the backing service cannot
    answer within the store's timeout, whatever the failure: the call never takes longer.
    """

    async def ping(self) -> None:
        """Return when the store answers, takes writes (not a read-only replica) and its data
        layout is this build's (an empty store gets it recorded); raise `LayoutMismatch` when
        the stored layout is another version."""

    async def close(self) -> None:
        """Release connections; the store is unusable afterwards."""

    async def create(self, task: Task, idempotency: Idempotency | None = None) -> Created:
        """Store a new task atomically. With `idempotency`, a repeat of the same key and body
        returns the task first created under that key and stores nothing; the same key with
        another body raises `IdempotencyKeyReused`."""

    async def get(self, task_id: str) -> Task:
        """The task, or `TaskNotFound`."""

    async def list(self, *, status: Status | None, limit: int, before: str | None) -> Page:
        """Up to `limit` tasks with ids below `before` (all when None), newest first; with
        `status`, only tasks that have it.

        `next_cursor` of the page is the id to pass as `before` for the next page."""

    async def update(self, task_id: str, change: Callable[[Task], Task]) -> Task:
        """Replace the task with `change(current)` atomically (compare-and-set, retried on a
        concurrent write). `change` may raise to abort; returning the same task writes nothing.
        Raises `TaskNotFound` when absent."""

    async def delete(self, task_id: str, check: Callable[[Task], None] | None = None) -> None:
        """Remove the task, or raise `TaskNotFound`. With `check`, only if `check(current)`
        returns (it raises to abort), atomically: a concurrent write makes it check again."""

    # --- for the admin jobs: batches, conditional deletes, upserts, layout, locks ------------

    async def scan_ids(self, *, status: Status | None, after: str | None, limit: int) -> IdList:
        """Up to `limit` ids above `after` (from the start when None), in id order: a keyset
        walk that is stable while tasks are deleted or added behind the cursor."""

    async def get_many(self, task_ids: Sequence[str]) -> TaskList:
        """The tasks with these ids, in that order; absent ids are skipped."""

    async def delete_unchanged(self, tasks: Sequence[Task]) -> IdList:
        """Delete each task only if it is stored as given (same status, updated_at and
        completed_at: every change moves updated_at), atomically per task; the ids deleted."""

    async def put_many(self, tasks: Sequence[Task]) -> None:
        """Upsert the tasks exactly as given (every field kept, indexes consistent), as one
        atomic batch."""

    async def layout_version(self) -> int | None:
        """The stored data layout version: None for an empty store that has none recorded,
        0 for data written before layouts were versioned."""

    async def set_layout_version(self, version: int) -> None:
        """Record the data layout version (migrations call this after each step)."""

    async def acquire_lock(self, name: str, ttl_seconds: float) -> str | None:
        """Take the named lock for `ttl_seconds`: its token, or None when someone holds it."""

    async def renew_lock(self, name: str, token: str, ttl_seconds: float) -> bool:
        """Extend a held lock; False when it expired or someone else holds it now."""

    async def release_lock(self, name: str, token: str) -> bool:
        """Release the lock if `token` still holds it; False otherwise."""
