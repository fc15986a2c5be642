"""The Redis store in cluster mode (TASKS_REDIS_MODE=cluster) on a real Redis Cluster of
redis-server processes: keys spread over the primaries, a failover under load, a shard down, a
slot migration under load, a changed shard count. (The whole API and store suites also run on
the session's cluster: `store_kind` "cluster".)"""

from __future__ import annotations

import asyncio
import threading
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import httpx2
import pytest
from fastapi.testclient import TestClient
from redis.crc import key_slot

from service.app import create_app
from service.domain import TaskCreate, new_fields
from service.settings import Settings
from service.store import TaskStore
from service.store.base import ShardCountMismatch
from service.store.redis import RedisKeys, shard_tag
from tests.conftest import StartService
from tests.support import RedisClusterServers, ServiceProcess, free_port, wait_until, with_store

pytestmark = pytest.mark.timeout(300)
PROBLEM = "application/problem+json"


@pytest.fixture
def private_cluster() -> Iterator[RedisClusterServers]:
    """A Redis Cluster of this test's own, which it may fail over, break and reshard."""
    cluster = RedisClusterServers()
    cluster.start()
    yield cluster
    cluster.stop()


def cluster_service(start: StartService, cluster: RedisClusterServers) -> ServiceProcess:
    return start(
        TASKS_STORE="redis",
        TASKS_REDIS_MODE="cluster",
        TASKS_REDIS_URL=cluster.url,
        TASKS_REDIS_TIMEOUT_SECONDS="1",
    )


# --- load: what clients saw ---------------------------------------------------------------


@dataclass
class Load:
    """Concurrent creates, each read back, and list pages, against a service, from a thread of
    its own until stopped. Counts every answer by status; remembers every acknowledged (201)
    create; `reads` are ids to GET as well."""

    base_url: str
    workers: int = 8
    reads: list[str] = field(default_factory=list)
    statuses: Counter[int] = field(default_factory=Counter)
    acknowledged: list[str] = field(default_factory=list)
    unexpected: list[str] = field(default_factory=list)
    reasons: Counter[str] = field(default_factory=Counter)  # of the 503s
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    def __enter__(self) -> Load:
        self._thread = threading.Thread(target=asyncio.run, args=(self._run(),), daemon=True)
        self._thread.start()
        wait_until(lambda: self.requests >= 20, timeout=30, what="load started")
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        assert self._thread is not None
        self._thread.join(timeout=60)

    @property
    def requests(self) -> int:
        return sum(dict(self.statuses).values())  # a copy: the load thread may be counting

    @property
    def failures(self) -> int:
        return self.requests - sum(n for status, n in self.statuses.items() if status < 300)

    async def _run(self) -> None:
        async with httpx2.AsyncClient(base_url=self.base_url, timeout=10) as client:
            await asyncio.gather(*(self._worker(client, n) for n in range(self.workers)))

    async def _worker(self, client: httpx2.AsyncClient, number: int) -> None:
        turn = 0
        while not self._stop.is_set():
            turn += 1
            if turn % 4 == 0:
                response = await client.get("/v1/tasks", params={"limit": 20})
            elif turn % 4 == 1 and self.reads:
                response = await client.get(f"/v1/tasks/{self.reads[turn % len(self.reads)]}")
            else:
                response = await client.post("/v1/tasks", json={"title": f"w{number} t{turn}"})
                if response.status_code == 201:
                    self.acknowledged.append(response.json()["id"])
            self.statuses[response.status_code] += 1
            if response.status_code not in (200, 201, 503):
                self.unexpected.append(f"{response.status_code} {response.text[:200]}")
            elif response.status_code == 503:
                if response.headers["content-type"] != PROBLEM:
                    self.unexpected.append(f"503 as {response.headers['content-type']}")
                else:
                    self.reasons[response.json().get("detail", "")] += 1


def lost_writes(base_url: str, ids: list[str]) -> list[str]:
    """The acknowledged ids the service no longer finds."""
    with httpx2.Client(base_url=base_url, timeout=10) as client:
        return [i for i in ids if client.get(f"/v1/tasks/{i}").status_code != 200]


def every_call_succeeds(base_url: str, count: int = 60) -> Counter[int]:
    seen: Counter[int] = Counter()
    with httpx2.Client(base_url=base_url, timeout=10) as client:
        for n in range(count):
            created = client.post("/v1/tasks", json={"title": f"after {n}"})
            seen[created.status_code] += 1
            if created.status_code == 201:
                seen[client.get(f"/v1/tasks/{created.json()['id']}").status_code] += 1
            seen[client.get("/v1/tasks", params={"limit": 5}).status_code] += 1
    return seen


