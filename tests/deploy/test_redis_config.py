"""The bundled Redis of the chart and of the kustomize component: the same startup script, which
hands redis-server the Secret's password byte for byte (run here with a real redis-server), and a
maxmemory below the container's memory limit with room for an AOF rewrite, equal in both."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import tempfile
import weakref
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import redis

from tests.deploy.render import KUSTOMIZE_DIR, helm_template, kustomize_build, one
from tests.manifests import Obj, pod_spec
from tests.support import free_port, require_tool, wait_until

# maxmemory may take at most this share of the container's memory limit: the rest is for the
# forked AOF-rewrite child (pages written while it runs are copied, in the same cgroup), client
# buffers and allocator fragmentation.
MAXMEMORY_SHARE = 0.6
REDIS_CONF_UNITS = {
    "": 1,
    "k": 10**3,
    "kb": 2**10,
    "m": 10**6,
    "mb": 2**20,
    "g": 10**9,
    "gb": 2**30,
}
QUANTITY_UNITS = {"": 1, "k": 10**3, "M": 10**6, "G": 10**9, "Ki": 2**10, "Mi": 2**20, "Gi": 2**30}

# Passwords a Secret may hold that redis.conf syntax would mangle if pasted in unquoted or
# quoted naively: quotes, backslashes (also ones that look like escapes), spaces at either end,
# shell syntax, a tab, non-ASCII.
PASSWORDS = [
    'dq"inside',
    '"',
    "back\\slash\\",
    "\\x41\\n\\\\",
    " spaces at both ends ",
    "'single' quotes",
    "$HOME `id` $(id) #not-a-comment ;|&",
    "tab\there",
    "pässwörd-€",
]


def _size(text: str, units: dict[str, int]) -> int:
    match = re.fullmatch(r"([0-9]+(?:\.[0-9]+)?)([A-Za-z]*)", text)
    assert match and match[2] in units, f"unreadable size {text!r}"
    return int(float(match[1]) * units[match[2]])


def _conf_value(conf: str, directive: str) -> str | None:
    values = [
        line.split(None, 1)[1] for line in conf.splitlines() if line.split()[:1] == [directive]
    ]
    assert len(values) <= 1, f"{directive} set twice"
    return values[0] if values else None


def _redis_of(objs: tuple[Obj, ...], statefulset: str, configmap: str) -> tuple[Obj, str]:
    """The Redis container and its redis.conf (from the ConfigMap it mounts)."""
    (container,) = pod_spec(one(objs, "StatefulSet", statefulset))["containers"]  # type: ignore[index]
    return container, one(objs, "ConfigMap", configmap)["data"]["redis.conf"]


def _chart(*sets: str) -> tuple[Obj, str]:
    return _redis_of(helm_template(*sets), "tasks-redis", "tasks-redis")


def _kustomize() -> tuple[Obj, str]:
    objs = kustomize_build("overlays/dev")
    (configmap,) = [
        o
        for o in objs
        if o["kind"] == "ConfigMap" and re.fullmatch(r"redis-[a-z0-9]{10}", o["metadata"]["name"])
    ]
    return _redis_of(objs, "redis", configmap["metadata"]["name"])


def _maxmemory_and_limit(container: Obj, conf: str) -> tuple[int, int]:
    maxmemory = _conf_value(conf, "maxmemory")
    assert maxmemory is not None, "no maxmemory: Redis would grow until the kernel kills it"
    limit = container["resources"]["limits"]["memory"]
    return _size(maxmemory.lower(), REDIS_CONF_UNITS), _size(limit, QUANTITY_UNITS)


# --- maxmemory ------------------------------------------------------------------------------


@pytest.mark.factor("IV")
@pytest.mark.parametrize(
    ("source", "expected"),
    [
        # The chart README: 60 % of the limit in whole megabytes, 153mb for the default 256Mi.
        pytest.param(lambda: _chart(), "153mb", id="chart-defaults"),
        pytest.param(
            lambda: _chart("redis.resources.limits.memory=1Gi", "redis.config.maxmemory=600mb"),
            "600mb",
            id="chart-explicit",
        ),
        pytest.param(
            lambda: _chart("redis.resources.limits.memory=1.5Gi"), "921mb", id="chart-1.5Gi"
        ),
        pytest.param(_kustomize, "153mb", id="kustomize"),
    ],
)
def test_maxmemory_leaves_aof_rewrite_headroom_below_the_memory_limit(
    source: Callable[[], tuple[Obj, str]], expected: str
) -> None:
    container, conf = source()
    assert _conf_value(conf, "maxmemory") == expected
    maxmemory, limit = _maxmemory_and_limit(container, conf)
    assert 0 < maxmemory <= MAXMEMORY_SHARE * limit, (maxmemory, limit)


@pytest.mark.factor("IV", "X")
def test_kustomize_maxmemory_is_the_charts_default_for_the_same_limit() -> None:
    chart, kustomize = _maxmemory_and_limit(*_chart()), _maxmemory_and_limit(*_kustomize())
    assert kustomize == chart


@pytest.mark.factor("IV")
def test_chart_refuses_a_maxmemory_at_the_memory_limit() -> None:
    helm = require_tool("helm", "make tools builds the pinned helm")
    chart = KUSTOMIZE_DIR.parent / "helm" / "tasks"
    result = subprocess.run(
        [helm, "template", "tasks", str(chart), "--set", "redis.config.maxmemory=256mb"],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode != 0
    assert "redis.config.maxmemory (256mb) must be below" in result.stderr, result.stderr


# --- the startup script, with a real redis-server ----------------------------------------------


@pytest.mark.factor("X")
def test_kustomize_runs_the_charts_redis_startup_script() -> None:
    (chart, _), (kustomize, _) = _chart(), _kustomize()
    assert (kustomize["command"], kustomize["args"]) == (chart["command"], chart["args"])


class StartedRedis:
    """The rendered container's command run here: its config file from the ConfigMap (only bind,
    port and dir changed to fit this machine), its env, a real redis-server from PATH."""

    def __init__(self, container: Obj, conf: str, password: str) -> None:
        self.dir = Path(tempfile.mkdtemp(prefix="tasks-redis-start-"))
        weakref.finalize(self, shutil.rmtree, self.dir, ignore_errors=True)
        self.port = free_port()
        local = {"bind": "127.0.0.1", "port": str(self.port), "dir": str(self.dir)}
        lines = [
            f"{words[0]} {local[words[0]]}"
            if (words := line.split()) and words[0] in local
            else line
            for line in conf.splitlines()
        ]
        config_file = self.dir / "redis.conf"
        config_file.write_text("\n".join(lines) + "\n")
        mount = next(m for m in container["volumeMounts"] if m["name"] == "config")["mountPath"]
        argv = [*container["command"], *container["args"]]
        argv = [arg.replace(f"{mount}/redis.conf", str(config_file)) for arg in argv]
        assert str(config_file) in argv[-1], "the script reads the mounted redis.conf"
        self.container = container
        self.env = {"PATH": os.environ["PATH"], "REDIS_PASSWORD": password}
        self.proc = subprocess.Popen(
            argv, env=self.env, stdout=subprocess.PIPE, stderr=subprocess.PIPE
        )

    def client(self, password: str) -> redis.Redis:
        return redis.Redis(port=self.port, password=password, socket_timeout=2)

    def wait_ready(self, password: str) -> None:
        def answers() -> bool:
            assert self.proc.poll() is None, self.proc.communicate(timeout=10)[1].decode()
            try:
                return bool(self.client(password).ping())
            except redis.ConnectionError:
                return False

        wait_until(answers, timeout=10, what="redis-server started by the rendered script")

    def probe(self, probe: str, password: str) -> int:
        """Exit code of the container's exec probe, pointed at this port."""
        command = [
            arg.replace(f"-p {self.container['ports'][0]['containerPort']}", f"-p {self.port}")
            for arg in self.container[probe]["exec"]["command"]
        ]
        env = {"PATH": os.environ["PATH"], "REDISCLI_AUTH": password}
        return subprocess.run(command, env=env, capture_output=True, timeout=10).returncode

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(timeout=10)


