"""Scale benchmark: a list page with 10k and with 1M tasks, and cleanup of 1M done tasks.

Loads two stores into one throwaway redis-server (under two key prefixes, through the store's
own `put_many` batches): 10k tasks and 1M, every one done, 90% of them completed 30 to 60 days
ago (expired under the default 7-day retention), the rest in the last hour. Then:

- a service on each store, loaded with wrk in alternating rounds (as bench/run.py does): the
  p50 of `GET /v1/tasks?limit=50` and of `?status=done&limit=50` at each size, and their ratio;
- `python -m jobs cleanup` on each store: deletions per second (by the job's own duration_ms)
  and the job's peak RSS (the kernel's ru_maxrss of the job process alone, as the tests measure
  it); then again on the 1M store, now with nothing expired among its 100k done tasks (what it
  reads when there is nothing to do, and the RSS it starts with), and once more as it ran
  before the completion-time index (the data's layout set to mid-upgrade: it reads every done
  task), for comparison;
- the baseline for the deletion rate: the 10k store loaded again, and cleaned up by the walk
  that reads each batch, then deletes what is unchanged (the path for data mid-upgrade, and how
  every run deleted before `delete_completed`).

Prints figures; never fails on them. Runs in a few minutes (BENCH_TASKS sets the large size).
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time
from datetime import timedelta
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.run import ROUNDS, combine, start_service, wrk  # noqa: E402
from service.domain import Status, Task, utcnow  # noqa: E402
from service.settings import Settings  # noqa: E402
from service.store import open_store  # noqa: E402
from service.store.base import LayoutWindow  # noqa: E402
from tests.support import RedisServer, base_env  # noqa: E402
from tests.test_jobs import run_job  # noqa: E402

SMALL = 10_000
LARGE = int(os.environ.get("BENCH_TASKS", "1000000"))
EXPIRED_SHARE = 0.9
BATCH = 5_000  # tasks per put_many while loading
PAGES = {"list": "/v1/tasks?limit=50", "list done": "/v1/tasks?status=done&limit=50"}


def tasks(count: int, start: int) -> list[Task]:
    """Done tasks `start` .. `start + count`: the first EXPIRED_SHARE of every 10 completed
    30 to 60 days ago, the rest in the last hour."""
    now = utcnow()
    made = []
    for n in range(start, start + count):
        if n % 10 < EXPIRED_SHARE * 10:
            at = now - timedelta(days=30, seconds=n % 2_592_000, microseconds=n % 997)
        else:
            at = now - timedelta(seconds=n % 3600, microseconds=n % 991)
        made.append(
            Task.model_construct(
                id=f"{n:026d}",  # ids in the service's alphabet, in load order
                title=f"task {n}",
                description="",
                status=Status.done,
                created_at=at,
                updated_at=at,
                completed_at=at,
            )
        )
    return made


def settings(env: dict[str, str]) -> Settings:
    """The settings a job would read from `env` (a batch of thousands may take a while)."""
    return Settings(
        store="redis",
        redis_url=env["TASKS_REDIS_URL"],
        redis_key_prefix=env["TASKS_REDIS_KEY_PREFIX"],
        redis_timeout_seconds=30,
    )


def load(env: dict[str, str], count: int) -> float:
    """Put `count` tasks through the store's own batches; the seconds it took."""

    async def put() -> None:
        store = open_store(settings(env))
        try:
            await store.ping()
            for start in range(0, count, BATCH):
                await store.put_many(tasks(min(BATCH, count - start), start))
        finally:
            await store.close()

    started = time.monotonic()
    asyncio.run(put())
    return time.monotonic() - started


def set_layout(env: dict[str, str], window: LayoutWindow) -> None:
    async def record() -> None:
        store = open_store(settings(env))
        try:
            await store.set_layout(window)
        finally:
            await store.close()

    asyncio.run(record())


def redis_cpu(server: RedisServer) -> float:
    cpu = server.client().info("cpu")
    return float(cpu["used_cpu_user"]) + float(cpu["used_cpu_sys"])


def cleanup(env: dict[str, str], server: RedisServer) -> dict[str, float | str]:
    redis_before = redis_cpu(server)
    job = run_job(env, "cleanup", timeout=3600)
    if job.code != 0:
        raise SystemExit(f"cleanup failed:\n{job.stderr[-2000:]}")
    summary = job.summary
    seconds = summary["duration_ms"] / 1000
    deleted = max(summary["deleted"], 1)
    return {
        "index": summary["index"],
        "scanned": summary["scanned"],
        "deleted": summary["deleted"],
        "seconds": seconds,
        "rate": summary["deleted"] / seconds if seconds else 0.0,
        "peak_mib": job.peak_rss_kib / 1024,
        "job_us": job.cpu_seconds / deleted * 1e6,
        "redis_us": (redis_cpu(server) - redis_before) / deleted * 1e6,
    }


