"""The admin processes (factor XII) as real subprocesses against a real Redis: cleanup, migrate,
export/import, their summaries, logs and exit codes."""

from __future__ import annotations

import json
import os
import select
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, TypeVar

import pytest
import redis
from fastapi.testclient import TestClient

from service.app import create_app
from service.domain import Status, Task, TaskCreate, TaskPatch, apply_patch, utcnow
from service.settings import Settings
from service.store import TaskStore, open_store
from service.store.base import LAYOUT_VERSION, LayoutWindow
from tests.support import (
    ROOT,
    LineReader,
    RedisServer,
    base_env,
    empty_cwd,
    free_port,
    new_task,
    with_store,
)

T = TypeVar("T")
SUMMARY_VALUES = (str, int, float, bool, type(None))


# --- running a job ------------------------------------------------------------------------


@dataclass
class JobRun:
    code: int
    stdout: str
    stderr: str
    peak_rss_kib: int = 0
    cpu_seconds: float = 0.0  # user + system

    @property
    def summary(self) -> dict[str, Any]:
        """The last line of stdout (of stderr for export): one flat JSON object."""
        lines = (self.stderr if self.is_export else self.stdout).strip().splitlines()
        assert lines, f"no summary line:\n{self.stdout}\n{self.stderr}"
        summary = json.loads(lines[-1])
        assert isinstance(summary, dict) and isinstance(summary.get("job"), str)
        assert all(isinstance(v, SUMMARY_VALUES) for v in summary.values()), "not flat"
        assert isinstance(summary["duration_ms"], int)
        return summary

    @property
    def is_export(self) -> bool:
        return '"job": "export"' in self.stderr.strip().rsplit("\n", 1)[-1]

    def log_lines(self) -> list[dict[str, Any]]:
        """stderr minus import's `line N:` reports and a failure's one-line message."""
        logs = []
        for line in self.stderr.splitlines():
            if line.startswith("{"):
                logs.append(json.loads(line))  # every other stderr line is a JSON log entry
        return logs


def job_env(settings: Settings, **extra: str) -> dict[str, str]:
    """Exactly the env a Job pod of this release would get."""
    return base_env(
        TASKS_STORE=settings.store,
        TASKS_REDIS_MODE=settings.redis_mode,
        TASKS_REDIS_URL=settings.redis_url,
        TASKS_REDIS_SHARDS=str(settings.redis_shards),
        TASKS_REDIS_KEY_PREFIX=settings.redis_key_prefix,
        **extra,
    )


# Peak RSS must be measured on a process that did not start as a copy of this (large) pytest
# process: Linux carries the pre-exec high-water mark over into the child's ru_maxrss. So a
# small wrapper forks and execs the job and reports the job's own ru_maxrss (and CPU time) to
# a file.
_MEASURE = """
import os, sys
pid = os.fork()
if pid == 0:
    os.execv(sys.executable, [sys.executable, "-m", "jobs", *sys.argv[2:]])
_, status, usage = os.wait4(pid, 0)
with open(sys.argv[1], "w") as out:
    out.write(f"{usage.ru_maxrss} {usage.ru_utime + usage.ru_stime}")
sys.exit(os.waitstatus_to_exitcode(status))
"""


def run_job(env: dict[str, str], *args: str, stdin: bytes = b"", timeout: float = 120) -> JobRun:
    """`python -m jobs ...`, its peak RSS (kernel's ru_maxrss of the job process alone) and
    CPU time."""
    with tempfile.NamedTemporaryFile(mode="r", suffix=".rss") as rss:
        result = subprocess.run(
            [sys.executable, "-c", _MEASURE, rss.name, *args],
            env={"PYTHONPATH": str(ROOT), **env},
            cwd=empty_cwd(),
            input=stdin,
            capture_output=True,
            timeout=timeout,
            check=False,
        )
        peak, cpu = (rss.read() or "0 0").split()
    return JobRun(
        result.returncode, result.stdout.decode(), result.stderr.decode(), int(peak), float(cpu)
    )