# --- the harness --------------------------------------------------------------------------


@pytest.mark.harness
def test_the_cluster_harness_has_three_primaries_with_a_replica_each_and_stops_clean() -> None:
    cluster = RedisClusterServers()
    cluster.start()
    try:
        primaries = cluster.primaries()
        assert len(primaries) == 3
        replicas = {cluster.replica_of(p).port for p in primaries}
        assert len(replicas) == 3 and not replicas & {p.port for p in primaries}
        with primaries[0].client() as c:
            info = c.cluster("info")
        assert info["cluster_state"] == "ok" and int(info["cluster_slots_assigned"]) == 16384
    finally:
        cluster.stop()
    assert cluster.leftovers() == []


# --- keys and shards ----------------------------------------------------------------------


@pytest.mark.factor("IV")
def test_3000_tasks_spread_over_every_primary(
    redis_cluster: RedisClusterServers, make_settings
) -> None:  # type: ignore[no-untyped-def]
    settings: Settings = make_settings("cluster")

    async def create(store: TaskStore) -> None:
        await store.ping()  # as readiness does before traffic: the client learns the slots
        for start in range(0, 3000, 100):
            batch = [new_fields(TaskCreate(title=f"t{n}")) for n in range(start, start + 100)]
            await asyncio.gather(*(store.create(task) for task in batch))

    with_store(settings, create)
    per_primary = {}
    for primary in redis_cluster.primaries():
        with primary.client() as c:
            pattern = f"{settings.redis_key_prefix}*task:*"
            per_primary[primary.port] = sum(1 for _ in c.scan_iter(pattern, count=1000))
    total = sum(per_primary.values())
    shares = {port: round(100 * n / total, 1) for port, n in per_primary.items()}
    print(f"task keys per primary of {total}: {per_primary} (%: {shares})")
    assert total == 3000
    assert all(n >= 0.2 * total for n in per_primary.values()), shares


