"""`python -m jobs cleanup`: delete done tasks completed longer ago than the retention.

Walks the completion-time index from the oldest up to the cutoff, so a run touches only the
expired tasks however many done ones there are ("index": "completion-time" in its summary), and
has the store delete them where they are (`TaskStore.delete_completed`: in Redis, a script per
batch that checks and deletes each task at once, so none is read into this process and nothing
changes between check and delete; a task re-opened before its batch is not in the index). On
data whose layout is older than `COMPLETION_INDEX_LAYOUT` (an upgrade before its
`migrate --contract`: older builds still write, and do not keep the index) it walks the whole
`done` index instead ("index": "scan"), reading each batch and deleting a task only if it is
still exactly as read (a task re-opened or edited meanwhile survives: "changed"). A dry run
reads what it would delete. Either walk goes in bounded batches (memory stays flat), and a run
holds an expiring lock so that two runs never both act.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
from collections.abc import AsyncIterator
from contextlib import suppress
from dataclasses import asdict, dataclass
from datetime import datetime
from typing import Any

from jobs.runtime import BATCH, Command, JobFailed, Summary, add_batch_size, shared_store
from service.domain import Status, Task, utcnow
from service.errors import StoreUnavailable
from service.settings import Settings
from service.store import TaskStore
from service.store.base import COMPLETION_INDEX_LAYOUT, Completion, LayoutWindow

log = logging.getLogger("tasks.jobs.cleanup")

LOCK = "cleanup"
LOCK_TTL_SECONDS = 60.0  # renewed after every batch; a crashed run frees it after this long


@dataclass(slots=True)
class Counts:
    index: str | None = None  # what it walked: "completion-time", or "scan" (every done task)
    scanned: int = 0  # done tasks looked at
    expired: int = 0  # of those, completed before the cutoff
    deleted: int = 0
    changed: int = 0  # expired when read, modified before the delete: kept
    batches: int = 0


def indexed(window: LayoutWindow | None) -> bool:
    """Whether every writer of data in `window` has kept the completion-time index."""
    return window is not None and window.current >= COMPLETION_INDEX_LAYOUT


async def _expired(store: TaskStore, cutoff: datetime, batch: int) -> AsyncIterator[list[Task]]:
    """The tasks the completion-time index says expired, a batch at a time."""
    after: Completion | None = None
    while found := await store.scan_completed(before=cutoff, after=after, limit=batch):
        after = found[-1]
        yield await store.get_many([task_id for _, task_id in found])


async def _done(store: TaskStore, batch: int) -> AsyncIterator[list[Task]]:
    """Every done task, a batch at a time."""
    after: str | None = None
    while ids := await store.scan_ids(status=Status.done, after=after, limit=batch):
        after = ids[-1]
        yield await store.get_many(ids)


async def _ahead(batches: AsyncIterator[list[Task]]) -> AsyncIterator[list[Task]]:
    """The batches, each read while the one before is being deleted: Redis and this process
    work at the same time."""
    reading = asyncio.ensure_future(anext(batches, None))
    try:
        while (tasks := await reading) is not None:
            reading = asyncio.ensure_future(anext(batches, None))
            yield tasks
    finally:
        reading.cancel()


async def purge(
    store: TaskStore,
    *,
    cutoff: datetime,
    batch: int = BATCH,
    dry_run: bool = False,
    lock_token: str | None = None,
) -> Counts:
    """Delete the done tasks completed before `cutoff`, one bounded batch at a time."""
    counts = Counts()
    if indexed(await store.layout()):
        counts.index = "completion-time"
        if not dry_run:
            while (swept := await store.delete_completed(before=cutoff, limit=batch)).looked:
                counts.batches += 1
                counts.scanned += swept.looked
                counts.expired += swept.deleted
                counts.deleted += swept.deleted
                await _batch_done(store, counts, dry_run, lock_token)
            return counts
        batches = _expired(store, cutoff, batch)
    else:
        counts.index = "scan"
        log.warning(
            "the completion-time index is not complete (run `migrate --contract` once every pod "
            "is new): reading every done task"
        )
        batches = _done(store, batch)
    async for tasks in _ahead(batches):
        expired = [  # as read now: the walk's view may be older
            t
            for t in tasks
            if t.status is Status.done and t.completed_at is not None and t.completed_at < cutoff
        ]
        counts.batches += 1
        counts.scanned += len(tasks)
        counts.expired += len(expired)
        if not dry_run and expired:
            deleted = len(await store.delete_unchanged(expired))
            counts.deleted += deleted
            counts.changed += len(expired) - deleted
        await _batch_done(store, counts, dry_run, lock_token)
    return counts


async def _batch_done(
    store: TaskStore, counts: Counts, dry_run: bool, lock_token: str | None
) -> None:
    """After each batch: log the counts so far, and renew the lock (or fail, having lost it)."""
    log.debug("batch", extra=asdict(counts))
    if lock_token is not None and not await store.renew_lock(LOCK, lock_token, LOCK_TTL_SECONDS):
        raise JobFailed("lost the cleanup lock (it expired)", _summary(counts, dry_run))


def _summary(counts: Counts, dry_run: bool) -> Summary:
    return {"dry_run": dry_run, **asdict(counts)}


async def run(args: argparse.Namespace, settings: Settings) -> Summary:
    retention = settings.cleanup_retention
    cutoff = utcnow() - retention
    facts: Summary = {"retention_seconds": int(retention.total_seconds())}
    async with shared_store(settings) as store:
        await store.ping()  # reachable, and a data layout this build knows
        token = await store.acquire_lock(LOCK, LOCK_TTL_SECONDS)
        if token is None:
            log.info("another cleanup holds the lock: nothing to do")
            return {"skipped": "locked", **facts, **_summary(Counts(), args.dry_run)}
        log.info("cleanup started", extra={"cutoff": cutoff.isoformat(), "dry_run": args.dry_run})
        try:
            counts = await purge(
                store, cutoff=cutoff, batch=args.batch_size, dry_run=args.dry_run, lock_token=token
            )
        finally:
            with suppress(StoreUnavailable):
                await store.release_lock(LOCK, token)
    log.info("cleanup done", extra=asdict(counts))
    return {**facts, **_summary(counts, args.dry_run)}


def _arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--retention",
        metavar="DURATION",
        help="delete done tasks completed longer ago than this: <n>s|m|h|d "
        "(default: TASKS_CLEANUP_RETENTION)",
    )
    parser.add_argument("--dry-run", action="store_true", help="count, delete nothing")
    add_batch_size(parser)


def _overrides(args: argparse.Namespace) -> dict[str, Any]:
    # The flag goes through the settings field's own parser.
    return {} if args.retention is None else {"cleanup_retention": args.retention}


COMMAND = Command(
    name="cleanup",
    help="delete done tasks older than the retention, in batches, under a lock",
    add_arguments=_arguments,
    run=run,
    overrides=_overrides,
    flag_of={"cleanup_retention": "--retention"},
)
