"""The completion-time index through an upgrade, on one real Redis shared by two builds: builds
of layout 1 keep serving while layout 2 backfills it, but do not keep it, so cleanup walks every
done task until `migrate --contract` (layout 3) has stopped them and backfilled it again; from
then on cleanup reads the expired tasks alone.

The build before the index is not in this tree: its writes are what its scripts wrote (the hash,
the id and status indexes, never the completion-time index), made here with plain commands, and
its admission is its layout's (`build_layout(MIGRATIONS[:1]).serves`).
"""

from __future__ import annotations

from datetime import datetime, timedelta

import pytest
import redis

from service.domain import Status, Task, TaskCreate, utcnow
from service.settings import Settings
from service.store.base import LayoutWindow
from service.store.migrations import MIGRATIONS, build_layout
from service.store.redis import RedisTaskStore
from tests.support import new_task
from tests.test_jobs import all_tasks, done_task, job_env, run_job
from tests.test_layout_window import as_build, migrate_as

LAYOUT_1 = build_layout(MIGRATIONS[:1])  # the build before the index
DAY = timedelta(days=1)


class Layout1Build:
    """What a layout-1 build writes on the shared Redis (standalone key names)."""

    def __init__(self, settings: Settings) -> None:
        self.redis = redis.Redis.from_url(settings.redis_url, decode_responses=True)
        self.prefix = settings.redis_key_prefix

    def serves(self) -> bool:
        keys = [f"{self.prefix}meta:layout", f"{self.prefix}meta:layout-min"]
        current, floor = (int(v) for v in self.redis.mget(keys))
        return LAYOUT_1.serves(LayoutWindow(current, floor))

    def put(self, task: Task) -> None:
        """Its create, or its import of one task."""
        key = f"{self.prefix}task:{task.id}"
        fields = task.model_dump(mode="json")
        fields["completed_at"] = fields["completed_at"] or ""
        with self.redis.pipeline() as tx:
            tx.delete(key)
            tx.hset(key, mapping=fields)
            tx.zadd(f"{self.prefix}index:all", {task.id: 0})
            for status in Status:
                index = f"{self.prefix}index:status:{status.value}"
                tx.zadd(index, {task.id: 0}) if status is task.status else tx.zrem(index, task.id)
            tx.execute()

    def reopen(self, task: Task) -> None:
        self.put(task.model_copy(update={"status": Status.todo, "completed_at": None}))

    def delete(self, task: Task) -> None:
        with self.redis.pipeline() as tx:
            tx.delete(f"{self.prefix}task:{task.id}")
            tx.zrem(f"{self.prefix}index:all", task.id)
            tx.zrem(f"{self.prefix}index:status:{task.status.value}", task.id)
            tx.execute()


def completion_index(settings: Settings) -> list[tuple[datetime, str]]:
    """Every entry of the index, as the new build reads it."""
    far = utcnow() + 365 * DAY

    async def read(store: RedisTaskStore) -> list[tuple[datetime, str]]:
        return await store.scan_completed(before=far, after=None, limit=10_000)

    return as_build(settings, MIGRATIONS, read)


def done_entries(settings: Settings) -> list[tuple[datetime, str]]:
    """What the index should hold: every done task, at its completed_at."""
    tasks = [t for t in all_tasks(settings) if t.completed_at is not None]
    return sorted((t.completed_at, t.id) for t in tasks if t.completed_at is not None)


@pytest.fixture
def settings(make_settings) -> Settings:  # type: ignore[no-untyped-def]
    return make_settings("redis")  # type: ignore[no-any-return]


@pytest.mark.factor("XII", "IX")
def test_an_upgrade_backfills_the_index_cleanup_scans_until_the_contraction_then_reads_it(
    settings: Settings,
) -> None:
    old = Layout1Build(settings)
    old.redis.mset({f"{old.prefix}meta:layout": 1, f"{old.prefix}meta:layout-min": 1})
    reopened, deleted, expired = (done_task(30 * DAY, n) for n in ("reopened", "deleted", "old"))
    recent, todo = done_task(timedelta(hours=1), "recent"), new_task(TaskCreate(title="todo"))
    for task in (reopened, deleted, expired, recent, todo):  # data of the layout-1 build
        old.put(task)

    # The new build's pre-upgrade hook: the expansion backfills, the contraction waits.
    hook = migrate_as(settings, MIGRATIONS)
    assert (hook.after, hook.applied, hook.changed, hook.pending) == (LayoutWindow(2, 1), 1, 4, 1)
    assert completion_index(settings) == done_entries(settings)
    assert old.serves(), "the old pods keep serving through the rollout"

    # Meanwhile the old pods write, and keep no index: a stale entry, a missing one.
    old.reopen(reopened)
    old.delete(deleted)
    imported = done_task(20 * DAY, "imported by the old build")
    old.put(imported)
    assert completion_index(settings) != done_entries(settings)

    during = run_job(job_env(settings), "cleanup")  # the new build's CronJob, mid-rollout
    assert during.code == 0, during.stderr
    assert during.summary["index"] == "scan"
    assert (during.summary["scanned"], during.summary["deleted"]) == (3, 2)  # every done task
    assert "the completion-time index is not complete" in during.stderr
    left = {t.title for t in all_tasks(settings)}
    assert left == {"reopened", "recent", "todo"}

    later = done_task(10 * DAY, "imported later by the old build")
    old.put(later)
    contract = migrate_as(settings, MIGRATIONS, contract=True)  # once every pod is new
    assert contract.after == LayoutWindow(3, 3) and contract.pending == 0
    assert not old.serves(), "the contraction stops the builds that do not keep the index"
    assert completion_index(settings) == done_entries(settings)

    after = run_job(job_env(settings), "cleanup")
    assert after.code == 0, after.stderr
    assert after.summary["index"] == "completion-time"
    # Only the expired task is read, not the recent one.
    assert (after.summary["scanned"], after.summary["deleted"]) == (1, 1)
    assert {t.title for t in all_tasks(settings)} == {"reopened", "recent", "todo"}


@pytest.mark.factor("XII")
def test_a_contraction_that_stopped_halfway_completes_when_run_again(settings: Settings) -> None:
    """A run that moved the floor but did not finish (the job killed): the data is still at
    layout 2, so cleanup keeps scanning, and the next `migrate --contract` completes it."""
    old = Layout1Build(settings)
    migrate_as(settings, MIGRATIONS)
    old.redis.mset({f"{old.prefix}meta:layout": 2, f"{old.prefix}meta:layout-min": 1})
    missing = done_task(30 * DAY, "written by the old build")
    old.put(missing)
    old.redis.set(f"{old.prefix}meta:layout-min", 3)  # where the killed run stopped

    assert not old.serves()
    assert as_build(settings, MIGRATIONS, lambda store: store.ping()) is None  # new pods serve
    halfway = run_job(job_env(settings), "cleanup", "--dry-run")
    assert halfway.code == 0, halfway.stderr
    assert (halfway.summary["index"], halfway.summary["expired"]) == ("scan", 1)

    again = migrate_as(settings, MIGRATIONS, contract=True)
    assert again.after == LayoutWindow(3, 3)
    assert completion_index(settings) == [(missing.completed_at, missing.id)]
