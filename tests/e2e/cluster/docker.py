"""Rung 6: a Docker daemon of our own (Debian's docker.io) for `docker build`, `docker run`,
skaffold and kind, in a private network and mount namespace (netns.py); state in .cache/docker/.

Inside the namespace: loopback, a tmpfs on /run (containerd's shim sockets, the xtables lock),
overlays on /opt (containerd makes /opt/containerd) and /usr/lib (dockerd makes a missing bind
source, such as the /lib/modules of a kind node), a sysfs of the namespace's own (so
/sys/class/net shows its bridges; the cgroup mounts are carried over), and a tmpfs on /etc/docker
holding daemon.json (dockerd also writes key.json there).
dockerd keeps its data (images, build cache: reused by the next `up`) and its exec root under
.cache/docker/, listens on .cache/docker/docker.sock only, puts its bridge, NAT rules and
ip_forward in the namespace, and its containers' cgroups under /tasks-docker. Its default
runtime is runc_caps.py (why: its docstring).

The way out is user-mode: slirp4netns (run in the host's namespaces) gives the namespace a tap0
with a default route and relays its connections through ordinary sockets of its own, so a build
reaches what the host reaches (pip's index) while the host's links, routes and rules stay as they
are; with --disable-host-loopback nothing inside reaches the host's 127.0.0.1. Nothing outside
reaches in. No registry is reachable here: every image is built or loaded into the daemon. `up`
loads the stand-in base of `make image-base` (from buildah's store), also under the name of the
Dockerfile's default base, and the Redis stand-in, and builds a stand-in for the frontend its
`# syntax=` line names.

    python -m tests.e2e.cluster --docker up|status|down
    python -m tests.e2e.cluster --docker exec -- CMD...   # DOCKER_HOST set, Debian's docker first
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import signal
import tempfile
import time
from pathlib import Path

from tests.e2e.cluster import host, images, netns
from tests.e2e.cluster.procs import (
    ROOT,
    TOOLS_BIN,
    ClusterError,
    Paths,
    State,
    binary,
    cmdline,
    log,
    pid_alive,
    run,
    signal_group,
    start,
    wait_for,
)

DOCKER_DIR = Path(os.environ.get("TASKS_DOCKER_DIR", ROOT / ".cache" / "docker")).resolve()
DOCKERD = Path("/usr/sbin/dockerd")
# Debian's client (20.10, API 1.41, the daemon's), ahead of any other docker on PATH, with the
# pinned buildx plugin (make kind-tools) as its builder.
DOCKER = Path("/usr/bin/docker")
RUNTIME = Path(__file__).resolve().with_name("runc_caps.py")
CGROUP_PARENT = "tasks-docker"
# The stand-in for the Dockerfile's default base (tests/image/standin.sh), from buildah's store.
STANDIN_BASE = "localhost/tasks-base-python:3.11-stand-in"
UP_TIMEOUT = 60.0
# Host paths a Docker engine writes unless told otherwise (and /lib/modules, which kind's nodes
# bind-mount and dockerd would create): none may appear.
DEFAULT_PATHS = (
    "/var/lib/docker",
    "/run/docker",
    "/run/containerd",
    "/root/.docker",
    "/usr/lib/modules",
)
NET_SYSCTLS = (
    "net/ipv4/ip_forward",
    "net/ipv6/conf/all/forwarding",
    "net/bridge/bridge-nf-call-iptables",
)


def default_paths() -> Paths:
    return Paths(DOCKER_DIR)


def sock(paths: Paths) -> Path:
    return paths.root / "docker.sock"


def client_env(paths: Paths) -> dict[str, str]:
    """The environment of every docker client, skaffold and kind run against this daemon: its
    socket, a client config of ours (the buildx plugin, `docker build` aliased to it), Debian's
    client first on PATH."""
    env = dict(os.environ)
    env["DOCKER_HOST"] = f"unix://{sock(paths)}"
    env["DOCKER_CONFIG"] = str(paths.root / "cli")
    env["PATH"] = f"{paths.root / 'bin'}:{TOOLS_BIN}:{env.get('PATH', '')}"
    return env


def daemon_config() -> dict[str, object]:
    return {
        "runtimes": {"runc-caps": {"path": str(RUNTIME)}},
        "default-runtime": "runc-caps",
        "cgroup-parent": f"/{CGROUP_PARENT}",
        "exec-opts": ["native.cgroupdriver=cgroupfs"],
        "storage-driver": "overlay2",
        "features": {"buildkit": True},
    }


def dockerd_args(paths: Paths) -> list[str]:
    return [
        str(DOCKERD),
        f"--data-root={paths.root / 'data'}",
        f"--exec-root={paths.root / 'exec'}",
        f"--pidfile={paths.root / 'dockerd.pid'}",
        f"--host=unix://{sock(paths)}",
    ]


def slirp_args(holder: int) -> list[str]:
    return [
        "slirp4netns",
        "--configure",
        "--mtu=65520",
        "--disable-host-loopback",
        str(holder),
        "tap0",
    ]


def routed() -> bool:
    """Inside: slirp4netns has configured tap0 (address and default route)."""
    return "tap0" in run(["ip", "route", "show", "default"], check=False).stdout


def setup_namespace(paths: Paths) -> None:
    """Inside the holder's namespaces: loopback, /run, /opt, a fresh sysfs, /etc/docker."""
    run(["ip", "link", "set", "lo", "up"])
    run(["mount", "-t", "tmpfs", "-o", "mode=0755", "tmpfs", "/run"])
    netns.overlay(paths, "/opt")  # the containerd dockerd starts makes /opt/containerd
    # kind's nodes bind-mount /lib/modules, which dockerd creates when missing (this host has none).
    netns.overlay(paths, "/usr/lib")
    # A sysfs mounted in this network namespace shows its own devices; the cgroup hierarchies
    # under it move across unchanged.
    keep = "/run/cgroup"
    os.mkdir(keep)
    run(["mount", "--rbind", "/sys/fs/cgroup", keep])
    run(["mount", "-t", "sysfs", "sysfs", "/sys"])
    run(["mount", "--move", keep, "/sys/fs/cgroup"])
    os.rmdir(keep)
    run(["mount", "-t", "tmpfs", "-o", "mode=0755", "tmpfs", "/etc/docker"])
    Path("/etc/docker/daemon.json").write_text(json.dumps(daemon_config(), indent=2) + "\n")


