"""Processes of a test cluster: start one with its log and pid file, wait for a condition, find
every process that belongs to the cluster, and stop them (SIGTERM, then SIGKILL)."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import ssl
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

ROOT = Path(__file__).resolve().parents[3]
TOOLS_BIN = Path(os.environ.get("TASKS_TOOLS_BIN", ROOT / ".tools" / "bin")).resolve()

T = TypeVar("T")


class ClusterError(RuntimeError):
    pass


@dataclass
class Paths:
    """Where one cluster keeps everything (git-ignored .cache/<name>/)."""

    root: Path

    @property
    def pki(self) -> Path:
        return self.root / "pki"

    @property
    def logs(self) -> Path:
        return self.root / "logs"

    @property
    def pids(self) -> Path:
        return self.root / "pids"

    @property
    def kubeconfig(self) -> Path:
        return self.root / "kubeconfig"

    @property
    def state(self) -> Path:
        return self.root / "state.json"

    def pidfile(self, component: str) -> Path:
        return self.pids / f"{component}.pid"

    def log(self, component: str) -> Path:
        return self.logs / f"{component}.log"


@dataclass
class State:
    """What `up` started: saved to state.json so `status` and `down` work from another process."""

    ports: dict[str, int] = field(default_factory=dict)
    pids: dict[str, int] = field(default_factory=dict)
    server: str = ""
    kubeconfig: str = ""
    started_at: float = 0.0
    up_seconds: float = 0.0
    # The real node only: the namespace holder's pid and its namespaces' inodes.
    holder: int = 0
    namespaces: dict[str, int] = field(default_factory=dict)

    @classmethod
    def load(cls, paths: Paths) -> State | None:
        try:
            return cls(**json.loads(paths.state.read_text()))
        except (OSError, ValueError, TypeError):
            return None

    def save(self, paths: Paths) -> None:
        paths.state.write_text(json.dumps(self.__dict__, indent=2) + "\n")


def log(msg: str) -> None:
    print(f"[cluster] {msg}", file=sys.stderr, flush=True)


def binary(name: str, make_target: str = "cluster-tools") -> Path:
    path = TOOLS_BIN / name
    if not os.access(path, os.X_OK):
        raise ClusterError(f"{path} is missing: run `make {make_target}` first")
    return path


def free_ports(n: int) -> list[int]:
    """n distinct free TCP ports on 127.0.0.1 (held open together so they differ)."""
    socks = []
    try:
        for _ in range(n):
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            s.bind(("127.0.0.1", 0))
            socks.append(s)
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def run(cmd: Sequence[str | os.PathLike[str]], **kw: Any) -> subprocess.CompletedProcess[str]:
    kw.setdefault("check", True)
    kw.setdefault("capture_output", True)
    kw.setdefault("text", True)
    try:
        return subprocess.run([str(c) for c in cmd], **kw)
    except subprocess.CalledProcessError as e:
        raise ClusterError(
            f"{' '.join(map(str, cmd))} failed ({e.returncode}): {e.stderr or e.stdout}"
        ) from e


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # A zombie is dead for our purposes.
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def cmdline(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return f.read().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


def ours(pid: int, paths: Paths) -> bool:
    """Is pid a live process of this cluster: one of our binaries (.tools/bin) whose command line
    names this cluster's directory (every component's does, containerd's shims too)? Guards
    against pid reuse, and never matches an editor or `tail` that merely has a log open."""
    if not pid_alive(pid):
        return False
    try:
        exe = Path(os.readlink(f"/proc/{pid}/exe"))
    except OSError:
        return False
    return exe.parent == TOOLS_BIN and str(paths.root) in cmdline(pid)


def all_pids() -> Iterable[int]:
    me = os.getpid()
    return (int(e) for e in os.listdir("/proc") if e.isdigit() and int(e) != me)


def leftover_pids(paths: Paths) -> list[int]:
    """Every live process of ours whose command line references this cluster's directory."""
    return sorted(pid for pid in all_pids() if ours(pid, paths))


