"""Shared test machinery: free ports, a real redis-server, the service as a real subprocess."""

from __future__ import annotations

import asyncio
import atexit
import functools
import json
import os
import queue
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import weakref
from collections.abc import Awaitable, Callable, Mapping
from datetime import datetime
from pathlib import Path
from typing import IO, Any, TypeVar

import httpx2
import pytest
import redis

from service.domain import Task, TaskCreate, from_fields, new_fields
from service.settings import Settings
from service.store import TaskStore, open_store

T = TypeVar("T")

ROOT = Path(__file__).resolve().parent.parent
TOOLS_BIN = ROOT / ".tools" / "bin"


def new_task(body: TaskCreate, now: datetime | None = None) -> Task:
    """A new task (`new_fields`), as the model."""
    return from_fields(new_fields(body, now))


def with_store(settings: Settings, body: Callable[[TaskStore], Awaitable[T]]) -> T:
    """Run `body` against a store opened from `settings`, outside any running event loop: the
    test's own hands (seeding, reading back), so each call gets a budget a loaded machine meets
    rather than the service's default second."""
    hands = settings.model_copy(update={"redis_timeout_seconds": 30.0})

    async def run() -> T:
        store = open_store(hands)
        try:
            return await body(store)
        finally:
            await store.close()

    return asyncio.run(run())


def scrape(app: Any) -> str:
    """An in-process app's /metrics, served as its metrics listener serves them."""
    from fastapi.testclient import TestClient

    from service.observability.metrics import metrics_app

    return TestClient(metrics_app(app.state.metrics)).get("/metrics").text


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def require_tool(name: str, hint: str = "make test installs it") -> str:
    """Path of a tool, preferring the pinned copy in .tools/bin. A missing tool fails loudly."""
    pinned = TOOLS_BIN / name
    if pinned.exists():
        return str(pinned)
    found = shutil.which(name)
    if found is None:
        pytest.fail(f"required tool {name!r} not found ({hint})", pytrace=False)
    return found


@functools.cache
def empty_cwd() -> Path:
    """An empty working directory for the processes the tests start: a developer's `.env` in the
    checkout is never read by them (the settings read `.env` from the working directory)."""
    path = Path(tempfile.mkdtemp(prefix="tasks-cwd-"))
    atexit.register(shutil.rmtree, path, ignore_errors=True)
    return path


class LineReader:
    """The lines of a subprocess's pipe, read by a thread, so a test waits for one with a bound
    instead of blocking on `readline()` forever."""

    def __init__(self, stream: IO[str]) -> None:
        self._lines: queue.Queue[str | None] = queue.Queue()
        self.seen: list[str] = []
        threading.Thread(target=self._pump, args=(stream,), daemon=True).start()

    def _pump(self, stream: IO[str]) -> None:
        for line in stream:
            self._lines.put(line)
        self._lines.put(None)

    def next(self, timeout: float) -> str:
        try:
            line = self._lines.get(timeout=timeout)
        except queue.Empty:
            raise TimeoutError(f"no line within {timeout}s; so far: {self.seen}") from None
        if line is None:
            raise EOFError(f"the stream ended; it said: {self.seen}")
        self.seen.append(line)
        return line

    def until(self, predicate: Callable[[str], bool], timeout: float) -> str:
        """The first line that satisfies `predicate`, within `timeout` seconds in all."""
        deadline = time.monotonic() + timeout
        while not predicate(line := self.next(max(deadline - time.monotonic(), 0.01))):
            pass
        return line


def wait_until(predicate, timeout: float, interval: float = 0.02, what: str = "condition"):  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while True:
        result = predicate()
        if result:
            return result
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(interval)