def snapshot() -> dict[str, object]:
    """The host state dockerd must leave as it found it. The top-level cgroups are left out
    (other harnesses add theirs meanwhile); ours is checked by name."""
    state = host.snapshot()
    del state["cgroups"]
    state["paths"] = sorted(p for p in (*host.DEFAULT_PATHS, *DEFAULT_PATHS) if os.path.lexists(p))
    state["/etc/docker"] = (
        sorted(os.listdir("/etc/docker")) if os.path.isdir("/etc/docker") else None
    )
    state["sysctls"] = {s: _read_sysctl(s) for s in NET_SYSCTLS}
    state["docker cgroups"] = sorted(
        str(h / name) for h in host.hierarchies() for name in (CGROUP_PARENT, "docker")
        if (h / name).exists()
    )  # fmt: skip
    return state


def _read_sysctl(name: str) -> str | None:
    with contextlib.suppress(OSError):
        return Path("/proc/sys", name).read_text().strip()
    return None


def _docker(paths: Paths, *args: str, **kw: object) -> str:
    return run([DOCKER, *args], env=client_env(paths), **kw).stdout.strip()  # type: ignore[arg-type]


def frontend_ref(dockerfile: Path = ROOT / "Dockerfile") -> str:
    """The frontend image the Dockerfile's `# syntax=` line names."""
    first = dockerfile.read_text().splitlines()[0]
    if not first.startswith("# syntax="):
        raise ClusterError(f"{dockerfile} has no `# syntax=` line: update docker.frontend_ref()")
    return first.removeprefix("# syntax=").strip()


def load_frontend(paths: Paths) -> None:
    """The Dockerfile frontend image, under the name the Dockerfile gives, built FROM scratch
    around the frontend binary of `make kind-tools` with the labels of upstream's image (its own
    Dockerfile's release stage). Rebuilt when the binary changes."""
    ref, exe = frontend_ref(), binary("dockerfile-frontend", "kind-tools")
    digest = hashlib.sha256(exe.read_bytes()).hexdigest()
    label = "org.tasks.test.stand-in.sha256"
    fmt = f'{{{{index .Config.Labels "{label}"}}}}'
    if _docker(paths, "image", "inspect", "--format", fmt, ref, check=False) == digest:
        return
    with tempfile.TemporaryDirectory() as tmp:
        shutil.copy2(exe, Path(tmp) / "dockerfile-frontend")
        (Path(tmp) / "Dockerfile").write_text(
            "FROM scratch\n"
            'LABEL moby.buildkit.frontend.network.none="true" \\\n'
            '      moby.buildkit.frontend.caps="moby.buildkit.frontend.inputs,'
            'moby.buildkit.frontend.subrequests,moby.buildkit.frontend.contexts" \\\n'
            f'      {label}="{digest}"\n'
            "COPY dockerfile-frontend /bin/dockerfile-frontend\n"
            'ENTRYPOINT ["/bin/dockerfile-frontend"]\n'
        )
        _docker(paths, "build", "--quiet", "--tag", ref, tmp, timeout=120)
    log(f"built the stand-in {ref} (BuildKit's Dockerfile frontend, {exe})")