def start(
    name: str,
    args: Sequence[str | os.PathLike[str]],
    paths: Paths,
    env: dict[str, str] | None = None,
) -> int:
    """Start a component in its own process group, output to logs/<name>.log, pid to pids/."""
    env = dict(env if env is not None else os.environ)
    env.pop("KUBECONFIG", None)
    # Components and kubectl read ~/.kube, ~/.kwok...: keep them out of the real home.
    env["HOME"] = str(paths.root)
    with open(paths.log(name), "ab") as logf:
        proc = subprocess.Popen(
            [str(a) for a in args],
            stdin=subprocess.DEVNULL,
            stdout=logf,
            stderr=subprocess.STDOUT,
            cwd=paths.root,
            env=env,
            start_new_session=True,  # own process group: stop() signals the group
        )
    paths.pidfile(name).write_text(f"{proc.pid}\n")
    log(f"started {name} (pid {proc.pid}), log {paths.log(name)}")
    return proc.pid


def log_tail(paths: Paths, name: str, lines: int = 25) -> str:
    with contextlib.suppress(OSError):
        return "\n".join(paths.log(name).read_text(errors="replace").splitlines()[-lines:])
    return ""


def wait_for(
    what: str,
    check: Callable[[], T],
    timeout: float,
    pids: dict[str, int] | None = None,
    paths: Paths | None = None,
) -> T:
    """Poll check() until truthy; fail early when one of `pids` exits (with its log's tail)."""
    deadline = time.monotonic() + timeout
    last_err: object = None
    while time.monotonic() < deadline:
        for name, pid in (pids or {}).items():
            if not pid_alive(pid):
                tail = log_tail(paths, name) if paths else ""
                raise ClusterError(
                    f"{name} (pid {pid}) exited while waiting for {what}; log tail:\n{tail}"
                )
        try:
            result = check()
            if result:
                return result
        except Exception as e:
            last_err = e
        time.sleep(0.25)
    raise ClusterError(
        f"timed out after {timeout:.0f}s waiting for {what} (last error: {last_err})"
    )


def https_get(paths: Paths, server: str, path: str, timeout: float = 3.0) -> tuple[int, str]:
    """GET from the API server as the admin user."""
    ctx = ssl.create_default_context(cafile=str(paths.pki / "ca.crt"))
    ctx.load_cert_chain(str(paths.pki / "admin.crt"), str(paths.pki / "admin.key"))
    try:
        # S310: the URL is always https://127.0.0.1:<port> built by up()
        with urllib.request.urlopen(server + path, context=ctx, timeout=timeout) as r:  # noqa: S310
            return r.status, r.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode(errors="replace")


def http_ok(url: str) -> bool:
    with urllib.request.urlopen(url, timeout=2) as r:  # noqa: S310 - http://127.0.0.1 only
        return bool(r.status == 200)


def print_components(paths: Paths, state: State, components: Sequence[str]) -> None:
    """One line per component: its pid and whether it runs (for `status`)."""
    for name in components:
        pid = state.pids.get(name)
        running = "running" if pid and ours(pid, paths) else "NOT RUNNING"
        print(f"{name:24} pid {pid or '-':>7}  {running}")


def signal_group(pid: int, sig: int) -> None:
    try:
        os.killpg(pid, sig)  # each component leads its own process group (start_new_session)
    except (ProcessLookupError, PermissionError):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, sig)


def stop(targets: dict[str, int], paths: Paths, grace: float = 10.0) -> list[str]:
    """Stop `targets` (name -> pid) one by one, in the given order: SIGTERM to the process group,
    SIGKILL after `grace` seconds. Returns the names that were running."""
    stopped = []
    for name, pid in targets.items():
        if not ours(pid, paths):
            continue
        stopped.append(name)
        signal_group(pid, signal.SIGTERM)
        deadline = time.monotonic() + grace
        while time.monotonic() < deadline and ours(pid, paths):
            time.sleep(0.05)
        if ours(pid, paths):
            log(f"{name} (pid {pid}) ignored SIGTERM for {grace:.0f}s; sending SIGKILL")
            signal_group(pid, signal.SIGKILL)
    return stopped


def pidfile_targets(paths: Paths, components: Sequence[str]) -> dict[str, int]:
    """name -> pid from the pid files, plus any process of ours that a pid file missed."""
    targets: dict[str, int] = {}
    for name in components:
        with contextlib.suppress(OSError, ValueError):
            targets[name] = int(paths.pidfile(name).read_text().strip())
    for pid in leftover_pids(paths):
        if pid not in targets.values():
            targets[f"pid {pid}"] = pid
    return targets


def wait_gone(paths: Paths, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and leftover_pids(paths):
        time.sleep(0.05)
    left = leftover_pids(paths)
    if left:
        raise ClusterError(f"processes still running after down: {left}")