def start_job(env: dict[str, str], *args: str) -> subprocess.Popen[str]:
    """`python -m jobs ...` in the background, its stdout and stderr piped as text."""
    return subprocess.Popen(
        [sys.executable, "-m", "jobs", *args],
        env={"PYTHONPATH": str(ROOT), **env},
        cwd=empty_cwd(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def seed(settings: Settings, tasks: Sequence[Task], batch: int = 2000) -> None:
    async def put(store: TaskStore) -> None:
        for start in range(0, len(tasks), batch):
            await store.put_many(tasks[start : start + batch])

    with_store(settings, put)


def all_tasks(settings: Settings) -> list[Task]:
    async def read(store: TaskStore) -> list[Task]:
        found: list[Task] = []
        after = None
        while ids := await store.scan_ids(status=None, after=after, limit=1000):
            found += await store.get_many(ids)
            after = ids[-1]
        return found

    return with_store(settings, read)


def done_task(completed_ago: timedelta, title: str = "done", now: datetime | None = None) -> Task:
    return new_task(
        TaskCreate(title=title, status=Status.done), now=(now or utcnow()) - completed_ago
    )


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    """Every job test runs on a standalone Redis and on a Redis Cluster, except those that reach
    into the standalone server's keys themselves (older layouts, the raw lock key)."""
    if "settings" in metafunc.fixturenames:
        kinds = ["redis"] if "redis_server" in metafunc.fixturenames else ["redis", "cluster"]
        metafunc.parametrize("job_store", kinds)


@pytest.fixture
def settings(make_settings, job_store: str) -> Settings:  # type: ignore[no-untyped-def]
    """The store under a key prefix of this test's own."""
    return make_settings(job_store)  # type: ignore[no-any-return]


@pytest.fixture
def env(settings: Settings) -> dict[str, str]:
    return job_env(settings)


# --- cleanup ------------------------------------------------------------------------------


@pytest.mark.factor("XII")
def test_cleanup_deletes_done_tasks_past_the_retention_and_nothing_else(
    settings: Settings, env: dict[str, str]
) -> None:
    hour = timedelta(hours=1)
    minute = timedelta(minutes=1)
    expired = [done_task(hour + minute, "just past"), done_task(30 * hour, "long past")]
    kept = [
        done_task(hour - minute, "not yet"),
        new_task(TaskCreate(title="old but open"), now=utcnow() - 30 * hour),
        new_task(
            TaskCreate(title="old, in progress", status=Status.in_progress),
            now=utcnow() - 30 * hour,
        ),
    ]
    seed(settings, expired + kept)

    run = run_job(env, "cleanup", "--retention", "1h")

    assert run.code == 0, run.stderr
    assert run.summary == {
        "job": "cleanup",
        "retention_seconds": 3600,
        "dry_run": False,
        "index": "completion-time",
        "scanned": 2,  # the expired ones: the walk reads the completion-time index up to the cutoff
        "expired": 2,
        "deleted": 2,
        "changed": 0,
        "batches": 1,
        "duration_ms": run.summary["duration_ms"],
    }
    assert sorted(t.title for t in all_tasks(settings)) == sorted(t.title for t in kept)
    assert {e["msg"] for e in run.log_lines()} >= {"cleanup started", "cleanup done"}


@pytest.mark.factor("XII")
def test_cleanup_retention_defaults_to_the_setting_and_the_boundary_is_kept(
    settings: Settings,
    make_settings,  # type: ignore[no-untyped-def]
) -> None:
    from jobs.cleanup import purge

    now = utcnow()
    retention = timedelta(seconds=90)
    cutoff = now - retention
    at_cutoff = done_task(timedelta(0), "exactly at the cutoff", now=cutoff)
    just_before = done_task(timedelta(microseconds=1), "a microsecond older", now=cutoff)
    seed(settings, [at_cutoff, just_before])

    counts = with_store(settings, lambda store: purge(store, cutoff=cutoff))
    assert (counts.expired, counts.deleted) == (1, 1)
    assert [t.title for t in all_tasks(settings)] == ["exactly at the cutoff"]

    # Without --retention, TASKS_CLEANUP_RETENTION decides.
    seed(settings, [done_task(timedelta(seconds=100)), done_task(timedelta(seconds=80))])
    run = run_job(job_env(settings, TASKS_CLEANUP_RETENTION="90s"), "cleanup")
    assert run.code == 0, run.stderr
    assert (run.summary["retention_seconds"], run.summary["deleted"]) == (90, 2)
    assert len(all_tasks(settings)) == 1  # the one done 80 s ago


@pytest.mark.factor("XII")
def test_cleanup_dry_run_counts_and_changes_nothing(
    settings: Settings, env: dict[str, str], redis_server: RedisServer
) -> None:
    seed(settings, [done_task(timedelta(days=8)) for _ in range(5)] + [done_task(timedelta(0))])
    plain = redis.Redis.from_url(redis_server.url)
    before = {k: plain.dump(k) for k in plain.scan_iter(f"{settings.redis_key_prefix}*")}

    run = run_job(env, "cleanup", "--dry-run")

    assert run.code == 0, run.stderr
    assert (run.summary["dry_run"], run.summary["expired"], run.summary["deleted"]) == (True, 5, 0)
    after = {k: plain.dump(k) for k in plain.scan_iter(f"{settings.redis_key_prefix}*")}
    assert after == before


@pytest.mark.factor("XII")
def test_cleanup_purges_tens_of_thousands_in_batches_with_flat_memory(
    make_settings,  # type: ignore[no-untyped-def]
) -> None:
    """Peak RSS of the cleanup process with 10,000 and with 60,000 expired tasks: the batch walk
    keeps it flat. Holding just the ids of the extra 50,000 would add about 4 MiB (a 26-character
    str and a list slot each), and their tasks tens of MiB: the growth must stay under half the
    ids' cost."""
    small, large = 10_000, 60_000
    peaks = {}
    for count in (small, large):
        settings = make_settings("redis")
        old = utcnow() - timedelta(days=30)
        seed(settings, [done_task(timedelta(0), f"task {i}", now=old) for i in range(count)])
        run = run_job(job_env(settings), "cleanup")
        assert run.code == 0, run.stderr
        assert run.summary["deleted"] == count
        assert run.summary["batches"] == count // 500
        assert all_tasks(settings) == []
        peaks[count] = run.peak_rss_kib
    growth_mib = (peaks[large] - peaks[small]) / 1024
    ids_mib = (large - small) * (sys.getsizeof("0" * 26) + 8) / 2**20
    print(
        f"cleanup peak RSS: {small} tasks {peaks[small] / 1024:.1f} MiB, {large} tasks "
        f"{peaks[large] / 1024:.1f} MiB, growth {growth_mib:.1f} MiB (the ids alone: "
        f"{ids_mib:.1f} MiB)"
    )
    assert growth_mib < ids_mib / 2, peaks


@pytest.mark.factor("XII", "VIII")
def test_a_second_cleanup_while_one_runs_skips_and_exits_zero(
    settings: Settings, env: dict[str, str]
) -> None:
    seed(settings, [done_task(timedelta(days=30)) for _ in range(300)])
    # The pause lands while a call is in flight: a budget longer than the pause lets that call
    # finish after it (the default 1 s would expire during a slow second run and fail the first).
    first = start_job({**env, "TASKS_REDIS_TIMEOUT_SECONDS": "30"}, "cleanup", "--batch-size", "1")
    try:
        assert first.stderr is not None and first.stdout is not None
        log = LineReader(first.stderr)
        log.until(lambda line: json.loads(line)["msg"] == "cleanup started", timeout=60)
        # Paused while it holds the lock, however fast this machine would have finished it.
        first.send_signal(signal.SIGSTOP)
        try:
            second = run_job(env, "cleanup")
        finally:
            first.send_signal(signal.SIGCONT)
        assert first.wait(timeout=120) == 0
        out = first.stdout.read()
    finally:
        first.kill()
        first.wait()
    assert second.code == 0, second.stderr
    assert second.summary["skipped"] == "locked" and second.summary["deleted"] == 0
    assert "another cleanup holds the lock" in second.stderr
    assert json.loads(out.splitlines()[-1])["deleted"] == 300
    # The lock was released: the next run acts (and finds nothing left).
    third = run_job(env, "cleanup")
    assert third.code == 0 and "skipped" not in third.summary


@pytest.mark.factor("XII", "VIII")
@pytest.mark.parametrize("walk", ["completion-time", "scan"])
def test_a_task_reopened_or_edited_while_cleanup_runs_is_judged_as_it_is_when_deleted(
    settings: Settings, walk: str
) -> None:
    """API writes land after cleanup found the expired tasks, before it deletes them. The
    completion-time sweep checks and deletes in one step: the re-opened task has left the index
    and stays; the edited one, still done and completed long ago, goes. The scan reads, then
    deletes only what is unchanged since: both stay (counted as changed), for the next run."""
    from jobs.cleanup import purge

    old = [done_task(timedelta(days=30), f"old {i}") for i in range(10)]
    seed(settings, old)
    reopened, edited = old[4], old[7]

    class ChangeMidRun:
        """The store, with the API's writes landing once, between finding and deleting."""

        def __init__(self, inner: TaskStore, writer: TaskStore) -> None:
            self.inner, self.writer, self.written = inner, writer, False

        def __getattr__(self, name: str) -> Any:
            return getattr(self.inner, name)

        async def write(self) -> None:
            if not self.written:
                self.written = True
                await self.writer.patch(reopened.id, TaskPatch(status=Status.todo))
                await self.writer.patch(edited.id, TaskPatch(title="kept"))

        async def get_many(self, ids: Sequence[str]) -> list[Task]:
            read = await self.inner.get_many(ids)
            await self.write()
            return read

        async def delete_completed(self, **batch: Any) -> Any:
            await self.write()
            return await self.inner.delete_completed(**batch)

    async def scenario(store: TaskStore) -> Any:
        if walk == "scan":  # data mid-upgrade: builds that ignore the index may still write
            await store.set_layout(LayoutWindow(LAYOUT_VERSION - 1, 1))
        writer = open_store(settings)
        try:
            racing = ChangeMidRun(store, writer)
            return await purge(racing, cutoff=utcnow() - timedelta(days=7))  # type: ignore[arg-type]
        finally:
            await writer.close()

    counts = with_store(settings, scenario)
    assert counts.index == walk
    survivors = sorted(all_tasks(settings), key=lambda t: t.title)
    if walk == "completion-time":
        assert (counts.scanned, counts.expired, counts.deleted, counts.changed) == (9, 9, 9, 0)
        assert [(t.id, t.status) for t in survivors] == [(reopened.id, Status.todo)]
    else:
        assert (counts.expired, counts.deleted, counts.changed) == (10, 8, 2)
        assert [(t.id, t.status, t.title) for t in survivors] == [
            (edited.id, Status.done, "kept"),  # still done, completed long ago: the next run's
            (reopened.id, Status.todo, reopened.title),
        ]


# --- migrate ------------------------------------------------------------------------------


def write_layout_0(server: RedisServer, prefix: str, tasks: Sequence[Task]) -> None:
    """Tasks written the old way: JSON strings and a plain set of ids, no layout key."""
    plain = redis.Redis.from_url(server.url)
    with plain.pipeline() as pipe:
        for task in tasks:
            pipe.set(f"{prefix}task:{task.id}", task.model_dump_json())
            pipe.sadd(f"{prefix}ids", task.id)
        pipe.execute()


@pytest.mark.factor("XII")
def test_migrate_converts_a_layout_0_store_and_a_second_run_is_a_no_op(
    settings: Settings, env: dict[str, str], redis_server: RedisServer
) -> None:
    tasks = [
        new_task(TaskCreate(title=f"old {i}", status=list(Status)[i % 3])) for i in range(1200)
    ]
    write_layout_0(redis_server, settings.redis_key_prefix, tasks)
    with TestClient(create_app(settings)) as client:
        ready = client.get("/readyz")
        assert ready.status_code == 503
        assert "data layout 0 is older than this build" in ready.json()["detail"]

    first = run_job(env, "migrate")
    second = run_job(env, "migrate")
    contract = run_job(env, "migrate", "--contract")

    figures = ("from", "to", "applied", "converted", "pending_contract")
    assert first.code == 0, first.stderr
    assert {k: first.summary[k] for k in figures} == {
        "from": 0,
        "to": LAYOUT_VERSION - 1,  # the last, a contraction, waits for --contract
        "applied": 2,
        "converted": 1200 + 400,  # every task, then the done ones indexed by completion time
        "pending_contract": 1,
    }
    assert second.code == 0, second.stderr
    assert {k: second.summary[k] for k in figures} == {
        "from": LAYOUT_VERSION - 1,
        "to": LAYOUT_VERSION - 1,
        "applied": 0,
        "converted": 0,
        "pending_contract": 1,
    }
    assert contract.code == 0, contract.stderr
    assert {k: contract.summary[k] for k in figures} == {
        "from": LAYOUT_VERSION - 1,
        "to": LAYOUT_VERSION,
        "applied": 1,
        "converted": 0,  # nothing written since the expansion
        "pending_contract": 0,
    }
    plain = redis.Redis.from_url(redis_server.url, decode_responses=True)
    assert not plain.exists(f"{settings.redis_key_prefix}ids")
    with TestClient(create_app(settings)) as client:
        assert client.get("/readyz").status_code == 200
        done = client.get("/v1/tasks?status=done&limit=100").json()["items"]
        assert len(done) == 100 and all(t["status"] == "done" for t in done)
        one = tasks[7]
        assert client.get(f"/v1/tasks/{one.id}").json() == json.loads(one.model_dump_json())
    assert sorted(all_tasks(settings), key=lambda t: t.id) == sorted(tasks, key=lambda t: t.id)


@pytest.mark.factor("XII", "VIII")
def test_concurrent_migrates_apply_the_migration_once(
    settings: Settings, env: dict[str, str], redis_server: RedisServer
) -> None:
    write_layout_0(
        redis_server,
        settings.redis_key_prefix,
        [new_task(TaskCreate(title="x")) for _ in range(3000)],
    )
    procs = [start_job(env, "migrate") for _ in range(2)]
    summaries = []
    for proc in procs:
        out, err = proc.communicate(timeout=120)
        assert proc.returncode == 0, err
        summaries.append(json.loads(out.splitlines()[-1]))
    assert sorted(s["applied"] for s in summaries) == [0, 2]
    assert sum(s["converted"] for s in summaries) == 3000
    assert len(all_tasks(settings)) == 3000


@pytest.mark.factor("XII")
def test_migrate_records_the_layout_of_an_empty_store(
    settings: Settings, env: dict[str, str], redis_server: RedisServer
) -> None:
    run = run_job(env, "migrate")
    assert run.code == 0, run.stderr
    summary = run.summary
    assert (summary["from"], summary["to"], summary["applied"]) == (None, LAYOUT_VERSION, 0)
    # Nothing to contract: no older build ever wrote this data.
    assert summary["min_compatible"] == LAYOUT_VERSION and summary["pending_contract"] == 0
    plain = redis.Redis.from_url(redis_server.url, decode_responses=True)
    assert plain.get(f"{settings.redis_key_prefix}meta:layout") == str(LAYOUT_VERSION)
    assert plain.get(f"{settings.redis_key_prefix}meta:layout-min") == str(LAYOUT_VERSION)


@pytest.mark.factor("XII", "IX")
def test_jobs_of_an_older_build_run_on_data_a_newer_build_expanded(
    settings: Settings, env: dict[str, str], redis_server: RedisServer
) -> None:
    """After a newer build's expansion (layout N + 1 that still admits N) this build's jobs
    work as before, and its migrate (an upgrade back to this image) changes nothing."""
    plain = redis.Redis.from_url(redis_server.url, decode_responses=True)
    prefix = settings.redis_key_prefix
    keys, window = [f"{prefix}meta:layout", f"{prefix}meta:layout-min"], [LAYOUT_VERSION + 1, 1]
    plain.mset(dict(zip(keys, window, strict=True)))
    for args in (["migrate"], ["migrate", "--contract"], ["cleanup"]):
        run = run_job(env, *args)
        assert run.code == 0, (args, run.stderr)
        if args[0] == "migrate":
            assert (run.summary["from"], run.summary["to"], run.summary["applied"]) == (
                LAYOUT_VERSION + 1,
                LAYOUT_VERSION + 1,
                0,
            )
    assert plain.mget(keys) == [str(v) for v in window]


@pytest.mark.factor("XII", "IX")
def test_jobs_refuse_a_layout_newer_than_the_build(
    settings: Settings, env: dict[str, str], redis_server: RedisServer
) -> None:
    plain = redis.Redis.from_url(redis_server.url, decode_responses=True)
    plain.set(f"{settings.redis_key_prefix}meta:layout", LAYOUT_VERSION + 1)
    newer = f"data layout {LAYOUT_VERSION + 1} is newer than this build understands"
    for command in ("migrate", "cleanup", "import"):
        run = run_job(env, command)
        assert run.code == 1, (command, run.stderr)
        assert newer in run.summary["error"]
    assert plain.get(f"{settings.redis_key_prefix}meta:layout") == str(LAYOUT_VERSION + 1)


@pytest.mark.factor("XII", "IV")
def test_migrate_waits_for_redis_to_come_up(make_settings) -> None:  # type: ignore[no-untyped-def]
    server = RedisServer()  # not started yet: the hook Job runs as Redis is being created
    settings = make_settings("redis", redis_url=server.url)
    proc = start_job(job_env(settings), "migrate", "--wait", "60")
    try:
        assert proc.stderr is not None and proc.stdout is not None
        first_log = json.loads(LineReader(proc.stderr).next(timeout=60))
        assert first_log["msg"] == "waiting for the store"
        server.start()
        assert proc.wait(timeout=60) == 0
        out = proc.stdout.read()
        assert json.loads(out.splitlines()[-1])["to"] == LAYOUT_VERSION
    finally:
        proc.kill()
        proc.wait()
        server.stop()


@pytest.mark.factor("XII", "IV")
def test_migrate_gives_up_after_its_wait_with_exit_1(make_settings) -> None:  # type: ignore[no-untyped-def]
    settings = make_settings("redis", redis_url=f"redis://127.0.0.1:{free_port()}/0")
    started = time.monotonic()
    run = run_job(job_env(settings), "migrate", "--wait", "1")
    assert run.code == 1
    assert time.monotonic() - started < 10
    assert "did not answer in time" in run.summary["error"]


# --- export / import ----------------------------------------------------------------------


def varied_tasks() -> list[Task]:
    now = utcnow()
    tasks = [
        new_task(TaskCreate(title="plain"), now=now),
        new_task(TaskCreate(title="ünïcödé ✓", description='two\nlines "quoted"'), now=now),
        new_task(
            TaskCreate(title="whole second", status=Status.in_progress),
            now=now.replace(microsecond=0),
        ),
        new_task(TaskCreate(title="done", status=Status.done), now=now - timedelta(days=3)),
    ]
    edited = apply_patch(tasks[0], TaskPatch(title="edited later"), now=now + timedelta(hours=1))
    return [edited, *tasks[1:], *(new_task(TaskCreate(title=f"n{i}")) for i in range(1100))]


@pytest.mark.factor("XII")
def test_export_streams_each_batch_before_it_reads_the_next(
    make_settings,  # type: ignore[no-untyped-def]
    private_redis: RedisServer,
) -> None:
    """While the reader of its stdout lags, export reads no further: Redis frozen after the first
    line, only the lines already read from Redis come out, then the job fails on the frozen store.
    A job that read every task before writing would still print them all and succeed."""
    settings = make_settings("redis", redis_url=private_redis.url)
    count = 2000
    tasks = [new_task(TaskCreate(title=f"t{i}", description="d" * 1000)) for i in range(count)]
    seed(settings, tasks)
    job = subprocess.Popen(
        [sys.executable, "-m", "jobs", "export", "--batch-size", "10"],
        env={"PYTHONPATH": str(ROOT), **job_env(settings, TASKS_REDIS_TIMEOUT_SECONDS="1")},
        cwd=empty_cwd(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    try:
        assert job.stdout is not None
        # One chunk of stdout, not more: the pipe (64 KiB) then fills, and a streaming job waits.
        ready, _, _ = select.select([job.stdout], [], [], 60)
        assert ready, "no output within 60 s"
        first = os.read(job.stdout.fileno(), 4096)
        assert b"\n" in first
        private_redis.freeze()
        rest, err = job.communicate(timeout=60)
    finally:
        private_redis.thaw()
        job.kill()
        job.wait()
    lines = (first + rest).decode().splitlines()
    assert job.returncode == 1, err.decode()[-2000:]
    assert 0 < len(lines) < count / 4, len(lines)
    assert [Task.model_validate_json(line).title for line in lines] == [
        t.title for t in sorted(tasks, key=lambda t: t.id)[: len(lines)]
    ]


@pytest.mark.factor("XII")
def test_export_flush_import_round_trips_every_field(
    settings: Settings, env: dict[str, str], redis_server: RedisServer
) -> None:
    tasks = varied_tasks()
    seed(settings, tasks)

    exported = run_job(env, "export", "--batch-size", "300")
    assert exported.code == 0, exported.stderr
    assert exported.summary == {
        "job": "export",
        "exported": len(tasks),
        "duration_ms": exported.summary["duration_ms"],
    }
    lines = exported.stdout.splitlines()
    assert len(lines) == len(tasks)  # stdout is the data alone
    assert [Task.model_validate_json(line) for line in lines] == sorted(tasks, key=lambda t: t.id)

    plain = redis.Redis.from_url(redis_server.url)
    for key in plain.scan_iter(f"{settings.redis_key_prefix}*"):
        plain.delete(key)
    imported = run_job(env, "import", stdin=exported.stdout.encode())

    assert imported.code == 0, imported.stderr
    assert imported.summary["imported"] == len(tasks) and imported.summary["invalid"] == 0
    assert sorted(all_tasks(settings), key=lambda t: t.id) == sorted(tasks, key=lambda t: t.id)
    again = run_job(env, "export")
    assert again.stdout == exported.stdout  # byte for byte
    # And the API serves the imported tasks, with their indexes.
    with TestClient(create_app(settings)) as client:
        done = client.get("/v1/tasks?status=done").json()["items"]
        assert [t["title"] for t in done] == ["done"]


@pytest.mark.factor("XII")
def test_import_reports_each_bad_line_and_exits_1(settings: Settings, env: dict[str, str]) -> None:
    good = new_task(TaskCreate(title="good"))
    other = new_task(TaskCreate(title="also good"))
    record = json.loads(good.model_dump_json())
    lines = [
        good.model_dump_json(),
        "{not json",
        json.dumps({**record, "id": "not-an-id"}),
        json.dumps({**record, "status": "done"}),  # done without completed_at
        json.dumps({k: v for k, v in record.items() if k != "title"}),
        json.dumps({**record, "created_at": "2026-01-01T00:00:00"}),  # no time zone
        "",
        other.model_dump_json(),
        json.dumps([1, 2]),
    ]
    data = ("\n".join(lines) + "\n").encode()

    dry = run_job(env, "import", "--dry-run", stdin=data)
    assert dry.code == 1
    assert all_tasks(settings) == []
    run = run_job(env, "import", stdin=data)
    assert run.code == 1

    for result in (dry, run):
        reports = [x for x in result.stderr.splitlines() if x.startswith("line ")]
        assert [r.split(":")[0] for r in reports] == [
            "line 2",
            "line 3",
            "line 4",
            "line 5",
            "line 6",
            "line 9",
        ]
        assert "id: String should match pattern" in reports[1]
        assert "completed_at must be set when status is done" in reports[2]
        assert reports[3].startswith("line 5: title: Field required")
        assert "timezone" in reports[4]
        assert result.summary["invalid"] == 6 and result.summary["valid"] == 2
        assert "6 invalid lines" in result.summary["error"]
    assert dry.summary["imported"] == 0 and dry.summary["dry_run"] is True
    assert run.summary["imported"] == 2  # the good lines are upserted; re-running is safe
    assert sorted(t.title for t in all_tasks(settings)) == ["also good", "good"]


@pytest.mark.factor("XII")
def test_import_dry_run_of_a_valid_file_writes_nothing_and_exits_0(
    settings: Settings, env: dict[str, str]
) -> None:
    data = b"".join(
        new_task(TaskCreate(title=str(i))).model_dump_json().encode() + b"\n" for i in range(3)
    )
    run = run_job(env, "import", "--dry-run", stdin=data)
    assert run.code == 0, run.stderr
    assert (run.summary["valid"], run.summary["imported"]) == (3, 0)
    assert all_tasks(settings) == []


# --- usage, config and failure ------------------------------------------------------------


@pytest.mark.factor("XII", "III")
@pytest.mark.parametrize(
    ("args", "extra_env", "message"),
    [
        (["cleanup"], {"TASKS_STORE": "memory"}, "TASKS_STORE is 'memory'"),
        (["export"], {"TASKS_STORE": "memory"}, "no shared tasks to act on"),
        (
            ["cleanup", "--retention", "7 weeks"],
            {},
            "config error: --retention: must be a positive",
        ),
        (["cleanup"], {"TASKS_CLEANUP_RETENTION": "0d"}, "config error: TASKS_CLEANUP_RETENTION:"),
        (["migrate"], {"TASKS_REDIS_URL": "http://x"}, "config error: TASKS_REDIS_URL: scheme"),
    ],
    ids=["memory-store", "memory-store-export", "bad-flag-value", "bad-env", "bad-url"],
)
def test_bad_config_exits_2_with_a_message_and_a_summary(
    env: dict[str, str], args: list[str], extra_env: dict[str, str], message: str
) -> None:
    run = run_job({**env, **extra_env}, *args)
    assert run.code == 2
    assert message in run.stderr
    assert message in run.summary["error"]


@pytest.mark.factor("XII")
@pytest.mark.parametrize(
    "args",
    [
        [],
        ["nope"],
        ["cleanup", "--no-such-flag"],
        ["cleanup", "--batch-size", "0"],
        ["migrate", "--wait", "-1"],
    ],
)
def test_bad_usage_exits_2(env: dict[str, str], args: list[str]) -> None:
    run = run_job(env, *args)
    assert run.code == 2
    assert "usage: python -m jobs" in run.stderr


@pytest.mark.factor("XII")
def test_help_lists_every_command(env: dict[str, str]) -> None:
    run = run_job(env, "--help")
    assert run.code == 0
    for command in ("cleanup", "migrate", "export", "import"):
        assert command in run.stdout


@pytest.mark.factor("XII", "IV")
@pytest.mark.parametrize("command", ["cleanup", "export", "import"])
def test_an_unreachable_store_fails_with_exit_1(make_settings, command: str) -> None:  # type: ignore[no-untyped-def]
    settings = make_settings("redis", redis_url=f"redis://127.0.0.1:{free_port()}/0")
    run = run_job(job_env(settings), command)
    assert run.code == 1
    assert run.summary["error"].startswith("store unavailable")


@pytest.mark.factor("XII", "VIII")
def test_cleanup_skips_while_the_prefixed_lock_key_is_held(
    settings: Settings, env: dict[str, str], redis_server: RedisServer
) -> None:
    """The lock is `<prefix>lock:cleanup`, as the README tells operators."""
    seed(settings, [done_task(timedelta(days=30))])
    lock = f"{settings.redis_key_prefix}lock:cleanup"
    plain = redis.Redis.from_url(redis_server.url, decode_responses=True)
    plain.set(lock, "held-by-another-run", ex=60)

    held = run_job(env, "cleanup")
    assert held.code == 0 and held.summary["skipped"] == "locked", held.stderr
    assert len(all_tasks(settings)) == 1

    plain.delete(lock)
    free = run_job(env, "cleanup")
    assert free.code == 0 and free.summary["deleted"] == 1, free.stderr
    assert plain.exists(lock) == 0, "released after the run"
