"""The store protocol: what the API and the admin jobs need from wherever tasks live."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import NamedTuple, Protocol

from service.domain import (
    EPOCH,
    PageJson,
    Status,
    Task,
    TaskFields,
    TaskJson,
    TaskPatch,
    micros,
)
from service.errors import TasksError

# Batch return types, named at module level (inside the protocol, `list` is a method).
IdList = list[str]
TaskList = list[Task]
Completion = tuple[datetime, str]
"""A done task's place in the completion-time index: its completed_at, then its id."""
CompletionList = list[Completion]


class Swept(NamedTuple):
    """One pass of `delete_completed`: index entries it took (the oldest expired ones), and how
    many of them were done tasks it deleted (the others were not done: their entry went)."""

    looked: int
    deleted: int


LAYOUT_VERSION = 3
"""The data layout this build writes (Redis: `<prefix>meta:layout`); migrations bump it."""

COMPLETION_INDEX_LAYOUT = 3
"""The first layout whose every writer keeps the completion-time index (`scan_completed`): on
data older than that, builds that do not keep it may have written, so it may miss tasks."""


def completion_score(completed_at: datetime) -> int:
    """Microseconds since the epoch: completed_at's own precision, so the index orders and
    cuts exactly as the timestamps compare (the cutoff's boundary included), and an integer
    that a double (a Redis score) holds exactly until the year 2255."""
    return micros(completed_at)


def completed_at(score: int) -> datetime:
    """The inverse of `completion_score`."""
    return EPOCH + timedelta(microseconds=score)


@dataclass(frozen=True, slots=True)
class LayoutWindow:
    """What a store records about its data: the layout it is in, and the oldest build layout
    that may still read and write it (expand migrations keep older builds in the window,
    contracting ones move it past them)."""

    current: int
    min_compatible: int


@dataclass(frozen=True, slots=True)
class BuildLayout:
    """The stored layouts a build serves: it writes `version`, and serves data whose window
    admits it (`min_compatible <= version`) once the data is at least at `needs` (`version`, or
    the layout before it when its last migration is a contraction it can run without).
    `fresh_min` is the window's floor it records in an empty store."""

    version: int
    needs: int
    fresh_min: int

    def serves(self, stored: LayoutWindow) -> bool:
        return stored.min_compatible <= self.version and stored.current >= self.needs


class LayoutMismatch(TasksError):
    """The stored data layout is outside what this build serves: the store refuses writes and
    readiness fails until `python -m jobs migrate` (data too old) or a newer build (data that
    has contracted past this build)."""

    def __init__(self, stored: LayoutWindow, build: BuildLayout) -> None:
        if stored.current < build.needs:
            why = (
                f"data layout {stored.current} is older than this build ({build.version}): "
                "run `python -m jobs migrate`"
            )
        else:
            why = (
                f"data layout {stored.current} is newer than this build understands "
                f"({build.version})"
            )
            if stored.min_compatible != stored.current:
                why += f": it admits builds of layout {stored.min_compatible} or newer"
        super().__init__(why)
        self.stored = stored
        self.build = build


class ShardCountMismatch(TasksError):
    """Cluster mode: the data was sharded into another number of index shards than
    TASKS_REDIS_SHARDS says. The count is fixed at first use (a task's shard follows from it), so
    the store refuses rather than look for tasks in the wrong shards."""

    def __init__(self, stored: int, configured: int) -> None:
        super().__init__(
            f"the data is in {stored} shards, TASKS_REDIS_SHARDS says {configured}: set it back "
            f"to {stored}, or export, and import into an empty cluster"
        )
        self.stored = stored
        self.configured = configured


@dataclass(frozen=True, slots=True)
class Idempotency:
    """Remember a create under `key` for `ttl_seconds`; `fingerprint` identifies its body."""

    key: str
    fingerprint: str
    ttl_seconds: int


class Created(NamedTuple):  # made on every create: a tuple is quicker to make than a dataclass
    """The result of a create: the task's id, its JSON and ETag as GET serves them, and whether
    it is the replay of an earlier request."""

    id: str
    json: TaskJson
    replayed: bool = False

    @property
    def task(self) -> Task:
        return Task.model_validate_json(self.json.body)