class RedisServer:
    """A throwaway redis-server on a free loopback port; can be stopped and restarted in place."""

    def __init__(
        self,
        password: str | None = None,
        extra_args: list[str] | None = None,
        port: int | None = None,
    ) -> None:
        self.binary = require_tool("redis-server", "make system-deps installs redis-server")
        self.port = port or free_port()
        self.password = password
        self.extra_args = extra_args or []
        self.dir = tempfile.mkdtemp(prefix="tasks-redis-")
        # Kept across stop() and start() (a restart in place), removed with the object.
        weakref.finalize(self, shutil.rmtree, self.dir, ignore_errors=True)
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self, wait: bool = True) -> None:
        args = [
            self.binary,
            "--port",
            str(self.port),
            "--bind",
            "127.0.0.1",
            "--dir",
            self.dir,
            "--save",
            "",
            "--appendonly",
            "no",
            "--protected-mode",
            "no",
        ]
        if self.password:
            args += ["--requirepass", self.password]
        args += self.extra_args
        self.proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        if wait:
            wait_until(self._answers, timeout=10, what=f"redis-server on port {self.port}")

    def client(self) -> redis.Redis:
        """A plain client (the test's own hands on this server)."""
        return redis.Redis.from_url(self.url, password=self.password, decode_responses=True)

    def freeze(self) -> None:
        """SIGSTOP: connections are accepted, nothing is answered."""
        assert self.proc is not None
        os.kill(self.proc.pid, signal.SIGSTOP)

    def thaw(self) -> None:
        assert self.proc is not None
        os.kill(self.proc.pid, signal.SIGCONT)

    def _answers(self) -> bool:
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=0.2) as s:
                if self.password:
                    s.sendall(f"AUTH {self.password}\r\n".encode())
                    s.recv(64)
                s.sendall(b"PING\r\n")
                return s.recv(64).startswith(b"+PONG")
        except OSError:
            return False

    def stop(self) -> None:
        if self.proc is not None:
            self.thaw()  # a frozen server cannot act on SIGTERM
            self.proc.terminate()
            self.proc.wait(timeout=10)
            self.proc = None

    def flushall(self) -> None:
        self.client().flushall()


def free_cluster_port(taken: set[int]) -> int:
    """A free loopback port whose cluster bus port (port + 10000) is free as well."""
    while True:
        port = free_port()
        if port + 10000 > 65535 or port in taken or port + 10000 in taken:
            continue
        with socket.socket() as bus:
            try:
                bus.bind(("127.0.0.1", port + 10000))
            except OSError:
                continue
        return port


class RedisClusterServers:
    """A real Redis Cluster on loopback: `primaries` redis-server primaries with `replicas`
    replicas each, created by `redis-cli --cluster create`. Nodes keep their directory (and
    nodes.conf), so a stopped node restarts as the same cluster member."""

    NODE_TIMEOUT_MS = 3000  # how long a silent node takes to be failed over (loaded machines)

    def __init__(self, primaries: int = 3, replicas: int = 1) -> None:
        self.cli = require_tool("redis-cli", "make system-deps installs redis-server")
        self.primary_count = primaries
        self.replicas = replicas
        ports: set[int] = set()
        for _ in range(primaries * (1 + replicas)):
            ports.add(free_cluster_port(ports))
        cluster_args = [
            "--cluster-enabled", "yes",
            "--cluster-config-file", "nodes.conf",
            "--cluster-node-timeout", str(self.NODE_TIMEOUT_MS),
        ]  # fmt: skip
        self.nodes = [RedisServer(extra_args=cluster_args, port=port) for port in sorted(ports)]

    @property
    def url(self) -> str:
        """TASKS_REDIS_URL in cluster mode: every node as a seed, comma-separated."""
        return ",".join(f"redis://127.0.0.1:{node.port}" for node in self.nodes)

    def start(self) -> None:
        try:
            for node in self.nodes:
                node.start()
            addresses = [f"127.0.0.1:{node.port}" for node in self.nodes]
            subprocess.run(
                [self.cli, "--cluster", "create", *addresses,
                 "--cluster-replicas", str(self.replicas), "--cluster-yes"],
                check=True, capture_output=True, timeout=60,
            )  # fmt: skip
            self.wait_healthy()
        except BaseException:
            self.stop()
            raise

    def wait_healthy(self, timeout: float = 60) -> None:
        """Until every running node says cluster_state:ok, sees every running node alive and
        every other one failed, and all agree on which are the primaries and the replicas."""
        running = {node.port for node in self.nodes if node.proc is not None}

        def healthy() -> bool:
            views = set()
            for port in running:
                try:
                    with self.node(port).client() as c:
                        if c.cluster("info")["cluster_state"] != "ok":
                            return False
                        seen = self._nodes_seen_by(c)
                except redis.RedisError:
                    return False
                alive = {p for p, node in seen.items() if "fail" not in node["flags"]}
                replicas = {p for p in alive if "slave" in seen[p]["flags"]}
                views.add((frozenset(alive), frozenset(replicas)))
            ((alive, replicas),) = views if len(views) == 1 else ((None, None),)
            primaries = len(alive - replicas) if alive is not None and replicas is not None else 0
            return alive == running and primaries == self.primary_count

        wait_until(healthy, timeout=timeout, interval=0.1, what="the Redis Cluster to agree")

    @staticmethod
    def _nodes_seen_by(client: redis.Redis) -> dict[int, dict[str, Any]]:
        """CLUSTER NODES as one node sees it: port -> its entry (flags, node_id, master_id,
        slots)."""
        nodes: dict[str, dict[str, Any]] = client.cluster("nodes")
        return {int(address.split(":")[1].split("@")[0]): v for address, v in nodes.items()}

    @classmethod
    def _primaries_seen_by(cls, client: redis.Redis) -> list[int]:
        return [
            port
            for port, node in cls._nodes_seen_by(client).items()
            if "master" in node["flags"] and "fail" not in node["flags"] and node["slots"]
        ]

    def node(self, port: int) -> RedisServer:
        return next(node for node in self.nodes if node.port == port)

    def primaries(self) -> list[RedisServer]:
        """The primaries that serve slots, as a running node sees them."""
        seer = next(node for node in self.nodes if node.proc is not None)
        with seer.client() as c:
            return [self.node(port) for port in sorted(self._primaries_seen_by(c))]

    def replica_of(self, primary: RedisServer) -> RedisServer:
        with primary.client() as c:
            primary_id = str(c.execute_command("CLUSTER MYID"))
            nodes = self._nodes_seen_by(c)
        for port, node in nodes.items():
            if node["master_id"] == primary_id and "fail" not in node["flags"]:
                return self.node(port)
        raise LookupError(f"no live replica of the primary on port {primary.port}")

    def flushall(self) -> None:
        for primary in self.primaries():
            with primary.client() as c:
                c.flushall()

    def stop(self) -> None:
        for node in self.nodes:
            node.stop()

    def leftovers(self) -> list[int]:
        """Ports of nodes still running (none after stop)."""
        return [node.port for node in self.nodes if node.proc is not None]