def main() -> None:
    redis_server = RedisServer()
    redis_server.start()
    procs: list[subprocess.Popen[bytes]] = []
    try:
        envs = {
            size: base_env(
                TASKS_STORE="redis",
                TASKS_REDIS_URL=redis_server.url,
                TASKS_REDIS_KEY_PREFIX=f"bench{size}:",
                TASKS_LOG_LEVEL="warning",
            )
            for size in (SMALL, LARGE)
        }
        loaded = {size: load(env, size) for size, env in envs.items()}
        used_mb = redis_server.client().info("memory")["used_memory"] / 2**20

        services = {}
        for size, env in envs.items():
            service, _, url = start_service(
                {k: v for k, v in env.items() if not k.startswith("TASKS_")},
                TASKS_REDIS_URL=redis_server.url,
                TASKS_REDIS_KEY_PREFIX=env["TASKS_REDIS_KEY_PREFIX"],
                TASKS_LOG_LEVEL="warning",
            )
            procs.append(service)
            services[size] = (service.pid, url)
        rounds: dict[tuple[str, int], list[dict[str, float]]] = {}
        for page, path in PAGES.items():
            for pid, url in services.values():
                wrk(url + path, pid, 1)  # warm up
            for _ in range(ROUNDS):  # alternate, so both see the same machine load on average
                for size, (pid, url) in services.items():
                    rounds.setdefault((page, size), []).append(wrk(url + path, pid))
        pages = {key: combine(figures) for key, figures in rounds.items()}
        for proc in procs:
            proc.terminate()
            proc.wait(timeout=30)
        procs.clear()

        runs = {f"{SMALL:,} done, 90% expired": cleanup(envs[SMALL], redis_server)}
        load(envs[SMALL], SMALL)  # the expired ones back, for the baseline: read, then delete
        set_layout(envs[SMALL], LayoutWindow(2, 1))
        runs[f"{SMALL:,} done, 90% expired, scan"] = cleanup(envs[SMALL], redis_server)
        runs[f"{LARGE:,} done, 90% expired"] = cleanup(envs[LARGE], redis_server)
        left = LARGE - int(runs[f"{LARGE:,} done, 90% expired"]["deleted"])
        runs[f"{left:,} done, none expired"] = cleanup(envs[LARGE], redis_server)
        set_layout(envs[LARGE], LayoutWindow(2, 1))  # as mid-upgrade: the index not complete
        runs[f"{left:,} done, none expired, scan"] = cleanup(envs[LARGE], redis_server)
    finally:
        for proc in procs:
            proc.terminate()
            proc.wait(timeout=30)
        redis_server.stop()

    print(f"\nloaded {SMALL:,} tasks in {loaded[SMALL]:.1f}s, {LARGE:,} in {loaded[LARGE]:.1f}s")
    print(f"redis used_memory with both: {used_mb:.0f} MiB\n")
    print(f"list pages: wrk, median of {ROUNDS} alternating runs per size")
    print(f"{'page':<12}{'p50 10k ms':>12}{f'p50 {LARGE // 1000}k ms':>14}{'ratio':>8}")
    for page in PAGES:
        small, large = pages[(page, SMALL)]["p50"], pages[(page, LARGE)]["p50"]
        print(f"{page:<12}{small:>12.2f}{large:>14.2f}{large / small:>7.2f}x")
    print(f"\n{'cleanup of':<36}{'index':>17}{'scanned':>9}{'deleted':>9}{'s':>8}{'del/s':>9}"
          f"{'peak MiB':>10}{'CPU us/del: job':>17}{'redis':>7}")  # fmt: skip
    for name, r in runs.items():
        cpu = f"{r['job_us']:>17.1f}{r['redis_us']:>7.1f}" if r["deleted"] else ""
        print(
            f"{name:<36}{r['index']:>17}{r['scanned']:>9}{r['deleted']:>9}{r['seconds']:>8.2f}"
            f"{r['rate']:>9.0f}{r['peak_mib']:>10.1f}{cpu}"
        )
    idle = runs[f"{left:,} done, none expired"]["peak_mib"]
    big = runs[f"{LARGE:,} done, 90% expired"]["peak_mib"]
    print(
        f"\ncleanup peak RSS growth, {LARGE:,} tasks over a run with nothing to delete: "
        f"{float(big) - float(idle):+.1f} MiB"
    )
    big_run = runs[f"{LARGE:,} done, 90% expired"]
    print(
        "cleanup deletions per second with a core each for the job and Redis (by the CPU time "
        f"they used): {1e6 / max(float(big_run['job_us']), float(big_run['redis_us'])):.0f}"
    )
    swept, scanned = (
        runs[f"{SMALL:,} done, 90% expired"],
        runs[f"{SMALL:,} done, 90% expired, scan"],
    )
    print(
        f"cleanup deletions per second, {SMALL:,} tasks, the store's sweep vs reading each batch "
        f"then deleting: {float(swept['rate']) / float(scanned['rate']):.2f}x"
    )
    print(f"load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs")


if __name__ == "__main__":
    main()