def default_base(dockerfile: Path = ROOT / "Dockerfile") -> str:
    """The Dockerfile's default BASE_IMAGE (what a build without the build arg starts FROM)."""
    for line in dockerfile.read_text().splitlines():
        if line.startswith("ARG BASE_IMAGE="):
            return line.removeprefix("ARG BASE_IMAGE=").strip()
    raise ClusterError(f"{dockerfile} has no `ARG BASE_IMAGE=`: update docker.default_base()")


def load_archive(paths: Paths, archive: Path) -> None:
    """`docker load` an archive of images.archive(), once per archive (its name holds the ID)."""
    marker = paths.root / "loaded" / archive.name
    if marker.exists():
        return
    _docker(paths, "load", "--input", str(archive), timeout=300)
    marker.parent.mkdir(exist_ok=True)
    for old in marker.parent.glob(f"{archive.name.rsplit('-', 1)[0]}-*"):
        old.unlink()
    marker.touch()


def running(pid: int, name: str) -> bool:
    """Is pid a live `name` process (a pid of ours, not a reused one)?"""
    return bool(pid) and pid_alive(pid) and cmdline(pid).startswith(name)


def healthy(paths: Paths, state: State | None) -> bool:
    if not state or not state.holder or not running(state.pids.get("dockerd", 0), str(DOCKERD)):
        return False
    return bool(_docker(paths, "version", "--format", "{{.Server.Version}}", check=False))


def up(paths: Paths | None = None, timeout: float = UP_TIMEOUT) -> State:
    """Start the daemon in its namespaces (or reuse a healthy one) and return its state."""
    paths = paths or default_paths()
    existing = State.load(paths)
    if existing and healthy(paths, existing):
        log(f"docker already up: DOCKER_HOST=unix://{sock(paths)}")
        return existing
    if existing or paths.pidfile("holder").exists():
        log("found a stale docker namespace; bringing it down first")
        down(paths)
    if os.geteuid() != 0:
        raise ClusterError("dockerd needs root (namespaces, mounts, cgroups, iptables)")
    for exe in (DOCKERD, DOCKER, Path("/usr/sbin/runc"), Path("/usr/bin/slirp4netns")):
        if not os.access(exe, os.X_OK):
            raise ClusterError(f"{exe} is missing: run `make system-deps` (docker.io, slirp4netns)")
    if not os.path.isdir("/etc/docker"):
        raise ClusterError(
            "/etc/docker is missing (Debian's docker.io makes it): `make system-deps`"
        )
    # buildah needs the host's /run: the archives are made out here.
    base = images.archive(STANDIN_BASE, "make image-base")
    redis = images.archive(images.REDIS, images.HOW[images.REDIS])
    for d in (paths.logs, paths.pids, paths.root / "bin", paths.root / "cli"):
        d.mkdir(parents=True, exist_ok=True)
    binary("dockerfile-frontend", "kind-tools")
    links = {
        paths.root / "bin" / "docker": DOCKER,
        paths.root / "cli" / "cli-plugins" / "docker-buildx": binary("buildx", "kind-tools"),
    }
    for link, target in links.items():
        link.parent.mkdir(exist_ok=True)
        link.unlink(missing_ok=True)
        link.symlink_to(target)
    # `docker build` is `docker buildx build`, as on Docker >= 23 (`docker buildx install` sets it).
    (paths.root / "cli" / "config.json").write_text('{"aliases": {"builder": "buildx"}}\n')
    (paths.root / "host.json").write_text(json.dumps(snapshot(), indent=2) + "\n")
    # A kind node is privileged: its kubelet writes the host-global ones (setupKernelTunables).
    host.save_sysctls(paths.root / "sysctls.json")
    t0 = time.monotonic()
    state = State(started_at=time.time())
    try:
        state.holder = netns.start_holder(paths)
        state.namespaces = {k: netns.inode(state.holder, k) for k in netns.KINDS}
        state.pids["slirp4netns"] = start("slirp4netns", slirp_args(state.holder), paths)
        state.save(paths)
        with netns.inside(state.holder):
            setup_namespace(paths)
            wait_for("slirp4netns to configure tap0", routed, timeout, state.pids, paths)
            state.pids["dockerd"] = start("dockerd", dockerd_args(paths), paths)
            state.save(paths)
            wait_for(
                "dockerd to answer",
                lambda: _docker(paths, "version", "--format", "{{.Server.Version}}", check=False),
                timeout,
                state.pids,
                paths,
            )
            load_frontend(paths)
            load_archive(paths, base)
            load_archive(paths, redis)  # for the kind tests' releases
            # A build that keeps the default base (skaffold's) gets the stand-in too.
            _docker(paths, "tag", STANDIN_BASE, default_base())
    except BaseException:
        log(f"start-up failed; the log is {paths.log('dockerd')}; bringing down what was started")
        down(paths, quiet=True)
        raise
    state.up_seconds = round(time.monotonic() - t0, 1)
    state.save(paths)
    log(f"docker up in {state.up_seconds}s: DOCKER_HOST=unix://{sock(paths)}")
    return state


