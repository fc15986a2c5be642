"""The admin processes (factor XII) in cluster mode, as real subprocesses against the session's
Redis Cluster: cleanup walks every shard in batches, migrate records the layout and the shard
count, locks hold, and export/import moves the data between a standalone Redis and a cluster."""

from __future__ import annotations

from datetime import timedelta

import pytest

from service.domain import TaskCreate, utcnow
from service.settings import Settings
from service.store.base import LAYOUT_VERSION
from tests.support import new_task, with_store
from tests.test_jobs import all_tasks, done_task, job_env, run_job, seed, varied_tasks

pytestmark = [pytest.mark.factor("XII"), pytest.mark.timeout(300)]


@pytest.fixture
def settings(make_settings) -> Settings:  # type: ignore[no-untyped-def]
    """The Redis store in cluster mode under a key prefix of this test's own."""
    return make_settings("cluster")  # type: ignore[no-any-return]


def test_cleanup_walks_every_shard_in_batches_and_deletes_only_the_expired(
    settings: Settings,
) -> None:
    old = utcnow() - timedelta(days=30)
    expired = [done_task(timedelta(0), f"old {n}", now=old) for n in range(1200)]
    recent = [done_task(timedelta(hours=1), f"recent {n}") for n in range(100)]
    todo = [new_task(TaskCreate(title=f"todo {n}")) for n in range(100)]
    seed(settings, expired + recent + todo)

    run = run_job(job_env(settings), "cleanup", "--batch-size", "100")

    assert run.code == 0, run.stderr
    summary = run.summary
    assert summary["index"] == "completion-time"  # the recent ones are never read
    assert (summary["scanned"], summary["expired"], summary["deleted"]) == (1200, 1200, 1200)
    # A batch spans the shards: at most 100 tasks (6 from each of the 16), the oldest first.
    assert summary["batches"] >= 12
    left = {t.id for t in all_tasks(settings)}
    assert left == {t.id for t in recent + todo}


def test_cleanup_memory_stays_flat_over_the_shards(make_settings) -> None:  # type: ignore[no-untyped-def]
    peaks = {}
    for count in (5_000, 20_000):
        settings = make_settings("cluster")
        old = utcnow() - timedelta(days=30)
        seed(settings, [done_task(timedelta(0), f"task {i}", now=old) for i in range(count)])
        run = run_job(job_env(settings), "cleanup")
        assert run.code == 0, run.stderr
        assert run.summary["deleted"] == count and all_tasks(settings) == []
        peaks[count] = run.peak_rss_kib
    growth_mib = (peaks[20_000] - peaks[5_000]) / 1024
    print(
        f"cluster cleanup peak RSS: 5k tasks {peaks[5_000] / 1024:.1f} MiB, 20k tasks "
        f"{peaks[20_000] / 1024:.1f} MiB, growth {growth_mib:.1f} MiB"
    )
    assert growth_mib < 4, peaks


def test_a_cleanup_finds_the_lock_held_and_skips(settings: Settings) -> None:
    old = utcnow() - timedelta(days=30)
    seed(settings, [done_task(timedelta(0), "old", now=old)])
    token = with_store(settings, lambda store: store.acquire_lock("cleanup", 60))
    assert token is not None

    run = run_job(job_env(settings), "cleanup")

    assert run.code == 0, run.stderr
    assert run.summary["skipped"] == "locked" and run.summary["deleted"] == 0
    assert len(all_tasks(settings)) == 1


def test_migrate_records_the_layout_and_the_shard_count_and_refuses_another(
    settings: Settings,
) -> None:
    first = run_job(job_env(settings), "migrate", "--wait", "10")
    assert first.code == 0, first.stderr
    assert first.summary["to"] == LAYOUT_VERSION and first.summary["applied"] == 0
    again = run_job(job_env(settings), "migrate", "--wait", "10")
    assert again.code == 0 and again.summary["from"] == LAYOUT_VERSION

    other = run_job(job_env(settings.model_copy(update={"redis_shards": 8})), "migrate")
    assert other.code == 1
    assert "TASKS_REDIS_SHARDS says 8" in other.summary["error"]


def test_export_from_standalone_import_into_a_cluster_and_back_round_trips_byte_for_byte(
    make_settings,  # type: ignore[no-untyped-def]
) -> None:
    """The documented way between modes: the exports of either side are the same bytes."""
    standalone: Settings = make_settings("redis")
    cluster: Settings = make_settings("cluster")
    tasks = varied_tasks()
    seed(standalone, tasks)

    exported = run_job(job_env(standalone), "export", "--batch-size", "50")
    assert exported.code == 0, exported.stderr
    imported = run_job(job_env(cluster), "import", stdin=exported.stdout.encode())
    assert imported.code == 0, imported.stderr
    assert imported.summary["imported"] == len(tasks)
    from_cluster = run_job(job_env(cluster), "export", "--batch-size", "7")
    assert from_cluster.code == 0, from_cluster.stderr
    assert from_cluster.stdout == exported.stdout  # byte for byte

    back: Settings = make_settings("redis", redis_key_prefix=f"{standalone.redis_key_prefix}back:")
    assert run_job(job_env(back), "import", stdin=from_cluster.stdout.encode()).code == 0
    assert run_job(job_env(back), "export").stdout == exported.stdout
    print(f"standalone -> cluster -> standalone: {len(tasks)} tasks, {len(exported.stdout)} bytes")