@pytest.fixture
def start_redis() -> Iterator:  # type: ignore[type-arg]
    require_tool("redis-server", "make system-deps installs redis-server")
    started: list[StartedRedis] = []

    def start(password: str) -> StartedRedis:
        container, conf = _chart()
        started.append(StartedRedis(container, conf, password))
        return started[-1]

    yield start
    for server in started:
        server.stop()


@pytest.mark.factor("III")
@pytest.mark.parametrize("password", PASSWORDS)
def test_the_secrets_password_reaches_requirepass_byte_for_byte(start_redis, password: str) -> None:  # type: ignore[no-untyped-def]
    server = start_redis(password)
    server.wait_ready(password)
    client = server.client(password)
    assert client.config_get("requirepass")["requirepass"] == password
    with pytest.raises(redis.AuthenticationError):
        server.client(password + "x").ping()
    # The probes authenticate with the same Secret value (REDISCLI_AUTH) and fail without it.
    assert server.probe("readinessProbe", password) == 0
    assert server.probe("readinessProbe", "wrong") != 0
    # And the configured maxmemory is what Redis runs with.
    conf = _chart()[1]
    maxmemory = _conf_value(conf, "maxmemory")
    assert maxmemory is not None
    assert int(client.config_get("maxmemory")["maxmemory"]) == _size(maxmemory, REDIS_CONF_UNITS)


@pytest.mark.factor("III")
@pytest.mark.parametrize(
    ("password", "reason"),
    [
        ("line\nbreak", "contains a newline"),
        ("trailing-newline\n", "contains a newline"),
        ("", "is empty"),
    ],
)
def test_a_password_redis_cannot_take_stops_the_container_with_a_reason(
    start_redis,
    password: str,
    reason: str,  # type: ignore[no-untyped-def]
) -> None:
    server = start_redis(password)
    _, stderr = server.proc.communicate(timeout=10)
    assert server.proc.returncode == 1
    assert f"the password in the Secret {reason}" in stderr.decode()
    assert password == "" or password.strip() not in stderr.decode(), (
        "the password is never printed"
    )