@pytest.mark.factor("IV")
def test_shard_tags_split_the_slot_space_evenly() -> None:
    """Shard k's tag hashes into the k-th of n equal parts of the slots, whatever the prefix:
    an evenly split cluster holds as many shards on each primary, give or take one."""
    for shards in (1, 3, 16, 256):
        slots = [key_slot(shard_tag(k, shards).strip("{}").encode()) for k in range(shards)]
        assert [slot * shards // 16384 for slot in slots] == list(range(shards))


@pytest.mark.factor("IV")
def test_another_shard_count_is_refused_not_read_from_the_wrong_shards(make_settings) -> None:  # type: ignore[no-untyped-def]
    first: Settings = make_settings("cluster", redis_shards=16)
    created = with_store(first, lambda store: store.create(new_fields(TaskCreate(title="kept"))))

    async def refused(store: TaskStore) -> str:
        with pytest.raises(ShardCountMismatch) as caught:
            await store.ping()
        return str(caught.value)

    message = with_store(first.model_copy(update={"redis_shards": 8}), refused)
    assert "16 shards" in message and "TASKS_REDIS_SHARDS says 8" in message
    with TestClient(create_app(first.model_copy(update={"redis_shards": 8}))) as client:
        ready = client.get("/readyz")
        assert (
            ready.status_code == 503 and ready.json()["checks"]["store"] == "shard-count-mismatch"
        )
        write = client.post("/v1/tasks", json={"title": "refused"})
        assert write.status_code == 503 and write.headers["content-type"] == PROBLEM
    with TestClient(create_app(first)) as client:  # the recorded count still serves everything
        assert client.get(f"/v1/tasks/{created.task.id}").json()["title"] == "kept"


CLUSTER_ACL = "~tasks:* +@read +@write +@scripting +@keyspace +@connection +role"
CLUSTER_ACL += " +cluster|slots +cluster|info"  # the chart README's list for cluster mode


@pytest.mark.factor("IV")
def test_the_documented_acl_user_serves_in_cluster_mode(
    redis_cluster: RedisClusterServers, make_settings
) -> None:  # type: ignore[no-untyped-def]
    user, password = f"app-{uuid.uuid4().hex[:8]}", "acl-password-0123456789"
    for node in redis_cluster.nodes:
        with node.client() as c:
            c.execute_command("ACL", "SETUSER", user, "on", f">{password}", *CLUSTER_ACL.split())
    settings: Settings = make_settings(
        "cluster", redis_key_prefix="tasks:acl:", redis_username=user, redis_password=password
    )
    with TestClient(create_app(settings)) as client:
        assert client.get("/readyz").status_code == 200
        created = client.post("/v1/tasks", json={"title": "as the app user"})
        assert created.status_code == 201
        assert client.get(f"/v1/tasks/{created.json()['id']}").status_code == 200
        assert client.get("/v1/tasks").json()["items"][0]["id"] == created.json()["id"]


@pytest.mark.factor("IV")
def test_concurrent_creates_under_one_idempotency_key_store_one_task(make_settings) -> None:  # type: ignore[no-untyped-def]
    """The record and the task share a shard, so the create stays one atomic script."""
    settings: Settings = make_settings("cluster")
    key = f"key-{uuid.uuid4().hex}"
    with TestClient(create_app(settings)) as client:

        def create(_: int) -> httpx2.Response:
            return client.post(
                "/v1/tasks", json={"title": "once"}, headers={"Idempotency-Key": key}
            )

        from concurrent.futures import ThreadPoolExecutor

        with ThreadPoolExecutor(8) as pool:
            answers = list(pool.map(create, range(16)))
        ids = {a.json()["id"] for a in answers}
        assert {a.status_code for a in answers} <= {200, 201} and len(ids) == 1
        listed = client.get("/v1/tasks", params={"limit": 100}).json()["items"]
        assert [t["id"] for t in listed] == list(ids)


# --- failures -----------------------------------------------------------------------------


@pytest.mark.factor("IV")
@pytest.mark.parametrize("how", ["CLUSTER FAILOVER", "SIGTERM to the primary"])
def test_a_failover_under_load_gives_only_503s_then_every_call_succeeds_and_loses_nothing(
    private_cluster: RedisClusterServers, start_service: StartService, how: str
) -> None:
    """A manual failover (the replica takes over in step), or the primary shut down (Redis
    waits for its replica to catch up; the cluster fails it over after the node timeout)."""
    service = cluster_service(start_service, private_cluster)
    primary = private_cluster.primaries()[0]
    replica = private_cluster.replica_of(primary)
    with Load(service.base_url) as load:
        time.sleep(1)
        if how == "CLUSTER FAILOVER":
            with replica.client() as c:
                c.execute_command("CLUSTER FAILOVER")
        else:
            primary.stop()
        wait_until(
            lambda: replica in private_cluster.primaries(), timeout=60, what="the replica promoted"
        )
        private_cluster.wait_healthy()
        time.sleep(1)
    lost = lost_writes(service.base_url, load.acknowledged)
    after = every_call_succeeds(service.base_url)
    print(
        f"failover ({how}) under load: {load.requests} requests, {load.failures} failed "
        f"(statuses {dict(load.statuses)}, 503s {dict(load.reasons)}), "
        f"{len(load.acknowledged)} acknowledged writes, {len(lost)} lost; afterwards {dict(after)}"
    )
    assert load.unexpected == []
    assert set(load.statuses) <= {200, 201, 503}
    assert lost == []
    assert set(after) == {200, 201}


@pytest.mark.factor("IV")
def test_a_shard_down_answers_503_problem_json_never_500_and_recovers(
    private_cluster: RedisClusterServers, start_service: StartService
) -> None:
    service = cluster_service(start_service, private_cluster)
    with httpx2.Client(base_url=service.base_url, timeout=10) as client:
        ids = [client.post("/v1/tasks", json={"title": f"t{n}"}).json()["id"] for n in range(40)]
        primary = private_cluster.primaries()[0]
        replica = private_cluster.replica_of(primary)
        replica.stop()
        primary.stop()
        answers = Counter(client.get(f"/v1/tasks/{i}").status_code for i in ids)
        answers.update(client.post("/v1/tasks", json={"title": "x"}).status_code for _ in range(40))
        down = [client.get(f"/v1/tasks/{i}") for i in ids]
        unavailable = [r for r in down if r.status_code == 503]
        wait_until(lambda: client.get("/readyz").status_code == 503, timeout=30, what="readyz 503")
        print(f"one shard down: {dict(answers)} (then {len(unavailable)} of {len(ids)} reads 503)")
        assert set(answers) <= {200, 201, 503} and answers[503] > 0
        assert unavailable and all(r.headers["content-type"] == PROBLEM for r in unavailable)
        assert all(r.headers["retry-after"] == "1" for r in unavailable)
        ready = client.get("/readyz")
        assert ready.headers["content-type"] == PROBLEM
        assert ready.json()["checks"]["store"] == "unreachable"

        primary.start()
        replica.start()
        private_cluster.wait_healthy()
        wait_until(lambda: client.get("/readyz").status_code == 200, timeout=30, what="ready")
    assert set(every_call_succeeds(service.base_url, count=20)) == {200, 201}


@pytest.mark.factor("IV")
def test_a_cluster_that_no_seed_node_reaches_answers_503_and_jobs_exit_1(make_settings) -> None:  # type: ignore[no-untyped-def]
    from tests.test_jobs import job_env, run_job

    nowhere = f"redis://127.0.0.1:{free_port()},redis://127.0.0.1:{free_port()}"
    settings: Settings = make_settings("cluster", redis_url=nowhere, redis_timeout_seconds=0.5)
    with TestClient(create_app(settings), raise_server_exceptions=False) as client:
        answers = [
            client.get("/readyz"),
            client.post("/v1/tasks", json={"title": "x"}),
            client.get("/v1/tasks"),
        ]
    assert [a.status_code for a in answers] == [503, 503, 503]
    assert all(a.headers["content-type"] == PROBLEM for a in answers)
    assert answers[0].json()["checks"]["store"] == "unreachable"
    run = run_job(job_env(settings), "cleanup")
    assert (
        run.code == 1
        and run.summary["error"] == "store unavailable (store unavailable: connection)"
    )


@pytest.mark.factor("IV")
def test_moved_and_ask_during_a_slot_migration_are_followed_not_surfaced(
    private_cluster: RedisClusterServers, start_service: StartService
) -> None:
    service = cluster_service(start_service, private_cluster)
    with httpx2.Client(base_url=service.base_url, timeout=10) as client:
        ids = [client.post("/v1/tasks", json={"title": f"t{n}"}).json()["id"] for n in range(400)]
    slot = key_slot(shard_tag(0, 16).strip("{}").encode())
    source = next(p for p in private_cluster.primaries() if owns(p, slot))
    target = next(p for p in private_cluster.primaries() if p is not source)
    keys = RedisKeys("tasks:", cluster=True, shards=16)  # the service's prefix and count
    in_shard = [i for i in ids if keys.shard_of(i).number == 0]  # read while their slot moves
    with Load(service.base_url, reads=in_shard) as load:
        moved = migrate_slot(private_cluster, slot, source, target)
        time.sleep(1)
    assert owns(target, slot) and not owns(source, slot)
    lost = lost_writes(service.base_url, load.acknowledged + ids)
    print(
        f"slot {slot} migration ({moved} keys, in batches of 10) under load: {load.requests} "
        f"requests, {load.failures} failed (statuses {dict(load.statuses)}, 503s "
        f"{dict(load.reasons)}), {len(lost)} lost"
    )
    assert moved > 0
    assert load.unexpected == [] and load.failures == 0
    assert lost == []


def owns(node: Any, slot: int) -> bool:
    """Whether `node` serves `slot`, as the node itself says (CLUSTER SLOTS)."""
    with node.client() as c:
        ranges = c.cluster("slots")
    return any(a <= slot <= b and primary[1] == node.port for a, b, primary, *_ in ranges)


def migrate_slot(
    cluster: RedisClusterServers, slot: int, source: Any, target: Any, batch: int = 10
) -> int:
    """Move one slot as `redis-cli --cluster reshard` does (MIGRATE, 10 keys at a time), so
    calls meet keys on either side (ASK), then the new owner (MOVED)."""
    with source.client() as src, target.client() as dst:
        source_id, target_id = (
            src.execute_command("CLUSTER MYID"),
            dst.execute_command("CLUSTER MYID"),
        )
        dst.execute_command("CLUSTER SETSLOT", slot, "IMPORTING", source_id)
        src.execute_command("CLUSTER SETSLOT", slot, "MIGRATING", target_id)
        moved = 0
        while keys := src.execute_command("CLUSTER GETKEYSINSLOT", slot, batch):
            src.execute_command("MIGRATE", "127.0.0.1", target.port, "", 0, 5000, "KEYS", *keys)
            moved += len(keys)
        for node in cluster.primaries():
            with node.client() as c:
                c.execute_command("CLUSTER SETSLOT", slot, "NODE", target_id)
    cluster.wait_healthy()
    return moved