class TaskStore(Protocol):
    """Tasks by id, plus a newest-first listing by id (ids sort by creation time).

    Every method raises `StoreUnavailable` (with its reason) when the backing service cannot
    answer within the store's timeout, whatever the failure: the call never takes longer.
    """

    async def ping(self) -> None:
        """Return when the store answers, takes writes (not a read-only replica) and this build
        serves its data layout (`BuildLayout.serves`; an empty store gets this build's window
        recorded); raise `LayoutMismatch` when it does not."""

    async def close(self) -> None:
        """Release connections; the store is unusable afterwards."""

    async def create(self, task: TaskFields, idempotency: Idempotency | None = None) -> Created:
        """Store a new task (`new_fields`) atomically. With `idempotency`, a repeat of the same
        key and body returns the task first created under that key and stores nothing; the same
        key with another body raises `IdempotencyKeyReused`. The task stored is the one
        `Created` describes: a store that places tasks by id may give it the next id that fits
        (Redis in cluster mode)."""

    async def get(self, task_id: str) -> Task:
        """The task, or `TaskNotFound`."""

    async def get_json(self, task_id: str) -> TaskJson:
        """The task's JSON, byte for byte `to_json(await get(task_id))`, and its ETag, or
        `TaskNotFound`: what GET serves, which a store may produce without building the model."""

    async def list(self, *, status: Status | None, limit: int, before: str | None) -> PageJson:
        """Up to `limit` tasks with ids below `before` (all when None), newest first, in JSON
        (what the API serves, which a store may produce without building the models); with
        `status`, only tasks that have it.

        `next_cursor` of the page is the id to pass as `before` for the next page."""

    async def patch(
        self,
        task_id: str,
        patch: TaskPatch,
        if_match: frozenset[str] | None = None,
        now: datetime | None = None,
    ) -> Task:
        """The task after `apply_patch(current, patch, now)`, written atomically: nothing is
        written when the patch changes nothing. With `if_match`, only if the task's ETag is one
        of those, else `PreconditionFailed`. Raises `TaskNotFound` when absent."""

    async def delete(self, task_id: str, if_match: frozenset[str] | None = None) -> None:
        """Remove the task, or raise `TaskNotFound`. With `if_match`, only if the task's ETag
        is one of those (atomically), else `PreconditionFailed`."""

    # --- for the admin jobs: batches, conditional deletes, upserts, layout, locks ------------

    async def scan_ids(self, *, status: Status | None, after: str | None, limit: int) -> IdList:
        """Up to `limit` ids above `after` (from the start when None), in id order: a keyset
        walk that is stable while tasks are deleted or added behind the cursor."""

    async def scan_completed(
        self, *, before: datetime, after: Completion | None, limit: int
    ) -> CompletionList:
        """Up to `limit` done tasks completed before `before`, as (completed_at, id), oldest
        first, ties by id, after `after` (from the oldest when None): a keyset walk of the
        completion-time index that touches none of the later ones, stable while tasks are
        deleted or re-opened behind the cursor. Complete on data at `COMPLETION_INDEX_LAYOUT`
        or later; on older data it may miss tasks that older builds completed."""

    async def delete_completed(self, *, before: datetime, limit: int) -> Swept:
        """Delete the oldest done tasks completed before `before`, at most `limit` of them
        (a Redis Cluster's shards share it), each at once with its index entries, reading no
        task into the caller: what the completion-time index says expired is checked and
        deleted where the data is, atomically. `Swept.looked` is 0 once none is left. Relies on
        the index: complete on data at `COMPLETION_INDEX_LAYOUT` or later only."""

    async def get_many(self, task_ids: Sequence[str]) -> TaskList:
        """The tasks with these ids, in that order; absent ids are skipped."""

    async def delete_unchanged(self, tasks: Sequence[Task]) -> IdList:
        """Delete each task only if it is stored as given (same status, updated_at and
        completed_at: every change moves updated_at), atomically per task; the ids deleted."""

    async def put_many(self, tasks: Sequence[Task]) -> None:
        """Upsert the tasks exactly as given (every field kept, indexes consistent), as one
        atomic batch (in a Redis Cluster: atomic per shard)."""

    async def layout(self) -> LayoutWindow | None:
        """The stored data layout and its window: None for an empty store that has none
        recorded, layout 0 for data written before layouts were versioned. Data recorded before
        the window existed admits builds of its own layout only (min_compatible = current)."""

    async def set_layout(self, window: LayoutWindow) -> None:
        """Record the data layout and its window, both at once (migrations call this after
        each step)."""

    async def acquire_lock(self, name: str, ttl_seconds: float) -> str | None:
        """Take the named lock for `ttl_seconds`: its token, or None when someone holds it."""

    async def renew_lock(self, name: str, token: str, ttl_seconds: float) -> bool:
        """Extend a held lock; False when it expired or someone else holds it now."""

    async def release_lock(self, name: str, token: str) -> bool:
        """Release the lock if `token` still holds it; False otherwise."""