def down(paths: Paths | None = None, quiet: bool = False) -> None:
    """Remove every container and network, stop dockerd (its containerd and shims with it), kill
    what is left in /tasks-docker, end the namespaces, then check the host: no process in them,
    no cgroup, mount, link, nftables rule, sysctl or path of Docker's left. Raises on any."""
    paths = paths or default_paths()
    state = State.load(paths) or State()
    holder = state.holder
    if not holder:
        with contextlib.suppress(OSError, ValueError):
            holder = int(paths.pidfile("holder").read_text())
    stopped: list[str] = []
    dockerd = state.pids.get("dockerd", 0)
    if running(dockerd, str(DOCKERD)) and sock(paths).exists():
        ids = _docker(paths, "ps", "--all", "--quiet", check=False).split()
        if ids:
            _docker(paths, "rm", "--force", "--volumes", *ids, check=False, timeout=60)
            stopped.append(f"{len(ids)} container(s)")
        _docker(paths, "network", "prune", "--force", check=False, timeout=30)
    if running(dockerd, str(DOCKERD)):
        signal_group(dockerd, signal.SIGTERM)
        with contextlib.suppress(ClusterError):
            wait_for("dockerd to exit", lambda: not running(dockerd, str(DOCKERD)), 30)
        if running(dockerd, str(DOCKERD)):
            log(f"dockerd (pid {dockerd}) ignored SIGTERM for 30s; sending SIGKILL")
            signal_group(dockerd, signal.SIGKILL)
        stopped.append("dockerd")
    slirp = state.pids.get("slirp4netns", 0)
    if running(slirp, "slirp4netns"):
        signal_group(slirp, signal.SIGTERM)
        with contextlib.suppress(ClusterError):
            wait_for("slirp4netns to exit", lambda: not running(slirp, "slirp4netns"), 10)
        if running(slirp, "slirp4netns"):
            signal_group(slirp, signal.SIGKILL)
        stopped.append("slirp4netns")
    namespaces = state.namespaces
    if namespaces:  # containerd and shims that outlived dockerd
        for pid in netns.members(namespaces):
            if pid != holder:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
    host.remove_cgroup_root(CGROUP_PARENT)
    if holder and pid_alive(holder):
        os.kill(holder, signal.SIGKILL)
        stopped.append("holder")
    deadline = time.monotonic() + 10
    while namespaces and netns.members(namespaces) and time.monotonic() < deadline:
        time.sleep(0.1)
    if namespaces and (left := netns.members(namespaces)):
        raise ClusterError(f"processes still in docker's namespaces: {left}")
    for name in ("dockerd", "slirp4netns", "holder"):
        paths.pidfile(name).unlink(missing_ok=True)
    paths.state.unlink(missing_ok=True)
    # The mounts died with the mount namespace; the exec root's files can go (data stays: cache).
    for sub in ("exec", "host-overlay"):
        shutil.rmtree(paths.root / sub, ignore_errors=True)
    restored = host.restore_sysctls(paths.root / "sysctls.json")
    _check_unchanged(paths.root / "host.json")
    if not quiet:
        log(f"docker down; stopped {', '.join(stopped) or 'nothing'}")
        log(f"sysctls restored: {restored or 'none had changed'}")


def _check_unchanged(path: Path) -> None:
    try:
        before = json.loads(path.read_text())
    except FileNotFoundError:
        return
    diffs = host.compare(before, snapshot())
    if diffs:
        raise ClusterError("the host changed:\n  " + "\n  ".join(diffs))
    path.unlink()
    log("host unchanged: links, nftables, net sysctls, mounts, Docker's cgroups and paths")


def status(paths: Paths | None = None) -> bool:
    paths = paths or default_paths()
    state = State.load(paths)
    if not state:
        print("docker: down (no state)")
        return False
    ok = healthy(paths, state)
    print(f"dockerd pid {state.pids.get('dockerd')}, namespace holder pid {state.holder}")
    print(f"DOCKER_HOST=unix://{sock(paths)} (run clients with `--docker exec`)")
    print(f"docker: {'up' if ok else 'unhealthy'}")
    return ok


def exec_inside(paths: Paths, argv: list[str], env: dict[str, str] | None = None) -> int:
    """Replace this process with `argv`, in the daemon's namespaces, with `env` (client_env())."""
    state = State.load(paths)
    if not state or not state.holder:
        raise ClusterError("docker is not up: run `make docker-up` (or `make kind-up`)")
    with netns.inside(state.holder):
        os.execvpe(argv[0], argv, env or client_env(paths))  # noqa: S606 - the developer's own command
    return 127  # not reached