def _discard(file: IO[bytes]) -> None:
    file.close()
    Path(file.name).unlink(missing_ok=True)


class ServiceProcess:
    """`python -m service` (or any command) as a subprocess, with its stdout captured to a file."""

    def __init__(
        self, env: Mapping[str, str], args: list[str] | None = None, cwd: Path | None = None
    ) -> None:
        self.port = int(env.get("PORT", "8080"))
        self.metrics_port = int(env.get("TASKS_METRICS_PORT", "9090"))
        self.log = tempfile.NamedTemporaryFile(  # noqa: SIM115 (kept open for the process)
            prefix="tasks-service-", suffix=".log", delete=False
        )
        # Readable after stop() (tests read a stopped process's output), removed with the object.
        weakref.finalize(self, _discard, self.log)
        self.args = args or [sys.executable, "-m", "service"]
        self.proc = self.spawn({"PYTHONPATH": str(ROOT), **env}, cwd or empty_cwd())
        self.base_url = f"http://127.0.0.1:{self.port}"
        self.metrics_url = f"http://127.0.0.1:{self.metrics_port}/metrics"

    def spawn(self, env: Mapping[str, str], cwd: Path) -> subprocess.Popen[bytes]:
        return subprocess.Popen(
            self.args, env=dict(env), cwd=cwd, stdout=self.log, stderr=subprocess.STDOUT
        )

    def wait_ready(self, timeout: float = 15) -> None:
        def ready() -> bool:
            if self.proc.poll() is not None:
                raise RuntimeError(f"{self.args} exited {self.proc.returncode}:\n{self.output()}")
            try:
                return httpx2.get(self.base_url + "/readyz", timeout=5).status_code == 200
            except httpx2.HTTPError:
                return False

        wait_until(ready, timeout=timeout, what="/readyz 200")

    def output(self) -> str:
        return Path(self.log.name).read_text(errors="replace")

    def messages(self) -> list[str]:
        """The `msg` of every JSON line the process wrote."""
        lines = self.output().splitlines()
        return [json.loads(line)["msg"] for line in lines if line.startswith("{")]

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        return self.proc.returncode


def base_env(**extra: str) -> dict[str, str]:
    """A minimal, explicit environment: nothing of the developer's TASKS_* leaks into a test."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("TASKS_") and k != "PORT"}
    env.update(extra)
    return env


def service_env(**extra: str) -> dict[str, str]:
    """The environment of a service process on free ports (API and metrics), importing this
    checkout."""
    ports = {"PORT": str(free_port()), "TASKS_METRICS_PORT": str(free_port())}
    return base_env(**{**ports, "PYTHONPATH": str(ROOT), **extra})


def redis_env(server: RedisServer, **extra: str) -> dict[str, str]:
    return {"TASKS_STORE": "redis", "TASKS_REDIS_URL": server.url, **extra}
